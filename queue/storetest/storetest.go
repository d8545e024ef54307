// Package storetest is the one test suite every queue store passes (as
// River runs one suite against each of its drivers): what the scheduler
// and the admin API rely on, against a real store.
package storetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/seed7b014b84/caddy-smtp/queue"
)

// Opener opens the store under test; calling it again with the same dir
// opens the same store again (after the first was closed).
type Opener func(t *testing.T, dir string) queue.Store

// base is the time the suite's messages arrive at: now, to the
// millisecond (a store shared by instances compares leases with the
// clock).
var base = time.Now().UTC().Truncate(time.Millisecond)

// NewMessage returns a message due at arrival, with a recipient per
// address.
func NewMessage(id string, arrived time.Time, from string, to ...string) *queue.Message {
	m := &queue.Message{ID: id, From: from, Arrived: arrived, NextAttempt: arrived, Source: "api"}
	for _, a := range to {
		m.Recipients = append(m.Recipients, queue.Recipient{Addr: a, State: queue.Pending, NextAttempt: arrived})
	}
	return m
}

func add(t *testing.T, s queue.Store, m *queue.Message, body string) {
	t.Helper()
	require.NoError(t, s.Add(t.Context(), m, strings.NewReader(body)))
}

func readBody(t *testing.T, s queue.Store, id string) string {
	t.Helper()
	b, err := s.Body(t.Context(), id)
	require.NoError(t, err)
	defer b.Close()
	out, err := io.ReadAll(io.NewSectionReader(b, 0, b.Size()))
	require.NoError(t, err)
	return string(out)
}

func ids(leases []*queue.Lease) []string {
	out := make([]string, len(leases))
	for i, l := range leases {
		out[i] = l.Message.ID
	}
	return out
}

// markNone is an attempt callback that changes nothing.
func markNone(*queue.Message) {}

// markRetry moves every due recipient's next attempt to at.
func markRetry(at time.Time) func(*queue.Message) {
	return func(m *queue.Message) {
		for i := range m.Recipients {
			r := &m.Recipients[i]
			if !r.State.Final() {
				r.Attempts++
				r.NextAttempt = at
			}
		}
		m.NextAttempt = at
	}
}

// Run runs the suite.
func Run(t *testing.T, open Opener) {
	t.Run("AddGetBody", func(t *testing.T) { testAddGetBody(t, open) })
	t.Run("LeaseOrder", func(t *testing.T) { testLeaseOrder(t, open) })
	t.Run("LeaseRecordsAttempt", func(t *testing.T) { testLeaseRecordsAttempt(t, open) })
	t.Run("LeaseSkipsLeasedDue", func(t *testing.T) { testLeaseSkipsLeasedDue(t, open) })
	t.Run("LeaseBody", func(t *testing.T) { testLeaseBody(t, open) })
	t.Run("SaveRelease", func(t *testing.T) { testSaveRelease(t, open) })
	t.Run("StaleLease", func(t *testing.T) { testStaleLease(t, open) })
	t.Run("Notices", func(t *testing.T) { testNotices(t, open) })
	t.Run("NextDue", func(t *testing.T) { testNextDue(t, open) })
	t.Run("ListFilters", func(t *testing.T) { testListFilters(t, open) })
	t.Run("Modify", func(t *testing.T) { testModify(t, open) })
	t.Run("Stats", func(t *testing.T) { testStats(t, open) })
	t.Run("Reopen", func(t *testing.T) { testReopen(t, open) })
	t.Run("Holds", func(t *testing.T) { testHolds(t, open) })
}

