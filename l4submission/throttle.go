package l4submission

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"net/netip"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/semaphore"
	"golang.org/x/sync/singleflight"
)

// Password hashes such as bcrypt at cost 14 (`caddy hash-password`'s
// default) take about a CPU-second each to compare, on purpose: without
// bounds, a few clients sending wrong passwords keep every core busy. The
// bounds:
//
//   - at most hashSlots comparisons run at once in the process (half the
//     CPUs, at least one); an AUTH waits up to authHashWait for its turn,
//     else gets 454 4.7.0;
//   - a client (an IPv4 address, or an IPv6 /64) has authFreeFailures
//     failed AUTHs; each one after locks it out for a time that doubles,
//     from authLockout up to authMaxLockout, during which its AUTH gets
//     454 4.7.0 without any comparison, after authLockedDelay (as
//     Postfix's smtpd_error_sleep_time), so that it cannot keep the CPU
//     busy with new connections instead. Its failures are forgotten
//     authForgetAfter after the last one, or after its lockout ends if
//     that is later. At most authMaxClients clients are tracked;
//   - a session is closed after authSessionFailures failures (421);
//   - a (user, password) pair that succeeded is cached, by a keyed hash
//     of the two, so that a client that logs in often costs one
//     comparison, as Caddy's basic_auth hash_cache does. Failures are not
//     cached, and the lockout comes first: a locked-out client cannot
//     test passwords against the cache.
const (
	authHashWait        = 2 * time.Second
	authLockedDelay     = time.Second
	authFreeFailures    = 5
	authLockout         = time.Minute
	authMaxLockout      = time.Hour
	authForgetAfter     = time.Hour
	authMaxClients      = 10000
	authSessionFailures = 3
	authCacheSize       = 1000
)

// hashSlots is the process's semaphore of password comparisons.
var hashSlots = sync.OnceValue(func() *semaphore.Weighted {
	return semaphore.NewWeighted(int64(max(1, runtime.GOMAXPROCS(0)/2)))
})

// authThrottle is a handler's record of failed and successful AUTHs.
type authThrottle struct {
	secret  [32]byte
	flights singleflight.Group
	// compares counts the password comparisons made, for the tests.
	compares atomic.Int64

	mu       sync.Mutex
	failures map[netip.Prefix]*authFailures
	cache    map[[sha256.Size]byte]struct{}
}

// authFailures are a client's recent failed AUTHs.
type authFailures struct {
	count int
	last  time.Time
	until time.Time // locked out until then
}

func newAuthThrottle() *authThrottle {
	t := &authThrottle{
		failures: make(map[netip.Prefix]*authFailures),
		cache:    make(map[[sha256.Size]byte]struct{}),
	}
	_, _ = rand.Read(t.secret[:])
	return t
}

// expired reports whether the record can be forgotten at now.
func (f *authFailures) expired(now time.Time) bool {
	end := f.last
	if f.until.After(end) {
		end = f.until
	}
	return now.Sub(end) > authForgetAfter
}

// lockedFor returns how long the client stays locked out, 0 if it is not.
func (t *authThrottle) lockedFor(client netip.Prefix, now time.Time) time.Duration {
	t.mu.Lock()
	defer t.mu.Unlock()
	f := t.failures[client]
	if f == nil || !f.until.After(now) {
		return 0
	}
	return f.until.Sub(now)
}

// fail records a failed AUTH of the client, and locks it out once it has
// used its free failures.
func (t *authThrottle) fail(client netip.Prefix, now time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	f := t.failures[client]
	if f != nil && f.expired(now) {
		f = nil
	}
	if f == nil {
		t.makeRoom(now)
		f = new(authFailures)
		t.failures[client] = f
	}
	f.count++
	f.last = now
	if over := f.count - authFreeFailures; over >= 0 {
		d := authMaxLockout
		if over < 16 {
			d = min(authLockout<<over, authMaxLockout)
		}
		f.until = now.Add(d)
	}
}

// makeRoom keeps the failure records under authMaxClients: the expired
// ones go first, then the one whose last failure is the oldest.
func (t *authThrottle) makeRoom(now time.Time) {
	if len(t.failures) < authMaxClients {
		return
	}
	var oldest netip.Prefix
	var oldestTime time.Time
	for k, f := range t.failures {
		if f.expired(now) {
			delete(t.failures, k)
			continue
		}
		if oldestTime.IsZero() || f.last.Before(oldestTime) {
			oldest, oldestTime = k, f.last
		}
	}
	if len(t.failures) >= authMaxClients {
		delete(t.failures, oldest)
	}
}

// cacheKey is the keyed hash of a (user, password) pair: the cache holds
// no password.
func (t *authThrottle) cacheKey(username, password string) [sha256.Size]byte {
	m := hmac.New(sha256.New, t.secret[:])
	var n [8]byte
	binary.BigEndian.PutUint64(n[:], uint64(len(username)))
	m.Write(n[:])
	m.Write([]byte(username))
	m.Write([]byte(password))
	var out [sha256.Size]byte
	m.Sum(out[:0])
	return out
}

// cached reports whether the pair succeeded before.
func (t *authThrottle) cached(k [sha256.Size]byte) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	_, ok := t.cache[k]
	return ok
}

// remember caches a pair that succeeded. When the cache is full, about a
// tenth of it is dropped, at random (map order), as Caddy's basic_auth
// does.
func (t *authThrottle) remember(k [sha256.Size]byte) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.cache) >= authCacheSize {
		drop := max(len(t.cache)/10, 1)
		for old := range t.cache {
			if drop == 0 {
				break
			}
			delete(t.cache, old)
			drop--
		}
	}
	t.cache[k] = struct{}{}
}
