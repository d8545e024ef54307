package mtasts

import (
	"encoding/json"
	"io/fs"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/modules/filestorage"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/seed7b014b84/caddy-smtp/internal/peertest"
)

// clock is a settable time for the cache, safe for concurrent use.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// fileStorage is Caddy's default storage (the file_system module, which
// is certmagic.FileStorage) in a temporary directory.
func fileStorage(t *testing.T) Storage {
	t.Helper()
	st, err := filestorage.FileStorage{Root: t.TempDir()}.CertMagicStorage()
	require.NoError(t, err)
	return st
}

// fetchCount is how many requests s_server has answered.
func fetchCount(l *lab) int {
	return strings.Count(l.https.Log(), "FILE:.well-known/mta-sts.txt")
}

// TestCache runs a Cache against Knot, unbound and s_server, through the
// life of a domain's policy: first fetch, reuse, restart, new id, failing
// discovery, refresh, withdrawal and expiry.
func TestCache(t *testing.T) {
	l := startLab(t)
	ctx := t.Context()
	st := fileStorage(t)
	clk := &clock{t: time.Now()}
	core, logs := observer.New(zap.WarnLevel)
	newCache := func(f *Fetcher) *Cache {
		c := NewCache(f, st, zap.New(core))
		c.clock = clk.Now
		return c
	}
	c := newCache(l.fetcher())
	const id1, id2 = "20261122T000000", "20261201T000000"

	t.Run("fetched once, then cached, and stored", func(t *testing.T) {
		n := fetchCount(l)
		p, status, err := c.Get(ctx, "Sts.Test.")
		require.NoError(t, err)
		assert.Equal(t, StatusFetched, status)
		assert.Equal(t, id1, p.ID)
		assert.Equal(t, clk.Now(), p.Fetched)
		assert.True(t, p.Matches("a.mx.sts.test"))

		again, status, err := c.Get(ctx, labDomain)
		require.NoError(t, err)
		assert.Equal(t, StatusCached, status)
		assert.Same(t, p, again)
		assert.Equal(t, n+1, fetchCount(l), "one fetch for two Gets")

		b, err := st.Load(ctx, "smtp/mta-sts/sts.test.json")
		require.NoError(t, err)
		var stored map[string]any
		require.NoError(t, json.Unmarshal(b, &stored))
		assert.Equal(t, id1, stored["id"])
		assert.Equal(t, "enforce", stored["mode"])
		assert.EqualValues(t, 86400, stored["max_age"])
	})
	t.Run("a new Cache on the same storage uses the stored policy (restart)", func(t *testing.T) {
		l.https.SetResponse(t, WellKnownPath, peertest.HTTPResponse(500, nil, nil))
		defer l.https.SetResponse(t, WellKnownPath, policyResponse(policyV1))
		n := fetchCount(l)
		p, status, err := newCache(l.fetcher()).Get(ctx, labDomain)
		require.NoError(t, err)
		assert.Equal(t, StatusCached, status)
		assert.Equal(t, id1, p.ID)
		assert.Equal(t, []string{"mx1.sts.test", "*.mx.sts.test"}, p.MX)
		assert.True(t, p.Fetched.Equal(clk.Now()))
		assert.Equal(t, n, fetchCount(l), "nothing fetched")
	})
	t.Run("a new id fetches the new policy, once for concurrent Gets", func(t *testing.T) {
		l.https.SetResponse(t, WellKnownPath, policyResponse(policyV2))
		l.knot.Reload(t, labDomain, labRecords(id2))
		n := fetchCount(l)
		var wg sync.WaitGroup
		got := make([]*Policy, 8)
		for i := range got {
			wg.Go(func() {
				p, _, err := c.Get(ctx, labDomain)
				assert.NoError(t, err)
				got[i] = p
			})
		}
		wg.Wait()
		for _, p := range got {
			require.NotNil(t, p)
			assert.Same(t, got[0], p)
		}
		assert.Equal(t, id2, got[0].ID)
		assert.Equal(t, ModeTesting, got[0].Mode)
		assert.Equal(t, []string{"mx2.sts.test"}, got[0].MX)
		assert.Equal(t, n+1, fetchCount(l))

		p, status, err := newCache(l.fetcher()).Get(ctx, labDomain)
		require.NoError(t, err)
		assert.Equal(t, StatusCached, status, "the new policy replaced the old one in storage")
		assert.Equal(t, id2, p.ID)
	})
	t.Run("a new id whose policy cannot be fetched keeps the cached one, stale", func(t *testing.T) {
		l.https.SetResponse(t, WellKnownPath, peertest.HTTPResponse(404, nil, nil))
		l.knot.Reload(t, labDomain, labRecords("20261202T000000"))
		p, status, err := c.Get(ctx, labDomain)
		require.NoError(t, err)
		assert.Equal(t, StatusStale, status)
		assert.Equal(t, id2, p.ID)
		entries := logs.FilterMessage("using the cached MTA-STS policy: new policy not fetched").All()
		require.Len(t, entries, 1)
		assert.Equal(t, "20261202T000000", entries[0].ContextMap()["new_id"])
		assert.Contains(t, entries[0].ContextMap()["error"], "404 Not Found")

		l.https.SetResponse(t, WellKnownPath, policyResponse(policyV2))
		l.knot.Reload(t, labDomain, labRecords(id2))
		_, status, err = c.Get(ctx, labDomain)
		require.NoError(t, err)
		assert.Equal(t, StatusCached, status, "back to the id of the cached policy")
	})
	t.Run("a failing TXT lookup uses the cached policy, stale", func(t *testing.T) {
		dead := l.fetcher()
		dead.DNS = deadDNS(t)
		p, status, err := newCache(dead).Get(ctx, labDomain)
		require.NoError(t, err)
		assert.Equal(t, StatusStale, status)
		assert.Equal(t, id2, p.ID)
		assert.NotEmpty(t, logs.FilterMessage("using the cached MTA-STS policy: TXT record not usable").All())

		p, status, err = NewCache(dead, nil, nil).Get(ctx, labDomain)
		assert.Nil(t, p)
		assert.Equal(t, StatusNone, status)
		require.Error(t, err, "nothing cached: the failure is the caller's to weigh")
		assert.True(t, IsTemporary(err), "%v", err)
	})
	t.Run("domains without a usable record have no policy", func(t *testing.T) {
		tests := []struct {
			domain string
			err    error // nil: no policy published, no error
		}{
			{"spf." + labDomain, nil},
			{"nosuch." + labDomain, nil},
			{"multi." + labDomain, ErrMultipleRecords},
			{"bad." + labDomain, ErrRecordSyntax},
			{"../" + labDomain, ErrDomain},
		}
		for _, tt := range tests {
			p, status, err := c.Get(ctx, tt.domain)
			assert.Nil(t, p, tt.domain)
			assert.Equal(t, StatusNone, status, tt.domain)
			if tt.err == nil {
				assert.NoError(t, err, tt.domain)
				continue
			}
			assert.ErrorIs(t, err, tt.err, tt.domain)
			assert.True(t, IsPermanent(err), tt.domain)
		}
		p, status, err := c.Get(ctx, "nohost."+labDomain)
		assert.Nil(t, p)
		assert.Equal(t, StatusNone, status)
		assert.ErrorContains(t, err, "mta-sts.nohost.sts.test", "a record without a policy host: the fetch's error")
	})
	t.Run("Refresh fetches a policy again once it is due", func(t *testing.T) {
		policyV3 := strings.Replace(policyV2, "mx2.sts.test", "mx3.sts.test", 1)
		l.https.SetResponse(t, WellKnownPath, policyResponse(policyV3))
		n := fetchCount(l)
		clk.Advance(RefreshAfter - time.Hour)
		require.NoError(t, c.Refresh(ctx))
		assert.Equal(t, n, fetchCount(l), "not due yet")

		clk.Advance(2 * time.Hour)
		require.NoError(t, c.Refresh(ctx))
		assert.Equal(t, n+1, fetchCount(l))
		p, status, err := newCache(l.fetcher()).Get(ctx, labDomain)
		require.NoError(t, err)
		assert.Equal(t, StatusCached, status)
		assert.Equal(t, []string{"mx3.sts.test"}, p.MX, "the refreshed policy was stored")
		assert.True(t, p.Fetched.Equal(clk.Now()), "its max_age starts again")
	})
	t.Run("Refresh keeps a policy whose host fails, and says why", func(t *testing.T) {
		l.https.SetResponse(t, WellKnownPath, peertest.HTTPResponse(503, nil, nil))
		defer l.https.SetResponse(t, WellKnownPath, policyResponse(policyV2))
		clk.Advance(RefreshAfter)
		err := c.Refresh(ctx)
		assert.ErrorContains(t, err, "503 Service Unavailable")
		p, status, err := c.Get(ctx, labDomain)
		require.NoError(t, err)
		assert.Equal(t, StatusCached, status)
		assert.Equal(t, []string{"mx3.sts.test"}, p.MX)
	})
	t.Run("a withdrawn record leaves the cached policy in use until it expires", func(t *testing.T) {
		l.knot.Reload(t, labDomain, labRecords(""))
		p, status, err := c.Get(ctx, labDomain)
		require.NoError(t, err)
		assert.Equal(t, StatusStale, status)
		require.NotNil(t, p)
		assert.NoError(t, c.Refresh(ctx), "no record: nothing to refresh, nothing wrong")

		clk.Advance(p.MaxAge)
		p, status, err = c.Get(ctx, labDomain)
		assert.Nil(t, p)
		assert.Equal(t, StatusNone, status)
		assert.NoError(t, err)
		require.NoError(t, c.Refresh(ctx))
		_, err = st.Load(ctx, "smtp/mta-sts/sts.test.json")
		assert.ErrorIs(t, err, fs.ErrNotExist, "Refresh deleted the expired policy")
	})
}

// TestCacheMemoryOnly checks that a cache without storage works, and that
// a policy with max_age 0 is used once and never from the cache.
func TestCacheMemoryOnly(t *testing.T) {
	l := startLab(t)
	ctx := t.Context()
	l.https.SetResponse(t, WellKnownPath, policyResponse("version: STSv1\nmode: enforce\nmx: mx1.sts.test\nmax_age: 0\n"))
	c := NewCache(l.fetcher(), nil, nil)
	for range 2 {
		p, status, err := c.Get(ctx, labDomain)
		require.NoError(t, err)
		assert.Equal(t, StatusFetched, status)
		assert.True(t, p.Matches("mx1.sts.test"))
	}
	assert.Equal(t, 2, fetchCount(l))
	require.NoError(t, c.Refresh(ctx))
}