func testAddGetBody(t *testing.T, open Opener) {
	s := open(t, t.TempDir())
	small := "Subject: small\r\n\r\nhello\r\n"
	large := "Subject: large\r\n\r\n" + strings.Repeat("0123456789abcdef\r\n", 20000) // 360 KB
	m1 := NewMessage(queue.NewID(base), base, "a@example.org", "b@example.net")
	m1.EnvID, m1.Ret, m1.Priority = "env-1", "HDRS", 3
	m1.Recipients[0].Notify, m1.Recipients[0].ORCPT = []string{"SUCCESS", "FAILURE"}, "b@example.net"
	add(t, s, m1, small)
	m2 := NewMessage(queue.NewID(base.Add(time.Millisecond)), base, "", "c@example.net", "d@example.com")
	add(t, s, m2, large)
	empty := NewMessage(queue.NewID(base.Add(2*time.Millisecond)), base, "a@example.org", "e@example.net")
	add(t, s, empty, "")

	assert.Equal(t, int64(len(small)), m1.Size, "Add sets the size")
	got, err := s.Get(t.Context(), m1.ID)
	require.NoError(t, err)
	assert.Equal(t, m1.From, got.From)
	assert.Equal(t, "env-1", got.EnvID)
	assert.Equal(t, "HDRS", got.Ret)
	assert.Equal(t, 3, got.Priority)
	assert.Equal(t, []string{"SUCCESS", "FAILURE"}, got.Recipients[0].Notify)
	assert.Equal(t, int64(len(small)), got.Size)
	assert.True(t, got.Arrived.Equal(base))
	assert.Equal(t, small, readBody(t, s, m1.ID))

	// What the queue learns while the body is read (a DKIM signature made
	// at its end) is stored with the message.
	signed := NewMessage(queue.NewID(base.Add(4*time.Millisecond)), base, "a@example.org", "f@example.net")
	require.NoError(t, s.Add(t.Context(), signed, &setAtEOF{r: strings.NewReader(small), set: func() {
		signed.Prefix = "DKIM-Signature: v=1\r\n"
	}}))
	got, err = s.Get(t.Context(), signed.ID)
	require.NoError(t, err)
	assert.Equal(t, "DKIM-Signature: v=1\r\n", got.Prefix, "fields set as the body ends are stored")
	assert.Equal(t, small, readBody(t, s, signed.ID), "the body is stored as read")
	assert.Equal(t, large, readBody(t, s, m2.ID), "a body larger than a row holds")
	assert.Empty(t, readBody(t, s, empty.ID))

	_, err = s.Get(t.Context(), queue.NewID(base))
	assert.ErrorIs(t, err, queue.ErrNotFound)
	_, err = s.Body(t.Context(), queue.NewID(base))
	assert.ErrorIs(t, err, queue.ErrNotFound)

	// A body that fails to read stores nothing.
	bad := NewMessage(queue.NewID(base.Add(3*time.Millisecond)), base, "a@example.org", "x@example.net")
	err = s.Add(t.Context(), bad, io.MultiReader(strings.NewReader(strings.Repeat("x", 100000)), errReader{}))
	require.Error(t, err)
	_, err = s.Get(t.Context(), bad.ID)
	assert.ErrorIs(t, err, queue.ErrNotFound, "nothing half-stored")
	st, err := s.Stats(t.Context())
	require.NoError(t, err)
	assert.Equal(t, int64(4), st.Messages)
}

type errReader struct{}

func (errReader) Read([]byte) (int, error) { return 0, errors.New("client went away") }

func testLeaseOrder(t *testing.T, open Opener) {
	s := open(t, t.TempDir())
	now := base.Add(time.Hour)
	mk := func(n int, prio int, due time.Time) *queue.Message {
		m := NewMessage(queue.NewID(base.Add(time.Duration(n)*time.Millisecond)), base, "a@example.org", fmt.Sprintf("r%d@example.net", n))
		m.Priority = prio
		m.NextAttempt, m.Recipients[0].NextAttempt = due, due
		add(t, s, m, "x")
		return m
	}
	early := mk(1, 0, base.Add(10*time.Minute))
	late := mk(2, 0, base.Add(20*time.Minute))
	urgent := mk(3, 5, base.Add(30*time.Minute))
	low := mk(4, -1, base.Add(time.Minute))
	future := mk(5, 9, now.Add(time.Hour))
	held := mk(6, 0, base)
	held.Held = true
	_, _, err := s.Modify(t.Context(), &queue.Filter{IDs: []string{held.ID}}, func(m *queue.Message) queue.Change {
		m.Held = true
		return queue.Change{Write: true}
	})
	require.NoError(t, err)

	leases, err := s.Lease(t.Context(), now, 3, time.Minute, markRetry(now.Add(time.Hour*2)))
	require.NoError(t, err)
	assert.Equal(t, []string{urgent.ID, early.ID, late.ID}, ids(leases), "priority first, then the earliest due")
	leases2, err := s.Lease(t.Context(), now, 10, time.Minute, markRetry(now.Add(2*time.Hour)))
	require.NoError(t, err)
	assert.Equal(t, []string{low.ID}, ids(leases2), "neither leased, held nor future messages")
	_ = future
	for _, l := range leases {
		assert.NotEmpty(t, l.Token)
		assert.True(t, l.Until.Equal(now.Add(time.Minute)))
	}
}

