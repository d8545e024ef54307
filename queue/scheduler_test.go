package queue_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/seed7b014b84/caddy-smtp/delivery"
	"github.com/seed7b014b84/caddy-smtp/queue"
	"github.com/seed7b014b84/caddy-smtp/queue/sqlitestore"
	"github.com/seed7b014b84/caddy-smtp/rules"
	"github.com/seed7b014b84/caddy-smtp/transport"
)

// These tests run the scheduler over the real SQLite store, with a
// Deliverer scripted per recipient: what is under test is the scheduling
// (retries, expiry, suspension, caps, priority), not a transport, which
// the app's and the end-to-end tests run against real servers.

// policy is a fixed schedule.
type policy struct {
	retry  []time.Duration
	expire time.Duration
	notify []time.Duration
}

func (p policy) Retry(v *rules.Vars) (time.Duration, error) {
	i := int(min(max(v.RetryNum-1, 0), int64(len(p.retry)-1)))
	return p.retry[i], nil
}
func (p policy) Expire(*rules.Vars) (time.Duration, error)   { return p.expire, nil }
func (p policy) Notify(*rules.Vars) ([]time.Duration, error) { return p.notify, nil }

// script delivers by a function of the recipient and the attempt number.
type script struct {
	mu       sync.Mutex
	attempts map[string]int
	calls    atomic.Int64
	inflight map[string]int
	maxIn    map[string]int
	order    []string
	outcome  func(rcpt string, attempt int) delivery.RecipientReport
	delay    time.Duration
}

func newScript(outcome func(rcpt string, attempt int) delivery.RecipientReport) *script {
	return &script{attempts: map[string]int{}, inflight: map[string]int{}, maxIn: map[string]int{}, outcome: outcome}
}

func (s *script) Routes(_ context.Context, msg *delivery.Message) []delivery.Route {
	byDomain := map[string]int{}
	var routes []delivery.Route
	for i, r := range msg.To {
		d := queue.Domain(r.Addr)
		n, ok := byDomain[d]
		if !ok {
			n = len(routes)
			byDomain[d] = n
			routes = append(routes, delivery.Route{Key: "mx:" + d, Destination: "mx:" + d})
		}
		routes[n].Rcpts = append(routes[n].Rcpts, i)
	}
	return routes
}

func (s *script) DeliverRoute(ctx context.Context, msg *delivery.Message, rt delivery.Route) []delivery.RecipientReport {
	s.calls.Add(1)
	s.mu.Lock()
	s.inflight[rt.Destination]++
	s.maxIn[rt.Destination] = max(s.maxIn[rt.Destination], s.inflight[rt.Destination])
	s.order = append(s.order, msg.To[rt.Rcpts[0]].Addr)
	s.mu.Unlock()
	if s.delay > 0 {
		select {
		case <-time.After(s.delay):
		case <-ctx.Done():
		}
	}
	out := make([]delivery.RecipientReport, len(rt.Rcpts))
	s.mu.Lock()
	for k, i := range rt.Rcpts {
		addr := msg.To[i].Addr
		s.attempts[addr]++
		out[k] = s.outcome(addr, s.attempts[addr])
		out[k].Rcpt = addr
	}
	s.inflight[rt.Destination]--
	s.mu.Unlock()
	return out
}

func (s *script) attemptsOf(rcpt string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.attempts[rcpt]
}

func delivered() delivery.RecipientReport {
	return delivery.RecipientReport{Status: transport.Delivered, Reply: &transport.Reply{Code: 250, Enhanced: "2.0.0"}}
}

func deferred() delivery.RecipientReport {
	return delivery.RecipientReport{Status: transport.Deferred, ErrorClass: "rejected",
		Reply: &transport.Reply{Code: 451, Enhanced: "4.3.0", Lines: []string{"try later"}}}
}

func refused() delivery.RecipientReport {
	return delivery.RecipientReport{Status: transport.Failed, ErrorClass: "rejected",
		Reply: &transport.Reply{Code: 550, Enhanced: "5.1.1", Lines: []string{"no such user"}}}
}

func unreachable() delivery.RecipientReport {
	return delivery.RecipientReport{Status: transport.Deferred, ErrorClass: "connection", Error: "connection refused",
		Reply: &transport.Reply{Code: 451, Enhanced: "4.4.1", Lines: []string{"no host could be reached"}, Local: true}}
}

// events records the queue's events.
type events struct {
	mu  sync.Mutex
	got []map[string]any
}

