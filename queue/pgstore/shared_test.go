package pgstore

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

	"github.com/seed7b014b84/caddy-smtp/delivery"
	"github.com/seed7b014b84/caddy-smtp/internal/peertest"
	"github.com/seed7b014b84/caddy-smtp/queue"
	"github.com/seed7b014b84/caddy-smtp/rules"
	"github.com/seed7b014b84/caddy-smtp/transport"
)

// These tests run several queues (as several Caddy instances would) on one
// database, with a Deliverer that counts what it was asked to deliver: the
// scheduling across instances is under test; the end-to-end tests run the
// real binary.

type policy struct{ retry time.Duration }

func (p policy) Retry(*rules.Vars) (time.Duration, error)    { return p.retry, nil }
func (p policy) Expire(*rules.Vars) (time.Duration, error)   { return time.Hour, nil }
func (p policy) Notify(*rules.Vars) ([]time.Duration, error) { return nil, nil }

// counter delivers after delay (unless its context ends first: then the
// recipient is deferred, as a transaction cut by the lease would be), and
// counts deliveries per recipient and transactions in flight per
// destination, across every queue that shares it.
type counter struct {
	delay     time.Duration
	slow      string // a recipient delivered after slowDelay
	slowDelay time.Duration
	dead      atomic.Bool

	mu        sync.Mutex
	delivered map[string]int
	inflight  map[string]int
	maxIn     map[string]int
	calls     atomic.Int64
}

func newCounter() *counter {
	return &counter{delivered: map[string]int{}, inflight: map[string]int{}, maxIn: map[string]int{}}
}

func (c *counter) Routes(_ context.Context, msg *delivery.Message) []delivery.Route {
	var rts []delivery.Route
	for i, r := range msg.To {
		d := "mx:" + queue.Domain(r.Addr)
		rts = append(rts, delivery.Route{Key: d, Destination: d, Rcpts: []int{i}})
	}
	return rts
}

func (c *counter) DeliverRoute(ctx context.Context, msg *delivery.Message, rt delivery.Route) []delivery.RecipientReport {
	c.calls.Add(1)
	addr := msg.To[rt.Rcpts[0]].Addr
	if c.dead.Load() {
		return []delivery.RecipientReport{{Rcpt: addr, Status: transport.Deferred, ErrorClass: "connection",
			Error: "connection refused", Reply: &transport.Reply{Code: 451, Enhanced: "4.4.1", Local: true}}}
	}
	c.mu.Lock()
	c.inflight[rt.Destination]++
	c.maxIn[rt.Destination] = max(c.maxIn[rt.Destination], c.inflight[rt.Destination])
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		c.inflight[rt.Destination]--
		c.mu.Unlock()
	}()
	delay := c.delay
	if addr == c.slow {
		delay = c.slowDelay
	}
	select {
	case <-time.After(delay):
	case <-ctx.Done():
		return []delivery.RecipientReport{{Rcpt: addr, Status: transport.Deferred, ErrorClass: "connection", Error: ctx.Err().Error()}}
	}
	c.mu.Lock()
	c.delivered[addr]++
	c.mu.Unlock()
	return []delivery.RecipientReport{{Rcpt: addr, Status: transport.Delivered, Reply: &transport.Reply{Code: 250}}}
}

func (c *counter) count(addr string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.delivered[addr]
}

// instance is one queue on the shared database.
func instance(t *testing.T, url, name string, d delivery.Deliverer, tune func(*queue.Config), wrap func(queue.Store) queue.Store) *queue.Queue {
	t.Helper()
	s, err := Open(t.Context(), url, name, zap.NewNop())
	require.NoError(t, err)
	var store queue.Store = s
	if wrap != nil {
		store = wrap(s)
	}
	q := queue.New(store)
	cfg := queue.Config{Deliverer: d, Policy: policy{retry: time.Second}, Logger: zap.NewNop(), Lease: 3 * time.Second, Jitter: 0.0001}
	if tune != nil {
		tune(&cfg)
	}
	q.SetConfig(cfg)
	q.Start()
	t.Cleanup(func() {
		q.Stop(time.Second)
		q.Wait(10 * time.Second)
	})
	return q
}

func enqueue(t *testing.T, q *queue.Queue, to string) {
	t.Helper()
	_, err := q.Enqueue(t.Context(), &delivery.Message{From: "a@example.org", To: []transport.Recipient{{Addr: to}},
		Reader: strings.NewReader("Subject: x\r\n\r\ny\r\n")})
	require.NoError(t, err)
}

func waitEmpty(t *testing.T, q *queue.Queue, timeout time.Duration) {
	t.Helper()
	require.Eventually(t, func() bool {
		st, err := q.Store().Stats(context.Background())
		return err == nil && st.Messages == 0
	}, timeout, 50*time.Millisecond)
}