// testLeaseSkipsLeasedDue: a leased message that its attempt mark left
// due (an expired one, whose last attempt is now) is not leased twice, and
// does not keep the messages behind it from being leased.
func testLeaseSkipsLeasedDue(t *testing.T, open Opener) {
	s := open(t, t.TempDir())
	now := base.Add(time.Hour)
	var all []string
	for n := range 5 {
		m := NewMessage(queue.NewID(base.Add(time.Duration(n)*time.Millisecond)), base, "a@example.org", fmt.Sprintf("r%d@example.net", n))
		due := base.Add(time.Duration(n) * time.Minute)
		m.NextAttempt, m.Recipients[0].NextAttempt = due, due
		add(t, s, m, "x")
		all = append(all, m.ID)
	}
	first, err := s.Lease(t.Context(), now, 2, time.Minute, markNone)
	require.NoError(t, err)
	require.Equal(t, all[:2], ids(first), "the earliest due")
	rest, err := s.Lease(t.Context(), now, 3, time.Minute, markRetry(now.Add(time.Hour)))
	require.NoError(t, err)
	assert.Equal(t, all[2:], ids(rest), "the leased messages are skipped though still due, and the limit is filled")
	none, err := s.Lease(t.Context(), now, 10, time.Minute, markNone)
	require.NoError(t, err)
	assert.Empty(t, ids(none))
	next, ok, err := s.NextDue(t.Context())
	require.NoError(t, err)
	if ok {
		// A shared store hands a leased message to another instance
		// when its lease ends: due then, not before.
		assert.False(t, next.Before(now.Add(time.Minute)), "every message is leased until %s: none is due before (NextDue said %s)", now.Add(time.Minute), next)
	}
}

// testLeaseBody: a body a store hands out with the lease is the message's
// body, byte for byte.
func testLeaseBody(t *testing.T, open Opener) {
	s := open(t, t.TempDir())
	bodies := map[string]string{}
	for n, body := range []string{"", "Subject: small\r\n\r\nhello\r\n", strings.Repeat("x", 8<<10), strings.Repeat("y", 8<<10+1), strings.Repeat("0123456789abcdef\r\n", 20000)} {
		m := NewMessage(queue.NewID(base.Add(time.Duration(n)*time.Millisecond)), base, "a@example.org", "b@example.net")
		add(t, s, m, body)
		bodies[m.ID] = body
	}
	leases, err := s.Lease(t.Context(), base.Add(time.Minute), 10, time.Minute, markRetry(base.Add(time.Hour)))
	require.NoError(t, err)
	require.Len(t, leases, len(bodies))
	for _, l := range leases {
		if l.Body != nil {
			assert.Equal(t, bodies[l.Message.ID], string(l.Body), "%s: the body handed with the lease", l.Message.ID)
		}
		assert.Equal(t, bodies[l.Message.ID], readBody(t, s, l.Message.ID))
	}
}

func testLeaseRecordsAttempt(t *testing.T, open Opener) {
	dir := t.TempDir()
	s := open(t, dir)
	m := NewMessage(queue.NewID(base), base, "a@example.org", "b@example.net", "c@example.net")
	m.Recipients[1].NextAttempt = base.Add(3 * time.Hour) // not due
	add(t, s, m, "body")
	now := base.Add(time.Minute)
	retry := now.Add(5 * time.Minute)
	var seen *queue.Message
	leases, err := s.Lease(t.Context(), now, 10, time.Minute, func(m *queue.Message) {
		seen = m
		r := &m.Recipients[0]
		r.Attempts++
		r.LastAttempt = now
		r.NextAttempt = retry
		m.NextAttempt = retry
	})
	require.NoError(t, err)
	require.Len(t, leases, 1)
	assert.Same(t, seen, leases[0].Message, "the lease carries the message as attempt left it")
	// A crash now: the attempt is on stable storage, and the message is
	// due at its retry, not at once.
	require.NoError(t, s.Close())
	s = open(t, dir)
	got, err := s.Get(t.Context(), m.ID)
	require.NoError(t, err)
	assert.Equal(t, 1, got.Recipients[0].Attempts)
	assert.True(t, got.Recipients[0].NextAttempt.Equal(retry))
	assert.True(t, got.NextAttempt.Equal(retry))
	leases, err = s.Lease(t.Context(), now.Add(time.Minute), 10, time.Minute, markNone)
	require.NoError(t, err)
	assert.Empty(t, leases, "not due until its retry")
	leases, err = s.Lease(t.Context(), retry, 10, time.Minute, markNone)
	require.NoError(t, err)
	assert.Len(t, leases, 1)
}