func (e *events) emit(name string, data map[string]any) {
	e.mu.Lock()
	defer e.mu.Unlock()
	d := map[string]any{"event": name}
	for k, v := range data {
		d[k] = v
	}
	e.got = append(e.got, d)
}

func (e *events) named(name string) []map[string]any {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []map[string]any
	for _, d := range e.got {
		if d["event"] == name {
			out = append(out, d)
		}
	}
	return out
}

type harness struct {
	q      *queue.Queue
	store  *sqlitestore.Store
	dir    string
	events *events
}

func start(t *testing.T, d delivery.Deliverer, p policy, tune func(*queue.Config)) *harness {
	t.Helper()
	dir := t.TempDir()
	return startAt(t, dir, d, p, tune)
}

func startAt(t *testing.T, dir string, d delivery.Deliverer, p policy, tune func(*queue.Config)) *harness {
	t.Helper()
	store, err := sqlitestore.Open(dir, sqlitestore.Options{MinFree: 1})
	require.NoError(t, err)
	h := &harness{store: store, dir: dir, events: new(events)}
	h.q = queue.New(store)
	cfg := queue.Config{Deliverer: d, Policy: p, Logger: zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel)),
		Emit: h.events.emit, Jitter: -1}
	cfg.Jitter = 0.0000001
	if tune != nil {
		tune(&cfg)
	}
	h.q.SetConfig(cfg)
	h.q.Start()
	t.Cleanup(func() {
		h.q.Stop(time.Second)
		h.q.Wait(10 * time.Second)
	})
	return h
}

func (h *harness) enqueue(t *testing.T, from string, prio int, to ...string) string {
	t.Helper()
	msg := &delivery.Message{From: from, Reader: strings.NewReader("Subject: t\r\n\r\nbody\r\n"), Priority: prio}
	for _, a := range to {
		msg.To = append(msg.To, transport.Recipient{Addr: a})
	}
	id, err := h.q.Enqueue(t.Context(), msg)
	require.NoError(t, err)
	return id
}

func (h *harness) waitGone(t *testing.T, id string, timeout time.Duration) {
	t.Helper()
	require.Eventually(t, func() bool {
		_, err := h.store.Get(context.Background(), id)
		return err != nil
	}, timeout, 10*time.Millisecond, "message %s still queued", id)
}

func TestDeliveredAtOnce(t *testing.T) {
	s := newScript(func(string, int) delivery.RecipientReport { return delivered() })
	h := start(t, s, policy{retry: []time.Duration{time.Hour}, expire: 24 * time.Hour}, nil)
	id := h.enqueue(t, "a@example.org", 0, "b@example.net", "c@example.com")
	h.waitGone(t, id, 10*time.Second)
	assert.Equal(t, 1, s.attemptsOf("b@example.net"))
	assert.Equal(t, 1, s.attemptsOf("c@example.com"))
	require.Eventually(t, func() bool { return len(h.events.named(queue.EventDelivered)) == 2 }, 5*time.Second, 10*time.Millisecond)
	assert.Len(t, h.events.named(queue.EventQueued), 1)
	assert.Equal(t, id, h.events.named(queue.EventDelivered)[0]["id"])
}

// TestRetrySchedule: a recipient deferred twice, then delivered, is tried
// at the schedule's times, and each deferral carries its next attempt.
func TestRetrySchedule(t *testing.T) {
	s := newScript(func(_ string, n int) delivery.RecipientReport {
		if n < 3 {
			return deferred()
		}
		return delivered()
	})
	p := policy{retry: []time.Duration{300 * time.Millisecond, 600 * time.Millisecond}, expire: time.Hour}
	h := start(t, s, p, nil)
	begin := time.Now()
	id := h.enqueue(t, "a@example.org", 0, "b@example.net")
	h.waitGone(t, id, 10*time.Second)
	took := time.Since(begin)
	assert.Equal(t, 3, s.attemptsOf("b@example.net"))
	assert.GreaterOrEqual(t, took, 900*time.Millisecond, "300ms then 600ms between attempts")
	assert.Less(t, took, 5*time.Second)
	defs := h.events.named(queue.EventDeferred)
	require.Len(t, defs, 2)
	for i, d := range defs {
		assert.NotEmpty(t, d["next_attempt"], "deferral %d says when", i)
		assert.Equal(t, i+1, d["attempts"])
	}
}

