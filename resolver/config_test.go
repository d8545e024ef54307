package resolver

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestSettings(t *testing.T) {
	conf := filepath.Join(t.TempDir(), "resolv.conf")
	require.NoError(t, os.WriteFile(conf, []byte("nameserver 127.0.0.53\nnameserver 192.0.2.53\noptions timeout:3 attempts:4\n"), 0o644))
	old := resolvConfPath
	resolvConfPath = conf
	t.Cleanup(func() { resolvConfPath = old })
	no := false

	tests := []struct {
		name     string
		cfg      Config
		servers  []string
		trustAD  bool
		timeout  time.Duration
		attempts int
	}{
		{"system by default", Config{}, []string{"udp://127.0.0.53:53", "udp://192.0.2.53:53"}, false, 3 * time.Second, 4},
		{"loopback is trusted", Config{Servers: []string{"udp://127.0.0.1:5353", "tcp://[::1]"}}, []string{"udp://127.0.0.1:5353", "tcp://[::1]:53"}, true, 5 * time.Second, 2},
		{"remote is not", Config{Servers: []string{"udp://192.0.2.1"}}, []string{"udp://192.0.2.1:53"}, false, 5 * time.Second, 2},
		{"trust_ad overrides", Config{Servers: []string{"udp://127.0.0.1"}, TrustAD: &no}, []string{"udp://127.0.0.1:53"}, false, 5 * time.Second, 2},
		{"dot preset is trusted", Config{Servers: []string{"quad9-tls"}}, []string{"tls://9.9.9.9:853#dns.quad9.net", "tls://149.112.112.112:853#dns.quad9.net"}, true, 5 * time.Second, 2},
		{"udp preset is not", Config{Servers: []string{"google"}, Timeout: caddy.Duration(time.Second), Attempts: 1}, []string{"udp://8.8.8.8:53", "udp://8.8.4.4:53", "udp://[2001:4860:4860::8888]:53"}, false, time.Second, 1},
		{"tls default port", Config{Servers: []string{"tls://127.0.0.1#dns.example"}}, []string{"tls://127.0.0.1:853#dns.example"}, true, 5 * time.Second, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := tt.cfg.settings("resolver")
			require.NoError(t, err)
			var got []string
			for _, srv := range s.servers {
				got = append(got, srv.String())
			}
			assert.Equal(t, tt.servers, got)
			assert.Equal(t, tt.trustAD, s.trustAD)
			assert.Equal(t, tt.timeout, s.timeout)
			assert.Equal(t, tt.attempts, s.attempts)
			assert.True(t, s.tcpOnError)
			assert.Equal(t, defaultCacheSize, s.cacheSize)
		})
	}
}

func TestSettingsErrors(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		want string
	}{
		{"bad scheme", Config{Servers: []string{"https://127.0.0.1"}}, `resolver.servers[0]: "https://127.0.0.1": unknown scheme "https"`},
		{"not a url", Config{Servers: []string{"127.0.0.1"}}, "resolver.servers[0]"},
		{"host name", Config{Servers: []string{"udp://dns.example:53"}}, "not an IP address"},
		{"tls without name", Config{Servers: []string{"tls://127.0.0.1:853"}}, "tls needs the server's certificate name"},
		{"name on udp", Config{Servers: []string{"udp://127.0.0.1#x"}}, "only for tls://"},
		{"bad port", Config{Servers: []string{"udp://127.0.0.1:0"}}, "out of range"},
		{"path", Config{Servers: []string{"udp://127.0.0.1:53/x"}}, "scheme://IP:PORT only"},
		{"attempts", Config{Servers: []string{"udp://127.0.0.1"}, Attempts: -1}, "resolver.attempts: -1 is below 1"},
		{"timeout", Config{Servers: []string{"udp://127.0.0.1"}, Timeout: -1}, "resolver.timeout: negative"},
		{"in flight", Config{Servers: []string{"udp://127.0.0.1"}, MaxInFlight: -5}, "resolver.max_in_flight"},
		{"cache size", Config{Servers: []string{"udp://127.0.0.1"}, Cache: &CacheConfig{Size: -2}}, "resolver.cache.size"},
		{"ttl order", Config{Servers: []string{"udp://127.0.0.1"}, Cache: &CacheConfig{MinTTL: caddy.Duration(time.Hour), MaxTTL: caddy.Duration(time.Minute)}}, "resolver.cache.max_ttl"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := tt.cfg.settings("resolver")
			require.Error(t, err)
			assert.Contains(t, err.Error(), tt.want)
		})
	}
}

func TestCacheLRUAndTTL(t *testing.T) {
	c := newCache(2)
	t0 := time.Unix(1000, 0)
	k := func(n string) cacheKey { return cacheKey{name: n, qtype: 1} }
	c.put(k("a."), &answer{name: "a."}, 10*time.Second, t0)
	c.put(k("b."), &answer{name: "b."}, 10*time.Second, t0)
	_, ok := c.get(k("a."), t0) // a is now the most recently used
	require.True(t, ok)
	c.put(k("c."), &answer{name: "c."}, 10*time.Second, t0)
	_, ok = c.get(k("b."), t0)
	assert.False(t, ok, "b was the least recently used and is gone")
	_, ok = c.get(k("a."), t0.Add(9*time.Second))
	assert.True(t, ok)
	_, ok = c.get(k("a."), t0.Add(10*time.Second))
	assert.False(t, ok, "expired at its TTL")
	c.put(k("z."), &answer{}, 0, t0)
	_, ok = c.get(k("z."), t0)
	assert.False(t, ok, "a zero TTL is not kept")
	assert.Nil(t, newCache(-1), "size -1 is no cache")
	var none *cache
	none.put(k("a."), &answer{}, time.Hour, t0)
	_, ok = none.get(k("a."), t0)
	assert.False(t, ok)
}