func testSaveRelease(t *testing.T, open Opener) {
	s := open(t, t.TempDir())
	m := NewMessage(queue.NewID(base), base, "a@example.org", "b@example.net", "c@example.net")
	add(t, s, m, strings.Repeat("y", 100000))
	now := base.Add(time.Minute)
	leases, err := s.Lease(t.Context(), now, 1, time.Minute, markRetry(now.Add(time.Hour)))
	require.NoError(t, err)
	require.Len(t, leases, 1)
	l := leases[0]
	l.Message.Recipients[0].State = queue.Delivered
	require.NoError(t, s.Save(t.Context(), l))
	got, err := s.Get(t.Context(), m.ID)
	require.NoError(t, err)
	assert.Equal(t, queue.Delivered, got.Recipients[0].State, "a result is written at Save, before the release")

	l.Message.Recipients[1].State = queue.Deferred
	l.Message.Recipients[1].NextAttempt = now.Add(10 * time.Minute)
	l.Message.NextAttempt = now.Add(10 * time.Minute)
	require.NoError(t, s.Release(t.Context(), l, nil))
	got, err = s.Get(t.Context(), m.ID)
	require.NoError(t, err)
	assert.True(t, got.NextAttempt.Equal(now.Add(10*time.Minute)))
	assert.Equal(t, queue.Deferred, got.State())

	leases, err = s.Lease(t.Context(), now.Add(10*time.Minute), 1, time.Minute, markNone)
	require.NoError(t, err)
	require.Len(t, leases, 1)
	l = leases[0]
	l.Message.Recipients[1].State = queue.Failed
	l.Message.NextAttempt = time.Time{}
	require.NoError(t, s.Release(t.Context(), l, nil))
	_, err = s.Get(t.Context(), m.ID)
	assert.ErrorIs(t, err, queue.ErrNotFound, "a message with nothing left to do is removed")
	_, err = s.Body(t.Context(), m.ID)
	assert.ErrorIs(t, err, queue.ErrNotFound)
	st, err := s.Stats(t.Context())
	require.NoError(t, err)
	assert.Zero(t, st.Messages)
	assert.Zero(t, st.Bytes)
}

func testStaleLease(t *testing.T, open Opener) {
	s := open(t, t.TempDir())
	m := NewMessage(queue.NewID(base), base, "a@example.org", "b@example.net")
	add(t, s, m, "x")
	now := base.Add(time.Minute)
	leases, err := s.Lease(t.Context(), now, 1, time.Minute, markRetry(now.Add(time.Hour)))
	require.NoError(t, err)
	require.Len(t, leases, 1)
	l := leases[0]
	// The message is removed (by an administrator) during the attempt.
	require.NoError(t, s.Release(t.Context(), l, nil))
	touched, _, err := s.Modify(t.Context(), &queue.Filter{IDs: []string{m.ID}}, func(*queue.Message) queue.Change {
		return queue.Change{Remove: true}
	})
	require.NoError(t, err)
	assert.Equal(t, 1, touched)
	l.Message.Recipients[0].State = queue.Delivered
	assert.ErrorIs(t, s.Save(t.Context(), l), queue.ErrStaleLease)
	assert.ErrorIs(t, s.Release(t.Context(), l, nil), queue.ErrStaleLease)

	// A lease that was released and taken again is stale too.
	m2 := NewMessage(queue.NewID(base.Add(time.Millisecond)), base, "a@example.org", "b@example.net")
	add(t, s, m2, "x")
	first, err := s.Lease(t.Context(), now, 1, time.Minute, markNone)
	require.NoError(t, err)
	require.Len(t, first, 1)
	require.NoError(t, s.Release(t.Context(), first[0], nil))
	second, err := s.Lease(t.Context(), now, 1, time.Minute, markNone)
	require.NoError(t, err)
	require.Len(t, second, 1)
	assert.NotEqual(t, first[0].Token, second[0].Token)
	assert.ErrorIs(t, s.Save(t.Context(), first[0]), queue.ErrStaleLease)
	assert.NoError(t, s.Save(t.Context(), second[0]))
	stale, err := s.Renew(t.Context(), []*queue.Lease{first[0], second[0]}, now.Add(2*time.Minute))
	require.NoError(t, err)
	assert.Equal(t, []string{m2.ID}, ids(stale))
	assert.Len(t, stale, 1)
	assert.Equal(t, first[0].Token, stale[0].Token)
}

