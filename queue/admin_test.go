package queue_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/seed7b014b84/caddy-smtp/delivery"
	"github.com/seed7b014b84/caddy-smtp/queue"
)

func (h *harness) get(t *testing.T, id string) *queue.Message {
	t.Helper()
	m, err := h.store.Get(context.Background(), id)
	if err != nil {
		return nil
	}
	return m
}

// TestActions: each action changes exactly the selected messages.
func TestActions(t *testing.T) {
	s := newScript(func(string, int) delivery.RecipientReport { return deferred() })
	h := start(t, s, policy{retry: []time.Duration{time.Hour}, expire: 24 * time.Hour}, nil)
	var gmail, other []string
	for i := range 4 {
		gmail = append(gmail, h.enqueue(t, "a@example.org", 0, fmt.Sprintf("u%d@gmail.com", i)))
		other = append(other, h.enqueue(t, "a@example.org", 0, fmt.Sprintf("u%d@example.net", i)))
	}
	require.Eventually(t, func() bool { return s.calls.Load() == 8 }, 10*time.Second, 10*time.Millisecond)
	require.Eventually(t, func() bool {
		for _, id := range append(gmail, other...) {
			if m := h.get(t, id); m == nil || m.State() != queue.Deferred {
				return false
			}
		}
		return true
	}, 10*time.Second, 10*time.Millisecond)

	gmailOnly := &queue.Filter{Domain: "gmail.com"}
	res, err := h.q.Act(t.Context(), gmailOnly, queue.ActHold, "a block")
	require.NoError(t, err)
	assert.Equal(t, 4, res.Touched)
	for _, id := range gmail {
		m := h.get(t, id)
		assert.True(t, m.Held)
		assert.Equal(t, "a block", m.HoldReason)
	}
	for _, id := range other {
		assert.False(t, h.get(t, id).Held)
	}
	assert.Len(t, h.events.named(queue.EventHeld), 4)

	// Retry: the others are tried again now; the held ones are not.
	calls := s.calls.Load()
	res, err = h.q.Act(t.Context(), &queue.Filter{}, queue.ActRetry, "")
	require.NoError(t, err)
	assert.Equal(t, 4, res.Touched, "held messages are not retried")
	require.Eventually(t, func() bool { return s.calls.Load() == calls+4 }, 10*time.Second, 10*time.Millisecond)

	// Release: due at once.
	res, err = h.q.Act(t.Context(), gmailOnly, queue.ActRelease, "")
	require.NoError(t, err)
	assert.Equal(t, 4, res.Touched)
	require.Eventually(t, func() bool { return s.attemptsOf("u0@gmail.com") == 2 }, 10*time.Second, 10*time.Millisecond)

	// Bounce and delete.
	require.Eventually(t, func() bool { return h.get(t, gmail[0]).State() == queue.Deferred }, 5*time.Second, 10*time.Millisecond)
	res, err = h.q.Act(t.Context(), &queue.Filter{IDs: gmail[:2]}, queue.ActBounce, "spam run")
	require.NoError(t, err)
	assert.Equal(t, 2, res.Touched)
	require.Eventually(t, func() bool { return h.get(t, gmail[0]) == nil }, 5*time.Second, 10*time.Millisecond,
		"a bounced message with nothing left is removed (at once, or when its attempt ends)")
	res, err = h.q.Act(t.Context(), &queue.Filter{IDs: other[:1]}, queue.ActDelete, "")
	require.NoError(t, err)
	assert.Equal(t, 1, res.Touched)
	assert.Nil(t, h.get(t, other[0]))
	assert.NotNil(t, h.get(t, other[1]))
	require.Eventually(t, func() bool { return len(h.events.named(queue.EventBounced)) == 2 }, 5*time.Second, 10*time.Millisecond)
	assert.Len(t, h.events.named(queue.EventDeleted), 1)
}

// TestActionOnBusyMessage: an action on a message in delivery applies
// when its attempt ends.
func TestActionOnBusyMessage(t *testing.T) {
	s := newScript(func(string, int) delivery.RecipientReport { return deferred() })
	s.delay = 500 * time.Millisecond
	h := start(t, s, policy{retry: []time.Duration{10 * time.Millisecond}, expire: time.Hour}, nil)
	id := h.enqueue(t, "a@example.org", 0, "b@example.net")
	require.Eventually(t, func() bool { return s.calls.Load() == 1 }, 5*time.Second, 5*time.Millisecond)
	res, err := h.q.Act(t.Context(), &queue.Filter{IDs: []string{id}}, queue.ActHold, "")
	require.NoError(t, err)
	assert.Equal(t, 1, res.Touched)
	assert.Equal(t, 1, res.Deferred)
	require.Eventually(t, func() bool { m := h.get(t, id); return m != nil && m.Held }, 5*time.Second, 10*time.Millisecond)
	time.Sleep(200 * time.Millisecond)
	assert.Equal(t, int64(1), s.calls.Load(), "held: no more attempts")
}

