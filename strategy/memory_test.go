package strategy

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestMemory(t *testing.T) {
	now := time.Unix(1_000_000, 0)
	m := NewMemory(5*time.Minute, 3)
	m.now = func() time.Time { return now }
	a := netip.MustParseAddrPort("192.0.2.1:25")
	b := netip.MustParseAddrPort("[2001:db8::1]:25")
	c := netip.MustParseAddrPort("192.0.2.3:25")
	cands := []Candidate{{Addr: a}, {Addr: b}, {Addr: c}}

	assert.Equal(t, cands, m.order(cands), "nothing remembered: the plan's order")
	m.Remember(a)
	assert.True(t, m.Slow(a))
	assert.False(t, m.Slow(netip.MustParseAddrPort("192.0.2.1:587")), "per address and port")
	assert.Equal(t, []Candidate{{Addr: b}, {Addr: c}, {Addr: a}}, m.order(cands), "a slow address goes last")
	m.Remember(c)
	assert.Equal(t, []Candidate{{Addr: b}, {Addr: a}, {Addr: c}}, m.order(cands), "the slow ones keep their order")
	assert.Equal(t, []Candidate{{Addr: a}, {Addr: b}, {Addr: c}}, cands, "the plan's own list is not changed")

	m.Forget(a)
	assert.False(t, m.Slow(a), "an address that connected is forgotten")

	now = now.Add(5*time.Minute - time.Second)
	assert.True(t, m.Slow(c))
	now = now.Add(time.Second)
	assert.False(t, m.Slow(c), "forgotten after the TTL")
	assert.Zero(t, m.Len())

	// Bounded: the entry closest to expiry makes room.
	for i := range 5 {
		now = now.Add(time.Second)
		m.Remember(netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 51, 100, byte(i)}), 25))
	}
	assert.Equal(t, 3, m.Len())
	for i := range 5 {
		addr := netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 51, 100, byte(i)}), 25)
		assert.Equal(t, i >= 2, m.Slow(addr), "%s", addr)
	}
	// Expired entries make room first.
	now = now.Add(10 * time.Minute)
	m.Remember(a)
	assert.Equal(t, 1, m.Len())
}

func TestMemoryBoundedUnderLoad(t *testing.T) {
	m := NewMemory(time.Minute, 64)
	for i := range 3 * 64 {
		m.Remember(netip.MustParseAddrPort(fmt.Sprintf("[2001:db8::%x]:25", i)))
	}
	require.Equal(t, 64, m.Len())
}
