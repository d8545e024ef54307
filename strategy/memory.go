package strategy

import (
	"net/netip"
	"sync"
	"time"
)

// The shared memory's bounds.
const (
	// DefaultMemoryTTL is how long an address that timed out is tried
	// last: long enough that a host's black-holed address costs its
	// delay once over a burst of connections, short enough that an
	// address that comes back is soon tried in its own place again.
	DefaultMemoryTTL = 5 * time.Minute
	// DefaultMemorySize is the most addresses remembered at once.
	DefaultMemorySize = 4096
)

// Memory remembers the addresses that timed out: an attempt whose connect
// timeout expired, or, with happy eyeballs, an attempt still pending after
// the fallback delay when another address connected. A Dialer tries the
// addresses it remembers after all the others of a host (keeping the
// plan's order within each group), so that a black-holed address (IPv4 or
// IPv6 that drops every packet) costs the fallback delay, or the connect
// timeout without happy eyeballs, once per TTL rather than on every
// connection. An address that connects is forgotten. The memory is keyed
// by address and port, holds at most its size (the entries closest to
// expiry make room), and is safe for concurrent use.
type Memory struct {
	ttl time.Duration
	max int
	now func() time.Time

	mu   sync.Mutex
	slow map[netip.AddrPort]time.Time // address -> when it is forgotten
}

// NewMemory returns a memory keeping each address for ttl, at most size
// addresses at once (defaults for zero or negative values).
func NewMemory(ttl time.Duration, size int) *Memory {
	if ttl <= 0 {
		ttl = DefaultMemoryTTL
	}
	if size <= 0 {
		size = DefaultMemorySize
	}
	return &Memory{ttl: ttl, max: size, now: time.Now, slow: map[netip.AddrPort]time.Time{}}
}

// sharedMemory is the process's memory: every Dialer without one of its
// own uses it, whatever config made it, so that it survives config
// reloads (addresses do not stop dropping packets because the config
// changed).
var sharedMemory = NewMemory(DefaultMemoryTTL, DefaultMemorySize)

// SharedMemory returns the memory Dialers use when they have none of their
// own.
func SharedMemory() *Memory { return sharedMemory }

// Remember marks a as slow for the memory's TTL (again, if it was).
func (m *Memory) Remember(a netip.AddrPort) {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.now()
	if _, ok := m.slow[a]; !ok && len(m.slow) >= m.max {
		m.makeRoom(now)
	}
	m.slow[a] = now.Add(m.ttl)
}

// makeRoom drops the expired entries, or, when none has, the one closest to
// expiry. Called with m.mu held and the memory full: O(size), and only
// when an address times out.
func (m *Memory) makeRoom(now time.Time) {
	var (
		oldest    netip.AddrPort
		oldestExp time.Time
	)
	for a, exp := range m.slow {
		if !now.Before(exp) {
			delete(m.slow, a)
			continue
		}
		if oldestExp.IsZero() || exp.Before(oldestExp) {
			oldest, oldestExp = a, exp
		}
	}
	if len(m.slow) >= m.max {
		delete(m.slow, oldest)
	}
}

// Forget unmarks a: it connected.
func (m *Memory) Forget(a netip.AddrPort) {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.slow, a)
}

// Slow reports whether a timed out within the TTL.
func (m *Memory) Slow(a netip.AddrPort) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.slowLocked(a, m.now())
}

func (m *Memory) slowLocked(a netip.AddrPort, now time.Time) bool {
	exp, ok := m.slow[a]
	if ok && !now.Before(exp) {
		delete(m.slow, a)
		return false
	}
	return ok
}

// Len returns how many addresses are remembered (expired ones included
// until they are next looked at).
func (m *Memory) Len() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.slow)
}

// order returns cands with the slow ones moved last, each group in its
// order; cands itself when none is slow.
func (m *Memory) order(cands []Candidate) []Candidate {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.now()
	var slow []bool
	for i, c := range cands {
		if m.slowLocked(c.Addr, now) {
			if slow == nil {
				slow = make([]bool, len(cands))
			}
			slow[i] = true
		}
	}
	if slow == nil {
		return cands
	}
	out := make([]Candidate, 0, len(cands))
	for i, c := range cands {
		if !slow[i] {
			out = append(out, c)
		}
	}
	for i, c := range cands {
		if slow[i] {
			out = append(out, c)
		}
	}
	return out
}