// TestHoldRules: a rule holds queued and new messages until it is removed
// or expires.
func TestHoldRules(t *testing.T) {
	s := newScript(func(string, int) delivery.RecipientReport { return deferred() })
	h := start(t, s, policy{retry: []time.Duration{time.Hour}, expire: time.Hour}, nil)
	queued := h.enqueue(t, "a@example.org", 0, "x@gmail.com")
	require.Eventually(t, func() bool { m := h.get(t, queued); return m != nil && m.State() == queue.Deferred }, 5*time.Second, 10*time.Millisecond)
	rule, res, err := h.q.AddHold(t.Context(), queue.HoldRule{RecipientDomain: "gmail.com", Comment: "block"})
	require.NoError(t, err)
	assert.Equal(t, 1, res.Touched)
	assert.NotEmpty(t, rule.ID)
	assert.True(t, h.get(t, queued).Held)
	assert.Equal(t, "hold rule "+rule.ID+": block", h.get(t, queued).HoldReason)

	calls := s.calls.Load()
	fresh := h.enqueue(t, "a@example.org", 0, "y@gmail.com")
	free := h.enqueue(t, "a@example.org", 0, "z@example.net")
	require.Eventually(t, func() bool { return s.attemptsOf("z@example.net") == 1 }, 5*time.Second, 10*time.Millisecond)
	assert.True(t, h.get(t, fresh).Held, "a new message is held by the rule")
	assert.False(t, h.get(t, free).Held)
	assert.Equal(t, calls+1, s.calls.Load())

	rules, err := h.q.HoldRules(t.Context())
	require.NoError(t, err)
	require.Len(t, rules, 1)

	found, res, err := h.q.RemoveHold(t.Context(), rule.ID)
	require.NoError(t, err)
	assert.True(t, found)
	assert.Equal(t, 2, res.Touched)
	require.Eventually(t, func() bool { return s.attemptsOf("y@gmail.com") == 1 }, 5*time.Second, 10*time.Millisecond)
	assert.False(t, h.get(t, fresh).Held)

	found, _, err = h.q.RemoveHold(t.Context(), rule.ID)
	require.NoError(t, err)
	assert.False(t, found)
}

// TestSummary: the queue by destination and age.
func TestSummary(t *testing.T) {
	s := newScript(func(rcpt string, _ int) delivery.RecipientReport {
		if strings.HasSuffix(rcpt, "@dead.example") {
			return unreachable()
		}
		return deferred()
	})
	h := start(t, s, policy{retry: []time.Duration{time.Hour}, expire: 24 * time.Hour}, nil)
	for i := range 3 {
		h.enqueue(t, "a@example.org", 0, fmt.Sprintf("u%d@dead.example", i))
	}
	h.enqueue(t, "a@example.org", 0, "v@slow.example", "w@slow.example", "x@dead.example")
	require.Eventually(t, func() bool { return s.calls.Load() >= 2 }, 5*time.Second, 10*time.Millisecond)
	var sum *queue.Summary
	require.Eventually(t, func() bool {
		var err error
		sum, err = h.q.Summarize(t.Context())
		require.NoError(t, err)
		return len(sum.Destinations) == 2 && sum.Destinations[0].Suspended
	}, 10*time.Second, 20*time.Millisecond)
	assert.Equal(t, 4, sum.Messages)
	d := sum.Destinations[0]
	assert.Equal(t, "mx:dead.example", d.Destination)
	assert.Equal(t, 4, d.Messages)
	assert.Equal(t, 4, d.Ages[0], "all under 5 minutes old")
	assert.Contains(t, d.LastError, "connection refused")
	assert.Equal(t, 1, sum.Destinations[1].Messages, "a message counts once per destination")
	assert.Len(t, sum.Ages, 8)
	assert.Equal(t, []int{4, 0, 0, 0, 0, 0, 0, 0}, sum.MessageAges, "in the total, a message at two destinations counts once")
}
