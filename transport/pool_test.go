package transport

import (
	"context"
	"net"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/seed7b014b84/caddy-smtp/internal/peertest"
)

// dialer returns a dial function for the pool that counts its calls.
func dialer(t *testing.T, addr string, n *atomic.Int32) func(context.Context) (*Client, error) {
	return func(ctx context.Context) (*Client, error) {
		n.Add(1)
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			return nil, err
		}
		return Dial(ctx, conn, Options{Hostname: "client.example.org"})
	}
}

func keyFor(addr string) Key {
	return Key{Addr: netip.MustParseAddrPort(addr), EHLO: "client.example.org", Protocol: SMTP}
}

func TestPoolReuse(t *testing.T) {
	sink := peertest.StartSink(t, peertest.SinkOptions{})
	pool := NewPool(PoolConfig{MaxMessages: 3})
	defer pool.Close()
	var dials atomic.Int32
	key := keyFor(sink.Addr)
	initMetrics()
	reused := testutil.ToFloat64(connections.WithLabelValues("reused", "none"))
	var first *Client
	for i := range 5 {
		c, err := pool.Session(t.Context(), []Key{key}, "sink", 0, dialer(t, sink.Addr, &dials))
		require.NoError(t, err)
		if i == 0 {
			first = c
		}
		res, err := c.Deliver(t.Context(), envelope("a@example.test"), strings.NewReader(testBody))
		require.NoError(t, err)
		assert.Equal(t, Delivered, res[0].Status)
		pool.Release(key, c)
	}
	assert.Equal(t, int32(2), dials.Load(), "3 messages on the first session, 2 on the second")
	assert.Equal(t, 3, first.Messages())
	assert.False(t, first.Usable(), "closed after max_messages")
	assert.Equal(t, reused+3, testutil.ToFloat64(connections.WithLabelValues("reused", "none")))
	msgs := sink.WaitMessages(t, 5, 5*time.Second)
	assert.Len(t, msgs, 5)
}

func TestPoolIdleTimeout(t *testing.T) {
	sink := peertest.StartSink(t, peertest.SinkOptions{})
	pool := NewPool(PoolConfig{IdleTimeout: 200 * time.Millisecond})
	defer pool.Close()
	var dials atomic.Int32
	key := keyFor(sink.Addr)
	c, err := pool.Session(t.Context(), []Key{key}, "sink", 5, dialer(t, sink.Addr, &dials))
	require.NoError(t, err)
	pool.Release(key, c)
	assert.Equal(t, 1, pool.Idle())
	assert.Equal(t, 1, pool.Open("sink"))
	require.Eventually(t, func() bool { return pool.Idle() == 0 && pool.Open("sink") == 0 }, 2*time.Second, 20*time.Millisecond)
}

// TestPoolServerClosedIdle has smtp-sink close sessions idle for a second
// (-t 1): a kept session the server closed is not used.
func TestPoolServerClosedIdle(t *testing.T) {
	sink := peertest.StartSink(t, peertest.SinkOptions{Flags: []string{"-t", "1"}})
	pool := NewPool(PoolConfig{IdleTimeout: time.Minute})
	defer pool.Close()
	var dials atomic.Int32
	key := keyFor(sink.Addr)
	c, err := pool.Session(t.Context(), []Key{key}, "sink", 0, dialer(t, sink.Addr, &dials))
	require.NoError(t, err)
	pool.Release(key, c)
	time.Sleep(1500 * time.Millisecond)
	c2, err := pool.Session(t.Context(), []Key{key}, "sink", 0, dialer(t, sink.Addr, &dials))
	require.NoError(t, err)
	assert.NotSame(t, c, c2)
	assert.Equal(t, int32(2), dials.Load())
	res, err := c2.Deliver(t.Context(), envelope("a@example.test"), strings.NewReader(testBody))
	require.NoError(t, err)
	assert.Equal(t, Delivered, res[0].Status)
	pool.Release(key, c2)
}

func TestPoolConcurrencyCap(t *testing.T) {
	sink := peertest.StartSink(t, peertest.SinkOptions{})
	pool := NewPool(PoolConfig{})
	defer pool.Close()
	var dials atomic.Int32
	key := keyFor(sink.Addr)
	a, err := pool.Session(t.Context(), []Key{key}, "relay", 2, dialer(t, sink.Addr, &dials))
	require.NoError(t, err)
	b, err := pool.Session(t.Context(), []Key{key}, "relay", 2, dialer(t, sink.Addr, &dials))
	require.NoError(t, err)
	assert.Equal(t, 2, pool.Open("relay"))

	ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()
	_, err = pool.Session(ctx, []Key{key}, "relay", 2, dialer(t, sink.Addr, &dials))
	require.ErrorIs(t, err, context.DeadlineExceeded, "a third session waits")

	got := make(chan *Client, 1)
	go func() {
		c, err := pool.Session(t.Context(), []Key{key}, "relay", 2, dialer(t, sink.Addr, &dials))
		if err == nil {
			got <- c
		}
	}()
	time.Sleep(50 * time.Millisecond)
	pool.Release(key, a)
	select {
	case c := <-got:
		assert.Same(t, a, c, "the released session is handed on")
		pool.Release(key, c)
	case <-time.After(2 * time.Second):
		t.Fatal("waiting session was not served")
	}

	// An idle session of another key in the group makes room.
	other := key
	other.EHLO = "other.example.org"
	c, err := pool.Session(t.Context(), []Key{other}, "relay", 2, dialer(t, sink.Addr, &dials))
	require.NoError(t, err)
	assert.Equal(t, 2, pool.Open("relay"))
	pool.Release(other, c)
	pool.Release(key, b)
	assert.Equal(t, int32(3), dials.Load())
}

func TestPoolClose(t *testing.T) {
	sink := peertest.StartSink(t, peertest.SinkOptions{})
	pool := NewPool(PoolConfig{})
	var dials atomic.Int32
	key := keyFor(sink.Addr)
	c, err := pool.Session(t.Context(), []Key{key}, "g", 0, dialer(t, sink.Addr, &dials))
	require.NoError(t, err)
	pool.Release(key, c)
	pool.Close()
	assert.Equal(t, 0, pool.Idle())
	_, err = pool.Session(t.Context(), []Key{key}, "g", 0, dialer(t, sink.Addr, &dials))
	require.ErrorIs(t, err, ErrPoolClosed)
	assert.Equal(t, 0, pool.Open("g"), "the closed session's slot is free")
}

func TestGetPoolShared(t *testing.T) {
	p1, r1, err := GetPool(PoolConfig{MaxMessages: 7})
	require.NoError(t, err)
	p2, r2, err := GetPool(PoolConfig{MaxMessages: 7})
	require.NoError(t, err)
	assert.Same(t, p1, p2, "a reload with the same settings keeps the pool")
	r1()
	r2()
}