func testNotices(t *testing.T, open Opener) {
	s := open(t, t.TempDir())
	m := NewMessage(queue.NewID(base), base, "a@example.org", "b@example.net")
	add(t, s, m, "original")
	now := base.Add(time.Minute)
	leases, err := s.Lease(t.Context(), now, 1, time.Minute, markNone)
	require.NoError(t, err)
	require.Len(t, leases, 1)
	l := leases[0]
	l.Message.Recipients[0].State = queue.Failed
	notice := NewMessage(queue.NewID(now), now, "", "a@example.org")
	notice.Source = "dsn"
	bigNotice := NewMessage(queue.NewID(now.Add(time.Millisecond)), now, "", "a@example.org")
	big := strings.Repeat("z", 200000)
	require.NoError(t, s.Release(t.Context(), l, []queue.Notice{
		{Message: notice, Body: strings.NewReader("the notice")},
		{Message: bigNotice, Body: bytes.NewReader([]byte(big))},
	}))
	_, err = s.Get(t.Context(), m.ID)
	assert.ErrorIs(t, err, queue.ErrNotFound)
	got, err := s.Get(t.Context(), notice.ID)
	require.NoError(t, err)
	assert.Equal(t, "dsn", got.Source)
	assert.Equal(t, "the notice", readBody(t, s, notice.ID))
	assert.Equal(t, big, readBody(t, s, bigNotice.ID))
}

func testNextDue(t *testing.T, open Opener) {
	s := open(t, t.TempDir())
	_, ok, err := s.NextDue(t.Context())
	require.NoError(t, err)
	assert.False(t, ok, "an empty queue")
	m1 := NewMessage(queue.NewID(base), base, "a@example.org", "b@example.net")
	m1.NextAttempt, m1.Recipients[0].NextAttempt = base.Add(time.Hour), base.Add(time.Hour)
	add(t, s, m1, "x")
	m2 := NewMessage(queue.NewID(base.Add(time.Millisecond)), base, "a@example.org", "b@example.net")
	m2.Priority = 2
	m2.NextAttempt, m2.Recipients[0].NextAttempt = base.Add(2*time.Hour), base.Add(2*time.Hour)
	add(t, s, m2, "x")
	next, ok, err := s.NextDue(t.Context())
	require.NoError(t, err)
	require.True(t, ok)
	assert.True(t, next.Equal(base.Add(time.Hour)), "the earliest of every priority: %v", next)
	// Leased: not counted.
	leases, err := s.Lease(t.Context(), base.Add(time.Hour), 1, time.Minute, markNone)
	require.NoError(t, err)
	require.Len(t, leases, 1)
	next, ok, err = s.NextDue(t.Context())
	require.NoError(t, err)
	require.True(t, ok)
	assert.True(t, next.After(base.Add(time.Hour)), "the leased one is not due before its lease ends: %v", next)
	assert.False(t, next.After(base.Add(2*time.Hour)), "%v", next)
}

