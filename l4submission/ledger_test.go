package l4submission

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
)

func key(from, data string) messageKey {
	h := newMessageHash(from)
	h.Write([]byte(data))
	return keyOf(h)
}

func TestMessageKey(t *testing.T) {
	assert.Equal(t, key("a@x", "body"), key("a@x", "body"))
	assert.NotEqual(t, key("a@x", "body"), key("b@x", "body"), "the sender is part of the key")
	assert.NotEqual(t, key("a@x", "body"), key("a@x", "body2"))
	assert.NotEqual(t, key("a@x", "y"), key("a@xy", ""), "the sender and the data are kept apart")
}

func TestLedger(t *testing.T) {
	now := time.Unix(1_000_000, 0)
	l := newLedger(time.Hour, 2)
	k1, k2, k3 := key("a", "1"), key("a", "2"), key("a", "3")

	assert.Nil(t, l.delivered(k1, now))
	l.remember(k1, nil, now)
	assert.Nil(t, l.delivered(k1, now), "nothing delivered, nothing recorded")

	l.remember(k1, []string{"x@a"}, now)
	assert.Equal(t, map[string]bool{"x@a": true}, l.delivered(k1, now))
	l.remember(k1, []string{"x@a", "y@b"}, now)
	assert.Equal(t, map[string]bool{"x@a": true, "y@b": true}, l.delivered(k1, now))

	assert.Nil(t, l.delivered(k1, now.Add(2*time.Hour)), "expired")
	assert.Empty(t, l.entries)

	l.remember(k1, []string{"x@a"}, now)
	l.remember(k2, []string{"x@a"}, now)
	l.remember(k3, []string{"x@a"}, now)
	assert.Nil(t, l.delivered(k1, now), "the oldest goes when the ledger is full")
	assert.NotNil(t, l.delivered(k2, now))
	assert.NotNil(t, l.delivered(k3, now))

	l.forget(k2)
	assert.Nil(t, l.delivered(k2, now))
	assert.Equal(t, 1, l.order.Len())

	l.remember(k1, []string{"x@a"}, now.Add(2*time.Hour))
	assert.Nil(t, l.delivered(k3, now.Add(2*time.Hour)), "expired entries are dropped")
	assert.Equal(t, 1, l.order.Len())
}
