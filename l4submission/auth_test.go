package l4submission

import (
	"encoding/base64"
	"fmt"
	"net/netip"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/caddyauth"
	"github.com/emersion/go-smtp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/crypto/bcrypt"
)

func TestAuthenticator(t *testing.T) {
	hash, err := bcrypt.GenerateFromPassword([]byte("s3cret"), bcrypt.MinCost)
	require.NoError(t, err)
	t.Setenv("L4SUBMISSION_TEST_USER", "carol")
	h := &Handler{Users: []User{
		{Username: "alice", Password: string(hash)},
		{Username: "bob", Password: base64.StdEncoding.EncodeToString(hash)},
		{Username: "{env.L4SUBMISSION_TEST_USER}", Password: string(hash)},
	}}
	ctx, cancel := caddy.NewContext(caddy.Context{Context: t.Context()})
	defer cancel()
	a, err := newAuthenticator(ctx, h)
	require.NoError(t, err)

	tests := []struct {
		user, password string
		want           error
	}{
		{"alice", "s3cret", nil},
		{"bob", "s3cret", nil},
		{"carol", "s3cret", nil},
		{"alice", "wrong", smtp.ErrAuthFailed},
		{"Alice", "s3cret", smtp.ErrAuthFailed},
	}
	for _, tt := range tests {
		assert.Equal(t, tt.want, a.check(netip.MustParseAddr("192.0.2.1"), tt.user, tt.password), "%s/%s", tt.user, tt.password)
	}
}

func TestLoginServer(t *testing.T) {
	var got [2]string
	auth := func(u, p string) error { got = [2]string{u, p}; return nil }

	s, err := saslServer(mechLogin, auth)
	require.NoError(t, err)
	ch, done, err := s.Next(nil)
	require.NoError(t, err)
	assert.Equal(t, "Username:", string(ch))
	assert.False(t, done)
	ch, done, err = s.Next([]byte("alice"))
	require.NoError(t, err)
	assert.Equal(t, "Password:", string(ch))
	assert.False(t, done)
	_, done, err = s.Next([]byte("pw"))
	require.NoError(t, err)
	assert.True(t, done)
	assert.Equal(t, [2]string{"alice", "pw"}, got)
	_, _, err = s.Next([]byte("more"))
	assert.Error(t, err)

	// AUTH LOGIN with the username as its initial response.
	s, err = saslServer(mechLogin, auth)
	require.NoError(t, err)
	ch, _, err = s.Next([]byte("bob"))
	require.NoError(t, err)
	assert.Equal(t, "Password:", string(ch))
	_, done, err = s.Next([]byte("pw2"))
	require.NoError(t, err)
	assert.True(t, done)
	assert.Equal(t, [2]string{"bob", "pw2"}, got)

	_, err = saslServer("CRAM-MD5", auth)
	assert.Equal(t, smtp.ErrAuthUnknownMechanism, err)
}

func TestPlainServerIdentity(t *testing.T) {
	s, err := saslServer(mechPlain, func(u, p string) error { return nil })
	require.NoError(t, err)
	_, _, err = s.Next([]byte("mallory\x00alice\x00pw"))
	assert.ErrorContains(t, err, "authorization identity must be the username")

	s, err = saslServer(mechPlain, func(u, p string) error { return nil })
	require.NoError(t, err)
	_, done, err := s.Next([]byte("alice\x00alice\x00pw"))
	assert.NoError(t, err)
	assert.True(t, done)
}

// slowComparer is a hash comparer that takes its time and records how
// many comparisons ran at once.
type slowComparer struct {
	caddyauth.Comparer
	delay         time.Duration
	mu            sync.Mutex
	running, most int
}

func (c *slowComparer) Compare(hashed, plaintext []byte) (bool, error) {
	c.mu.Lock()
	c.running++
	c.most = max(c.most, c.running)
	c.mu.Unlock()
	time.Sleep(c.delay)
	defer func() {
		c.mu.Lock()
		c.running--
		c.mu.Unlock()
	}()
	return c.Comparer.Compare(hashed, plaintext)
}