func testListFilters(t *testing.T, open Opener) {
	s := open(t, t.TempDir())
	var all []*queue.Message
	for i := range 25 {
		arrived := base.Add(time.Duration(i) * time.Minute)
		from := "app@example.org"
		if i%5 == 0 {
			from = "news@lists.example.org"
		}
		to := fmt.Sprintf("user%d@gmail.com", i)
		if i%2 == 1 {
			to = fmt.Sprintf("user%d@example.net", i)
		}
		m := NewMessage(queue.NewID(arrived), arrived, from, to)
		if i%3 == 0 {
			m.Recipients[0].State = queue.Deferred
			m.Recipients[0].Destination = "mx:gmail-smtp-in.l.google.com,alt1.gmail-smtp-in.l.google.com"
			m.Recipients[0].NextAttempt = base.Add(time.Hour + time.Duration(i)*time.Minute)
			m.NextAttempt = m.Recipients[0].NextAttempt
		}
		add(t, s, m, "x")
		all = append(all, m)
	}
	count := func(f *queue.Filter) int {
		t.Helper()
		got, next, err := s.List(t.Context(), f, 1000, "")
		require.NoError(t, err)
		assert.Empty(t, next)
		return len(got)
	}
	assert.Equal(t, 25, count(&queue.Filter{}))
	assert.Equal(t, 5, count(&queue.Filter{From: "@lists.example.org"}))
	assert.Equal(t, 20, count(&queue.Filter{From: "APP@example.org"}))
	assert.Equal(t, 13, count(&queue.Filter{Domain: "gmail.com"}))
	assert.Equal(t, 1, count(&queue.Filter{To: "user3@example.net"}))
	assert.Equal(t, 9, count(&queue.Filter{State: queue.Deferred}))
	assert.Equal(t, 16, count(&queue.Filter{State: queue.Pending}))
	assert.Equal(t, 9, count(&queue.Filter{Destination: "alt1.gmail-smtp-in.l.google.com"}))
	assert.Equal(t, 10, count(&queue.Filter{ArrivedBefore: base.Add(10 * time.Minute)}))
	assert.Equal(t, 14, count(&queue.Filter{ArrivedAfter: base.Add(10 * time.Minute)}))
	assert.Equal(t, 16+3, count(&queue.Filter{NextBefore: base.Add(time.Hour + 7*time.Minute)}), "the pending ones, and three deferred ones due before")
	// Paging.
	var seen []string
	cursor := ""
	for range 10 {
		page, next, err := s.List(t.Context(), &queue.Filter{}, 10, cursor)
		require.NoError(t, err)
		for _, m := range page {
			seen = append(seen, m.ID)
		}
		if next == "" {
			break
		}
		cursor = next
	}
	require.Len(t, seen, 25)
	for i, m := range all {
		assert.Equal(t, m.ID, seen[i], "pages in arrival order")
	}
}

func testModify(t *testing.T, open Opener) {
	s := open(t, t.TempDir())
	var msgs []*queue.Message
	for i := range 6 {
		m := NewMessage(queue.NewID(base.Add(time.Duration(i)*time.Millisecond)), base, "a@example.org", fmt.Sprintf("u%d@example.net", i))
		add(t, s, m, "x")
		msgs = append(msgs, m)
	}
	// One is leased: busy.
	leases, err := s.Lease(t.Context(), base, 1, time.Minute, markNone)
	require.NoError(t, err)
	require.Len(t, leases, 1)
	touched, busy, err := s.Modify(t.Context(), &queue.Filter{}, func(m *queue.Message) queue.Change {
		m.Held, m.HoldReason = true, "test"
		return queue.Change{Write: true}
	})
	require.NoError(t, err)
	assert.Equal(t, 5, touched)
	assert.Equal(t, []string{leases[0].Message.ID}, busy)
	held := true
	got, _, err := s.List(t.Context(), &queue.Filter{Held: &held}, 100, "")
	require.NoError(t, err)
	assert.Len(t, got, 5)
	assert.Equal(t, queue.Held, got[0].State())
	more, err := s.Lease(t.Context(), base, 10, time.Minute, markNone)
	require.NoError(t, err)
	assert.Empty(t, more, "held messages are not leased")

	// Remove two, with a notice added for one.
	notice := NewMessage(queue.NewID(base.Add(time.Second)), base, "", "a@example.org")
	touched, _, err = s.Modify(t.Context(), &queue.Filter{IDs: []string{msgs[1].ID, msgs[2].ID}}, func(m *queue.Message) queue.Change {
		ch := queue.Change{Remove: true}
		if m.ID == msgs[1].ID {
			ch.Notices = []queue.Notice{{Message: notice, Body: strings.NewReader("bounced")}}
		}
		return ch
	})
	require.NoError(t, err)
	assert.Equal(t, 2, touched)
	_, err = s.Get(t.Context(), msgs[1].ID)
	assert.ErrorIs(t, err, queue.ErrNotFound)
	assert.Equal(t, "bounced", readBody(t, s, notice.ID))

	// Release: held messages become due.
	held = true
	touched, _, err = s.Modify(t.Context(), &queue.Filter{Held: &held}, func(m *queue.Message) queue.Change {
		m.Held, m.HoldReason = false, ""
		m.NextAttempt = base
		return queue.Change{Write: true}
	})
	require.NoError(t, err)
	assert.Equal(t, 3, touched)
	more, err = s.Lease(t.Context(), base, 10, time.Minute, markNone)
	require.NoError(t, err)
	assert.Len(t, more, 4, "the three released and the notice")
}