func TestPermanentFailure(t *testing.T) {
	s := newScript(func(rcpt string, _ int) delivery.RecipientReport {
		if strings.HasPrefix(rcpt, "bad") {
			return refused()
		}
		return delivered()
	})
	h := start(t, s, policy{retry: []time.Duration{time.Hour}, expire: time.Hour}, nil)
	id := h.enqueue(t, "a@example.org", 0, "bad@example.net", "good@example.net")
	h.waitGone(t, id, 10*time.Second)
	assert.Equal(t, 1, s.attemptsOf("bad@example.net"), "a 5xx is not retried")
	require.Eventually(t, func() bool { return len(h.events.named(queue.EventFailed)) == 1 }, 5*time.Second, 10*time.Millisecond)
	f := h.events.named(queue.EventFailed)[0]
	assert.Equal(t, 550, f["reply_code"])
	assert.Equal(t, "5.1.1", f["reply_enhanced"])
}

// TestExpiry: a recipient deferred until the message expires fails, with
// a last attempt at the expiry time.
func TestExpiry(t *testing.T) {
	s := newScript(func(string, int) delivery.RecipientReport { return deferred() })
	h := start(t, s, policy{retry: []time.Duration{200 * time.Millisecond}, expire: 700 * time.Millisecond}, nil)
	id := h.enqueue(t, "a@example.org", 0, "b@example.net")
	h.waitGone(t, id, 10*time.Second)
	n := s.attemptsOf("b@example.net")
	assert.GreaterOrEqual(t, n, 3)
	assert.LessOrEqual(t, n, 5)
	require.Eventually(t, func() bool { return len(h.events.named(queue.EventExpired)) == 1 }, 5*time.Second, 10*time.Millisecond)
	e := h.events.named(queue.EventExpired)[0]
	assert.Equal(t, "failed", e["status"])
	assert.Equal(t, "5.4.7", e["reply_enhanced"])
	assert.Contains(t, e["reply"], "try later", "the last server reply is kept in the reason")
}

// TestDeadDestination: messages to a destination whose connections fail
// cost one attempt per retry time, not one each.
func TestDeadDestination(t *testing.T) {
	var up atomic.Bool
	s := newScript(func(rcpt string, _ int) delivery.RecipientReport {
		if strings.HasSuffix(rcpt, "@dead.example") && !up.Load() {
			return unreachable()
		}
		return delivered()
	})
	h := start(t, s, policy{retry: []time.Duration{time.Second}, expire: time.Hour}, func(c *queue.Config) {
		c.InitialDestinationConcurrency, c.DestinationConcurrency = 1, 1
	})
	var ids []string
	for i := range 200 {
		ids = append(ids, h.enqueue(t, "a@example.org", 0, fmt.Sprintf("u%d@dead.example", i)))
	}
	alive := h.enqueue(t, "a@example.org", 0, "x@alive.example")
	h.waitGone(t, alive, 10*time.Second)
	time.Sleep(1500 * time.Millisecond)
	calls := s.calls.Load()
	assert.LessOrEqual(t, calls, int64(6), "200 messages to a dead destination: a connection per retry time, plus the live one")
	up.Store(true)
	for _, id := range ids {
		h.waitGone(t, id, 30*time.Second)
	}
	st := h.q.Destinations()["mx:dead.example"]
	assert.False(t, st.Suspended)
}