func TestAuthConcurrency(t *testing.T) {
	hash, err := bcrypt.GenerateFromPassword([]byte("s3cret"), bcrypt.MinCost)
	require.NoError(t, err)
	ctx, cancel := caddy.NewContext(caddy.Context{Context: t.Context()})
	defer cancel()
	a, err := newAuthenticator(ctx, &Handler{Users: []User{{Username: "alice", Password: string(hash)}}})
	require.NoError(t, err)
	slow := &slowComparer{Comparer: a.hash, delay: 100 * time.Millisecond}
	a.hash = slow

	slots := int(max(1, runtime.GOMAXPROCS(0)/2))
	var wg sync.WaitGroup
	for i := range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			client := netip.AddrFrom4([4]byte{192, 0, 2, byte(i)})
			assert.Equal(t, smtp.ErrAuthFailed, a.check(client, "alice", fmt.Sprint("wrong", i)))
		}()
	}
	wg.Wait()
	assert.Equal(t, slots, slow.most, "comparisons at once")

	// With every slot taken, a check waits authHashWait, then gives up
	// without comparing.
	require.NoError(t, hashSlots().Acquire(t.Context(), int64(slots)))
	n := a.throttle.compares.Load()
	start := time.Now()
	assert.Equal(t, errAuthBusy, a.check(netip.MustParseAddr("192.0.2.100"), "alice", "s3cret"))
	assert.InDelta(t, authHashWait.Seconds(), time.Since(start).Seconds(), 1)
	assert.Equal(t, n, a.throttle.compares.Load())
	hashSlots().Release(int64(slots))
	assert.NoError(t, a.check(netip.MustParseAddr("192.0.2.100"), "alice", "s3cret"))
}

func TestAuthThrottle(t *testing.T) {
	th := newAuthThrottle()
	client := clientKey(netip.MustParseAddr("2001:db8:1:2:3:4:5:6"))
	assert.Equal(t, netip.MustParsePrefix("2001:db8:1:2::/64"), client, "IPv6 clients are counted by /64")
	now := time.Unix(1_000_000, 0)
	for i := range authFreeFailures - 1 {
		th.fail(client, now)
		assert.Zero(t, th.lockedFor(client, now), "failure %d", i+1)
	}
	th.fail(client, now)
	assert.Equal(t, authLockout, th.lockedFor(client, now))
	assert.Zero(t, th.lockedFor(clientKey(netip.MustParseAddr("2001:db8:1:3::1")), now), "another /64")

	// Each failure after the free ones doubles the lockout, up to
	// authMaxLockout.
	want := authLockout
	for range 10 {
		now = now.Add(th.lockedFor(client, now))
		th.fail(client, now)
		want = min(2*want, authMaxLockout)
		assert.Equal(t, want, th.lockedFor(client, now))
	}
	// Forgotten authForgetAfter after the lockout ends.
	now = now.Add(authMaxLockout + authForgetAfter + time.Second)
	th.fail(client, now)
	assert.Zero(t, th.lockedFor(client, now), "a fresh start")

	// Bounded: the oldest record goes first.
	for i := range authMaxClients + 10 {
		th.fail(clientKey(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})), now.Add(time.Duration(i)))
	}
	assert.Len(t, th.failures, authMaxClients)
	assert.NotContains(t, th.failures, client)

	// The cache holds no password, and stays bounded.
	k := th.cacheKey("alice", "s3cret")
	assert.NotEqual(t, k, th.cacheKey("alice", "s3cres"))
	assert.NotEqual(t, k, th.cacheKey("alices", "3cret"), "the username's end is marked")
	for i := range authCacheSize + 5 {
		th.remember(th.cacheKey("u", fmt.Sprint(i)))
	}
	assert.LessOrEqual(t, len(th.cache), authCacheSize)
}