func testStats(t *testing.T, open Opener) {
	s := open(t, t.TempDir())
	for i := range 4 {
		m := NewMessage(queue.NewID(base.Add(time.Duration(i)*time.Minute)), base.Add(time.Duration(i)*time.Minute), "a@example.org", "b@example.net")
		if i == 3 {
			m.Held = true
		}
		add(t, s, m, strings.Repeat("x", 10*(i+1)))
	}
	st, err := s.Stats(t.Context())
	require.NoError(t, err)
	assert.Equal(t, int64(4), st.Messages)
	assert.Equal(t, int64(100), st.Bytes)
	assert.Equal(t, int64(3), st.ByState[queue.Pending])
	assert.Equal(t, int64(1), st.ByState[queue.Held])
	assert.True(t, st.Oldest.Equal(base), "%v", st.Oldest)
}

func testReopen(t *testing.T, open Opener) {
	dir := t.TempDir()
	s := open(t, dir)
	m := NewMessage(queue.NewID(base), base, "a@example.org", "b@example.net")
	add(t, s, m, "kept")
	big := NewMessage(queue.NewID(base.Add(time.Millisecond)), base, "a@example.org", "b@example.net")
	add(t, s, big, strings.Repeat("k", 300000))
	require.NoError(t, s.Close())
	s = open(t, dir)
	assert.Equal(t, "kept", readBody(t, s, m.ID))
	assert.Len(t, readBody(t, s, big.ID), 300000)
	st, err := s.Stats(context.Background())
	require.NoError(t, err)
	assert.Equal(t, int64(2), st.Messages)
	assert.Equal(t, int64(300004), st.Bytes)
}

func testHolds(t *testing.T, open Opener) {
	dir := t.TempDir()
	s := open(t, dir)
	holds, err := s.Holds(t.Context())
	require.NoError(t, err)
	assert.Empty(t, holds)
	h1 := queue.HoldRule{ID: "h1", RecipientDomain: "gmail.com", Comment: "a block", Created: base, Expires: base.Add(time.Hour)}
	h2 := queue.HoldRule{ID: "h2", SenderDomain: "news.example.org", Created: base}
	require.NoError(t, s.PutHold(t.Context(), h1))
	require.NoError(t, s.PutHold(t.Context(), h2))
	h1.Comment = "changed"
	require.NoError(t, s.PutHold(t.Context(), h1))
	require.NoError(t, s.Close())
	s = open(t, dir)
	holds, err = s.Holds(t.Context())
	require.NoError(t, err)
	require.Len(t, holds, 2)
	assert.Equal(t, "changed", holds[0].Comment)
	assert.True(t, holds[0].Expires.Equal(base.Add(time.Hour)))
	ok, err := s.DeleteHold(t.Context(), "h1")
	require.NoError(t, err)
	assert.True(t, ok)
	ok, err = s.DeleteHold(t.Context(), "h1")
	require.NoError(t, err)
	assert.False(t, ok)
	holds, err = s.Holds(t.Context())
	require.NoError(t, err)
	assert.Len(t, holds, 1)

	m := NewMessage("x", base, "a@news.example.org", "b@gmail.com")
	assert.True(t, h2.Matches(m))
	assert.True(t, h1.Matches(m))
	assert.False(t, queue.HoldRule{RecipientDomain: "example.net"}.Matches(m))
}

// setAtEOF calls set when r ends, as the queue's signing reader does.
type setAtEOF struct {
	r   io.Reader
	set func()
}

func (e *setAtEOF) Read(p []byte) (int, error) {
	n, err := e.r.Read(p)
	if err == io.EOF && e.set != nil {
		e.set()
		e.set = nil
	}
	return n, err
}