// TestDestinationCap: no destination gets more transactions at once than
// its cap, and the window grows from the initial one.
func TestDestinationCap(t *testing.T) {
	s := newScript(func(string, int) delivery.RecipientReport { return delivered() })
	s.delay = 20 * time.Millisecond
	h := start(t, s, policy{retry: []time.Duration{time.Hour}, expire: time.Hour}, func(c *queue.Config) {
		c.Concurrency, c.DestinationConcurrency, c.InitialDestinationConcurrency = 50, 4, 2
	})
	h.q.Pause()
	var ids []string
	for i := range 60 {
		ids = append(ids, h.enqueue(t, "a@example.org", 0, fmt.Sprintf("u%d@one.example", i)))
		ids = append(ids, h.enqueue(t, "a@example.org", 0, fmt.Sprintf("u%d@two.example", i)))
	}
	h.q.Resume()
	for _, id := range ids {
		h.waitGone(t, id, 30*time.Second)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	assert.LessOrEqual(t, s.maxIn["mx:one.example"], 4)
	assert.LessOrEqual(t, s.maxIn["mx:two.example"], 4)
	assert.Equal(t, 4, s.maxIn["mx:one.example"], "the window grew to the cap")
}

// TestPriority: higher priority goes first.
func TestPriority(t *testing.T) {
	s := newScript(func(string, int) delivery.RecipientReport { return delivered() })
	var h *harness
	h = start(t, s, policy{retry: []time.Duration{time.Hour}, expire: time.Hour}, func(c *queue.Config) {
		c.Concurrency, c.DestinationConcurrency, c.InitialDestinationConcurrency = 1, 1, 1
	})
	h.q.Pause()
	var ids []string
	for i := range 5 {
		ids = append(ids, h.enqueue(t, "a@example.org", 0, fmt.Sprintf("low%d@x.example", i)))
	}
	ids = append(ids, h.enqueue(t, "a@example.org", 9, "urgent@x.example"))
	h.q.Resume()
	for _, id := range ids {
		h.waitGone(t, id, 10*time.Second)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	assert.Equal(t, "urgent@x.example", s.order[0])
}

// TestRestartResumes: a queue stopped with messages leased but not tried
// gives them back due at once; a new queue on the same store delivers them.
func TestRestartResumes(t *testing.T) {
	release := make(chan struct{})
	blocking := newScript(func(string, int) delivery.RecipientReport { return delivered() })
	blocking.delay = time.Hour
	dir := t.TempDir()
	store, err := sqlitestore.Open(dir, sqlitestore.Options{MinFree: 1})
	require.NoError(t, err)
	q := queue.New(store)
	q.SetConfig(queue.Config{Deliverer: blocking, Policy: policy{retry: []time.Duration{time.Hour}, expire: 24 * time.Hour},
		Concurrency: 1, DestinationConcurrency: 1, Logger: zap.NewNop()})
	q.Start()
	var ids []string
	for i := range 5 {
		msg := &delivery.Message{From: "a@example.org", To: []transport.Recipient{{Addr: fmt.Sprintf("u%d@x.example", i)}},
			Reader: strings.NewReader("x")}
		id, err := q.Enqueue(t.Context(), msg)
		require.NoError(t, err)
		ids = append(ids, id)
	}
	require.Eventually(t, func() bool { return blocking.calls.Load() == 1 }, 5*time.Second, 10*time.Millisecond)
	q.Stop(100 * time.Millisecond)
	require.True(t, q.Wait(10*time.Second))
	close(release)

	s := newScript(func(string, int) delivery.RecipientReport { return delivered() })
	h := startAt(t, dir, s, policy{retry: []time.Duration{time.Hour}, expire: 24 * time.Hour}, nil)
	begin := time.Now()
	for _, id := range ids[1:] {
		h.waitGone(t, id, 10*time.Second)
	}
	assert.Less(t, time.Since(begin), 5*time.Second, "the untried ones were due at once")
	m, err := h.store.Get(t.Context(), ids[0])
	if err == nil {
		assert.Equal(t, 1, m.Recipients[0].Attempts, "the one cut mid-attempt waits for its retry")
		assert.True(t, m.NextAttempt.After(time.Now().Add(30*time.Minute)))
	}
}

// TestQuota: past max_messages, new messages are refused as a full queue.
func TestQuota(t *testing.T) {
	s := newScript(func(string, int) delivery.RecipientReport { return deferred() })
	h := start(t, s, policy{retry: []time.Duration{time.Hour}, expire: time.Hour}, func(c *queue.Config) {
		c.MaxMessages, c.MaxSize = 3, 1000
	})
	for range 3 {
		h.enqueue(t, "a@example.org", 0, "b@example.net")
	}
	_, err := h.q.Enqueue(t.Context(), &delivery.Message{From: "a@example.org", To: []transport.Recipient{{Addr: "b@example.net"}},
		Reader: strings.NewReader("x")})
	assert.ErrorIs(t, err, delivery.ErrQueueFull)
	assert.ErrorContains(t, err, "max_messages")
}

func TestQuotaSize(t *testing.T) {
	s := newScript(func(string, int) delivery.RecipientReport { return deferred() })
	h := start(t, s, policy{retry: []time.Duration{time.Hour}, expire: time.Hour}, func(c *queue.Config) {
		c.MaxSize = 100
	})
	_, err := h.q.Enqueue(t.Context(), &delivery.Message{From: "a@example.org", To: []transport.Recipient{{Addr: "b@example.net"}},
		Reader: strings.NewReader(strings.Repeat("x", 200))})
	assert.ErrorIs(t, err, delivery.ErrQueueFull)
	st, err := h.store.Stats(t.Context())
	require.NoError(t, err)
	assert.Zero(t, st.Messages, "nothing half-stored")
}

// TestEnvelopeFlags: the queue notes what the body needs (8BITMIME, and
// SMTPUTF8 when asked for and the headers are not ASCII) as it stores it.
func TestEnvelopeFlags(t *testing.T) {
	s := newScript(func(string, int) delivery.RecipientReport { return deferred() })
	h := start(t, s, policy{retry: []time.Duration{time.Hour}, expire: time.Hour}, nil)
	h.q.Pause()
	tests := []struct {
		msg               string
		utf8              bool
		eightBit, smtputf bool
	}{
		{"Subject: hi\r\n\r\nbody\r\n", true, false, false},
		{"Subject: hi\r\n\r\ncafé\r\n", true, true, false},
		{"Subject: café\r\n\r\nbody\r\n", true, true, true},
		{"Subject: café\r\n\r\nbody\r\n", false, true, false},
		{"From: José <j@example.org>\nSubject: x\n\nbody", true, true, true},
		{"Subject: x", true, false, false},
		{"Subject: x\n\n\nSubject: café\n", true, true, false},
	}
	for _, tt := range tests {
		id, err := h.q.Enqueue(t.Context(), &delivery.Message{From: "a@example.org", To: []transport.Recipient{{Addr: "b@example.net"}},
			Reader: strings.NewReader(tt.msg), SMTPUTF8: tt.utf8})
		require.NoError(t, err)
		m, err := h.store.Get(t.Context(), id)
		require.NoError(t, err)
		assert.Equal(t, tt.eightBit, m.EightBit, "8bit: %q", tt.msg)
		assert.Equal(t, tt.smtputf, m.SMTPUTF8, "smtputf8: %q (asked: %v)", tt.msg, tt.utf8)
	}
}

// countingStore counts the writes of an attempt's results.
type countingStore struct {
	*sqlitestore.Store
	saves, releases atomic.Int64
}

func (c *countingStore) Save(ctx context.Context, l *queue.Lease) error {
	c.saves.Add(1)
	return c.Store.Save(ctx, l)
}

func (c *countingStore) Release(ctx context.Context, l *queue.Lease, n []queue.Notice) error {
	c.releases.Add(1)
	return c.Store.Release(ctx, l, n)
}

// TestOneWritePerAttempt: a message of one route is written once after
// its attempt (the release, which removes it or sets its next attempt);
// one of two routes has the first route's results saved as they come.
// Either way an outcome is logged and emitted once it is written: when
// "delivered" fires for a message of one route, the store no longer has
// it.
func TestOneWritePerAttempt(t *testing.T) {
	for _, c := range []struct {
		name            string
		to              []string
		saves, releases int64
	}{
		{"one route", []string{"b@example.net", "c@example.net"}, 0, 1},
		{"two routes", []string{"b@example.net", "c@example.com"}, 1, 1},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := newScript(func(string, int) delivery.RecipientReport { return delivered() })
			store, err := sqlitestore.Open(t.TempDir(), sqlitestore.Options{MinFree: 1})
			require.NoError(t, err)
			cs := &countingStore{Store: store}
			q := queue.New(cs)
			var gone atomic.Int64
			var emitted atomic.Int64
			q.SetConfig(queue.Config{Deliverer: s, Policy: policy{retry: []time.Duration{time.Hour}, expire: time.Hour},
				Logger: zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel)), Jitter: 0.0000001,
				Emit: func(name string, data map[string]any) {
					if name != queue.EventDelivered {
						return
					}
					emitted.Add(1)
					if _, err := store.Get(context.Background(), data["id"].(string)); err != nil {
						gone.Add(1)
					}
				}})
			q.Start()
			t.Cleanup(func() {
				q.Stop(time.Second)
				q.Wait(10 * time.Second)
			})
			msg := &delivery.Message{From: "a@example.org", Reader: strings.NewReader("Subject: t\r\n\r\nbody\r\n")}
			for _, a := range c.to {
				msg.To = append(msg.To, transport.Recipient{Addr: a})
			}
			id, err := q.Enqueue(t.Context(), msg)
			require.NoError(t, err)
			require.Eventually(t, func() bool { return emitted.Load() == 2 }, 10*time.Second, 5*time.Millisecond)
			_, err = store.Get(t.Context(), id)
			require.ErrorIs(t, err, queue.ErrNotFound)
			assert.Equal(t, c.saves, cs.saves.Load(), "saves")
			assert.Equal(t, c.releases, cs.releases.Load(), "releases")
			if c.saves == 0 {
				assert.Equal(t, int64(2), gone.Load(), "delivered emitted once the release removed the message")
			}
		})
	}
}
