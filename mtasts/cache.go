package mtasts

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"sync"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sync/singleflight"

	"github.com/seed7b014b84/caddy-smtp/resolver"
)

// Status says where a policy handed out by Cache.Get comes from.
type Status int

// The statuses of Cache.Get.
const (
	// StatusNone: there is no usable policy; deliver as without MTA-STS.
	StatusNone Status = iota
	// StatusFetched: the policy was fetched just now (the TXT record's id
	// was new, or nothing usable was cached).
	StatusFetched
	// StatusCached: the cached policy is current (the TXT record's id is
	// the one it was fetched under, and it has not expired).
	StatusCached
	// StatusStale: the cached policy could not be confirmed (the TXT
	// lookup failed, the record is gone, or its id changed and the new
	// policy could not be fetched) and is used until it expires, as RFC
	// 8461, section 5.1 has senders do.
	StatusStale
)

func (s Status) String() string {
	switch s {
	case StatusFetched:
		return "fetched"
	case StatusCached:
		return "cached"
	case StatusStale:
		return "stale"
	}
	return "none"
}

// MarshalText writes the status's name, for logs and JSON reports.
func (s Status) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// Cache discovers and keeps the policies of recipient domains: in memory,
// and in a Storage so that they outlive a restart. It is safe for
// concurrent use; make it with NewCache.
type Cache struct {
	fetcher *Fetcher
	storage Storage
	log     *zap.Logger
	clock   func() time.Time // time.Now; tests move it

	mu  sync.Mutex
	mem map[string]*Policy // by domain; a nil value: not in storage either

	fetches singleflight.Group
}

// NewCache returns a cache that discovers policies with f (its DNS for
// the TXT records) and keeps them in storage, which may be nil to keep
// them in memory only. log gets what Get cannot return, such as why a
// stale policy was used; nil logs nothing.
func NewCache(f *Fetcher, storage Storage, log *zap.Logger) *Cache {
	if log == nil {
		log = zap.NewNop()
	}
	return &Cache{fetcher: f, storage: storage, log: log, clock: time.Now, mem: map[string]*Policy{}}
}

// Get returns the policy to apply to mail for domain, following RFC 8461,
// sections 3 and 5.1:
//
//   - it looks up the TXT record of _mta-sts.DOMAIN;
//   - when its id is the one of a cached, unexpired policy, that policy is
//     used (StatusCached);
//   - when the id is new, or nothing usable is cached, the policy is
//     fetched, cached and used (StatusFetched); concurrent Gets of one
//     domain share one fetch;
//   - when the lookup fails, the record is gone or malformed, or the new
//     policy cannot be fetched, a cached unexpired policy is used all the
//     same (StatusStale), and the reason is logged;
//   - otherwise there is no policy (StatusNone).
//
// With StatusNone, a nil error means the domain publishes no policy, and
// an *Error says why discovery failed: RFC 8461 has the sender deliver
// without MTA-STS either way, but a temporary error may justify deferring
// instead. A policy in mode none is returned like any other: the caller
// applies its mode.
func (c *Cache) Get(ctx context.Context, domain string) (*Policy, Status, error) {
	domain, err := normalizeDomain(domain)
	if err != nil {
		return nil, StatusNone, err
	}
	cached := c.cached(ctx, domain)
	if cached != nil && cached.Expired(c.clock()) {
		cached = nil
	}
	rec, err := c.lookupRecord(ctx, domain)
	if err != nil {
		if cached != nil {
			c.log.Warn("using the cached MTA-STS policy: TXT record not usable",
				zap.String("domain", domain), zap.String("id", cached.ID), zap.Time("expires", cached.Expires()), zap.Error(err))
			return cached, StatusStale, nil
		}
		if errors.Is(err, ErrNoRecord) {
			return nil, StatusNone, nil
		}
		return nil, StatusNone, err
	}
	if cached != nil && cached.ID == rec.ID {
		return cached, StatusCached, nil
	}
	p, err := c.fetch(ctx, domain, rec.ID, false)
	if err != nil {
		if cached != nil {
			c.log.Warn("using the cached MTA-STS policy: new policy not fetched",
				zap.String("domain", domain), zap.String("id", cached.ID), zap.String("new_id", rec.ID),
				zap.Time("expires", cached.Expires()), zap.Error(err))
			return cached, StatusStale, nil
		}
		return nil, StatusNone, err
	}
	return p, StatusFetched, nil
}