// TestInstancesShareTheQueue: three instances drain one queue; each
// message is delivered once, and no destination ever has more
// transactions in flight, all instances together, than its cap.
func TestInstancesShareTheQueue(t *testing.T) {
	pg := peertest.StartPostgres(t, peertest.PostgresOptions{})
	url := pg.CreateDatabase(t, "shared")
	c := newCounter()
	c.delay = 20 * time.Millisecond
	tune := func(cfg *queue.Config) { cfg.DestinationConcurrency, cfg.InitialDestinationConcurrency = 4, 4 }
	qs := []*queue.Queue{
		instance(t, url, "a", c, tune, nil), instance(t, url, "b", c, tune, nil), instance(t, url, "c", c, tune, nil),
	}
	const n = 300
	for i := range n {
		enqueue(t, qs[i%3], fmt.Sprintf("u%d@one.example", i))
	}
	waitEmpty(t, qs[0], 60*time.Second)
	for i := range n {
		assert.Equal(t, 1, c.count(fmt.Sprintf("u%d@one.example", i)), "u%d", i)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	assert.LessOrEqual(t, c.maxIn["mx:one.example"], 4, "the cap holds across instances")
	assert.GreaterOrEqual(t, c.maxIn["mx:one.example"], 2)
}

// TestSharedSuspension: a destination one instance found dead is
// suspended for the others too.
func TestSharedSuspension(t *testing.T) {
	pg := peertest.StartPostgres(t, peertest.PostgresOptions{})
	url := pg.CreateDatabase(t, "suspension")
	c := newCounter()
	c.dead.Store(true)
	tune := func(cfg *queue.Config) {
		cfg.Policy = policy{retry: time.Minute}
		cfg.DestinationConcurrency, cfg.InitialDestinationConcurrency = 1, 1
	}
	a := instance(t, url, "a", c, tune, nil)
	enqueue(t, a, "first@dead.example")
	require.Eventually(t, func() bool { return a.Destinations()["mx:dead.example"].Suspended }, 10*time.Second, 20*time.Millisecond)
	b := instance(t, url, "b", c, tune, nil)
	for i := range 20 {
		enqueue(t, b, fmt.Sprintf("u%d@dead.example", i))
	}
	time.Sleep(3 * time.Second)
	assert.LessOrEqual(t, c.calls.Load(), int64(2), "the second instance does not try the dead destination for each message")
	assert.True(t, b.Destinations()["mx:dead.example"].Suspended)
}

// frozen is a store whose leases cannot be renewed, as an instance paused
// (SIGSTOP) or cut off from the database past its leases would be: once
// it holds a lease it takes no other (else, its attempt cut, it would
// race the other instance for the message at every retry), but its late
// writes get through.
type frozen struct {
	*Store
	on   atomic.Bool
	took atomic.Bool
}

func (f *frozen) Lease(ctx context.Context, now time.Time, limit int, leaseFor time.Duration, attempt func(*queue.Message)) ([]*queue.Lease, error) {
	if f.on.Load() && f.took.Load() {
		return nil, fmt.Errorf("%w: frozen", delivery.ErrQueueUnavailable)
	}
	leases, err := f.Store.Lease(ctx, now, limit, leaseFor, attempt)
	if len(leases) > 0 {
		f.took.Store(true)
	}
	return leases, err
}

func (f *frozen) Renew(ctx context.Context, leases []*queue.Lease, until time.Time) ([]*queue.Lease, error) {
	if f.on.Load() {
		return nil, fmt.Errorf("%w: frozen", delivery.ErrQueueUnavailable)
	}
	return f.Store.Renew(ctx, leases, until)
}

// TestStaleLease: an instance that could not renew its lease stops its
// delivery when the lease ends, another takes the message over after the
// expiry, and the first one's late write is refused: the recipient is
// delivered once.
func TestStaleLease(t *testing.T) {
	pg := peertest.StartPostgres(t, peertest.PostgresOptions{})
	url := pg.CreateDatabase(t, "stale")
	ca, cb := newCounter(), newCounter()
	ca.slow, ca.slowDelay = "slow@x.example", time.Minute
	var fz *frozen
	a := instance(t, url, "a", ca, nil, func(s queue.Store) queue.Store {
		fz = &frozen{Store: s.(*Store)}
		fz.on.Store(true)
		return fz
	})
	enqueue(t, a, "slow@x.example")
	require.Eventually(t, func() bool { return ca.calls.Load() == 1 }, 10*time.Second, 10*time.Millisecond)
	// b comes once a holds the message, and takes it over when a's lease
	// (3s) is over and the message is due again (retry 1s).
	b := instance(t, url, "b", cb, nil, nil)
	require.Eventually(t, func() bool { return cb.count("slow@x.example") == 1 }, 20*time.Second, 20*time.Millisecond)
	waitEmpty(t, b, 10*time.Second)
	time.Sleep(time.Second)
	assert.Zero(t, ca.count("slow@x.example"), "a stopped its delivery when its lease ended")
	assert.Equal(t, 1, cb.count("slow@x.example"))
	_ = a
}

// TestPendingActionAcrossInstances: an action asked on one instance for a
// message another is delivering applies when that attempt ends.
func TestPendingActionAcrossInstances(t *testing.T) {
	pg := peertest.StartPostgres(t, peertest.PostgresOptions{})
	url := pg.CreateDatabase(t, "pending")
	ca := newCounter()
	ca.dead.Store(false)
	ca.slow, ca.slowDelay = "held@x.example", 2*time.Second
	a := instance(t, url, "a", ca, func(cfg *queue.Config) { cfg.Policy = policy{retry: 100 * time.Millisecond} }, nil)
	b := instance(t, url, "b", newCounter(), func(cfg *queue.Config) { cfg.Concurrency = 1 }, nil)
	b.Pause()
	enqueue(t, a, "held@x.example")
	require.Eventually(t, func() bool { return ca.calls.Load() == 1 }, 10*time.Second, 10*time.Millisecond)
	res, err := b.Act(t.Context(), &queue.Filter{To: "held@x.example"}, queue.ActDelete, "")
	require.NoError(t, err)
	assert.Equal(t, 1, res.Touched)
	assert.Equal(t, 1, res.Deferred, "a holds it: the action waits for its release")
	waitEmpty(t, a, 10*time.Second)
}
