package resolver

import (
	"crypto/x509"
	"encoding/json"
	"fmt"
	"sync/atomic"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"
	"golang.org/x/sync/singleflight"
)

// Resolver answers the DNS questions of mail delivery. It is safe for
// concurrent use.
type Resolver struct {
	s     *settings
	sem   chan struct{} // bounds queries in flight
	cache *cache
	group singleflight.Group
	next  atomic.Uint32 // round robin over servers
	log   atomic.Pointer[zap.Logger]
	// rootCAs verifies DNS-over-TLS servers; nil is the system's roots.
	rootCAs *x509.CertPool
}

// New returns a resolver for cfg, unshared. path is the config key, for
// errors. Most callers want Get, which shares resolvers across reloads.
func New(cfg Config, path string) (*Resolver, error) {
	s, err := cfg.settings(path)
	if err != nil {
		return nil, err
	}
	r := &Resolver{
		s:     s,
		sem:   make(chan struct{}, s.maxInFlight),
		cache: newCache(s.cacheSize),
	}
	r.log.Store(zap.NewNop())
	return r, nil
}

// SetLogger sets where failures are logged: the logger of the app that
// uses the resolver now (after a reload, the new app's).
func (r *Resolver) SetLogger(l *zap.Logger) { r.log.Store(l) }

func (r *Resolver) logger() *zap.Logger { return r.log.Load() }

// Servers returns the servers asked, as strings ("udp://127.0.0.1:53").
func (r *Resolver) Servers() []string {
	out := make([]string, len(r.s.servers))
	for i, s := range r.s.servers {
		out[i] = s.String()
	}
	return out
}

// TrustsAD reports whether the resolver believes the servers' AD bit.
func (r *Resolver) TrustsAD() bool { return r.s.trustAD }

// CacheLen returns how many answers the cache holds.
func (r *Resolver) CacheLen() int { return r.cache.len() }

// Destruct implements caddy.Destructor: the pool calls it when the last
// config using the resolver is unloaded. A resolver holds no connections
// between queries, so there is nothing to close.
func (r *Resolver) Destruct() error { return nil }

// pool shares resolvers, and so their caches, across config reloads: two
// configs with the same resolver settings get the same Resolver.
var pool = caddy.NewUsagePool()

// Get returns the shared resolver for cfg, making it on first use. Call
// the returned release when the config that asked is unloaded (in the
// app's Cleanup).
func Get(cfg Config, path string) (r *Resolver, release func(), err error) {
	key, err := json.Marshal(cfg)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", path, err)
	}
	val, _, err := pool.LoadOrNew(string(key), func() (caddy.Destructor, error) {
		return New(cfg, path)
	})
	if err != nil {
		return nil, nil, err
	}
	release = func() { _, _ = pool.Delete(string(key)) }
	return val.(*Resolver), release, nil
}

// Interface guards
var _ caddy.Destructor = (*Resolver)(nil)