// lookupRecord looks up and selects the domain's STSv1 TXT record. No
// record at all (NXDOMAIN, no TXT, no STSv1 one) is ErrNoRecord;
// multiple or malformed records are permanent errors; a failed lookup is
// the resolver's error, with its kind.
func (c *Cache) lookupRecord(ctx context.Context, domain string) (*Record, error) {
	res, err := c.fetcher.DNS.LookupTXT(ctx, "_mta-sts."+domain)
	if err != nil {
		if errors.Is(err, resolver.ErrNXDomain) || errors.Is(err, resolver.ErrNoData) {
			return nil, permanent(domain, fmt.Errorf("%w: %w", ErrNoRecord, err))
		}
		kind := resolver.Temporary
		if resolver.IsPermanent(err) {
			kind = resolver.Permanent
		}
		return nil, &Error{Domain: domain, Kind: kind, Err: err}
	}
	rec, err := SelectRecord(res.Records)
	if err != nil {
		return nil, permanent(domain, err)
	}
	return rec, nil
}

// fetch fetches the domain's policy under the TXT record id, and caches
// it. Callers for the same domain and id share one fetch; each stops
// waiting when its own ctx ends, while the fetch goes on (bounded by the
// Fetcher's timeout) for the others and for the cache. Unless force is
// set, a policy that another fetch cached for that id meanwhile is
// returned instead of fetching again.
func (c *Cache) fetch(ctx context.Context, domain, id string, force bool) (*Policy, error) {
	key := domain + " " + id
	if force {
		key += " refresh"
	}
	ch := c.fetches.DoChan(key, func() (any, error) {
		if !force {
			c.mu.Lock()
			cur := c.mem[domain]
			c.mu.Unlock()
			if cur != nil && cur.ID == id && !cur.Expired(c.clock()) {
				return cur, nil
			}
		}
		fctx := context.WithoutCancel(ctx)
		started := c.clock()
		p, err := c.fetcher.Fetch(fctx, domain)
		if err != nil {
			return nil, err
		}
		p.ID, p.Fetched = id, started
		c.put(fctx, domain, p)
		return p, nil
	})
	select {
	case r := <-ch:
		if r.Err != nil {
			return nil, r.Err
		}
		return r.Val.(*Policy), nil
	case <-ctx.Done():
		return nil, temporary(domain, ctx.Err())
	}
}

// cached returns the domain's cached policy, expired or not, from memory
// or, the first time a domain is asked for, from storage.
func (c *Cache) cached(ctx context.Context, domain string) *Policy {
	c.mu.Lock()
	p, ok := c.mem[domain]
	c.mu.Unlock()
	if ok {
		return p
	}
	p = c.load(ctx, domain)
	c.mu.Lock()
	defer c.mu.Unlock()
	if cur, ok := c.mem[domain]; ok {
		return cur // a fetch stored one meanwhile
	}
	c.mem[domain] = p
	return p
}

// load reads a policy from storage; nil when there is none or it cannot
// be read (which is logged: a cache that cannot be read is an empty one).
func (c *Cache) load(ctx context.Context, domain string) *Policy {
	if c.storage == nil {
		return nil
	}
	b, err := c.storage.Load(ctx, storageKey(domain))
	if err != nil {
		if !errors.Is(err, fs.ErrNotExist) {
			c.log.Error("loading a cached MTA-STS policy", zap.String("domain", domain), zap.Error(err))
		}
		return nil
	}
	p, err := decodePolicy(domain, b)
	if err != nil {
		c.log.Error("ignoring an invalid cached MTA-STS policy", zap.String("domain", domain),
			zap.String("key", storageKey(domain)), zap.Error(err))
		return nil
	}
	return p
}

// put caches a policy in memory and in storage. A storage failure is
// logged: the policy is still used, and kept in memory.
func (c *Cache) put(ctx context.Context, domain string, p *Policy) {
	c.mu.Lock()
	c.mem[domain] = p
	c.mu.Unlock()
	if c.storage == nil {
		return
	}
	b, err := encodePolicy(domain, p)
	if err == nil {
		err = c.storage.Store(ctx, storageKey(domain), b)
	}
	if err != nil {
		c.log.Error("storing an MTA-STS policy", zap.String("domain", domain), zap.Error(err))
	}
}

// forget drops a domain's policy from memory and storage.
func (c *Cache) forget(ctx context.Context, domain string) error {
	c.mu.Lock()
	c.mem[domain] = nil
	c.mu.Unlock()
	if c.storage == nil {
		return nil
	}
	if err := c.storage.Delete(ctx, storageKey(domain)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("deleting expired MTA-STS policy of %s: %w", domain, err)
	}
	return nil
}
