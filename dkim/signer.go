package dkim

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
)

// TXTResolver looks up TXT records, each with its strings joined. The
// smtp app's resolver is one, through TXTResolverFunc:
//
//	dkim.TXTResolverFunc(func(ctx context.Context, name string) ([]string, error) {
//		res, err := r.LookupTXT(ctx, name)
//		if err != nil {
//			return nil, err
//		}
//		return res.Records, nil
//	})
type TXTResolver interface {
	LookupTXT(ctx context.Context, name string) ([]string, error)
}

// TXTResolverFunc is a function that is a TXTResolver.
type TXTResolverFunc func(ctx context.Context, name string) ([]string, error)

// LookupTXT calls f.
func (f TXTResolverFunc) LookupTXT(ctx context.Context, name string) ([]string, error) {
	return f(ctx, name)
}

// Options are a Signer's settings besides its signers.
type Options struct {
	// Choose picks the domains a message is signed as. Default: the From
	// field's domain, when it has signers (the signature then aligns with
	// From for DMARC).
	Choose ChooseFunc

	// Resolver tells whether a key's record resolves: a published key
	// signs, and a rotation switches to its new key, only once it does.
	// Required by Start.
	Resolver TXTResolver

	// Nameservers ("IP:port"; "udp://" and "tcp://" prefixes are dropped)
	// are asked for the SOA that tells which zone a published record goes
	// into, when PublishConfig.Zone is not set. Default: the system's.
	Nameservers []string

	// Logger logs key making, publication and rotation. Default: none.
	Logger *zap.Logger

	// MaxHeaderBytes bounds the header section held to sign a message;
	// a message with a bigger one is not signed. Default:
	// DefaultMaxHeaderBytes (1 MiB).
	MaxHeaderBytes int

	// CheckInterval is how often records are published and checked, and
	// the rotation state is read again from storage (to follow a rotation
	// made by another instance). Default: 1m.
	CheckInterval time.Duration

	// RetireAfter is how long a replaced key's record stays in DNS after
	// the switch, so that mail signed with it and still in queues
	// verifies. Default: 7 days.
	RetireAfter time.Duration

	// Now is the clock. Default: time.Now.
	Now func() time.Time
}

// Signer signs messages with the keys of its signers, and owns those keys:
// it makes them, publishes them when a signer says so, and rotates them.
// It is safe for concurrent use.
type Signer struct {
	opts     Options
	log      *zap.Logger
	keys     *Keys
	signers  []*signerConf
	byDomain map[string][]*signerConf
	fileKeys map[*signerConf]*Key

	view atomic.Pointer[view]

	mu        sync.Mutex
	cancel    context.CancelFunc
	done      chan struct{}
	wake      chan struct{}
	published map[string]time.Time // by record name + " " + public key: when set
	warned    map[string]bool      // records already logged as not resolving
}

// NewSigner checks the signers' configs and returns their Signer. Keys
// from files are read now; keys in storage are loaded, or made, by Start,
// Records and Rotate.
func NewSigner(cfgs []Config, keys *Keys, o Options) (*Signer, error) {
	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}
	if o.MaxHeaderBytes <= 0 {
		o.MaxHeaderBytes = DefaultMaxHeaderBytes
	}
	if o.CheckInterval <= 0 {
		o.CheckInterval = time.Minute
	}
	if o.RetireAfter <= 0 {
		o.RetireAfter = 7 * 24 * time.Hour
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	s := &Signer{
		opts:      o,
		log:       o.Logger,
		keys:      keys,
		byDomain:  map[string][]*signerConf{},
		fileKeys:  map[*signerConf]*Key{},
		wake:      make(chan struct{}, 1),
		published: map[string]time.Time{},
		warned:    map[string]bool{},
	}
	for i, c := range cfgs {
		sc, err := c.check(i)
		if err != nil {
			return nil, err
		}
		for _, o := range s.byDomain[sc.domain] {
			if o.selector == sc.selector {
				return nil, fmt.Errorf("dkim[%d]: selector %q: domain %s has it twice", i, sc.selector, sc.domain)
			}
		}
		if sc.file != "" {
			k, err := keys.Get(context.Background(), KeySpec{Domain: sc.domain, Selector: sc.selector, Algorithm: sc.algorithm, File: sc.file})
			if err != nil {
				return nil, fmt.Errorf("dkim[%d]: %w", i, err)
			}
			sc.algorithm = k.Algorithm
			s.fileKeys[sc] = k
		}
		s.signers = append(s.signers, sc)
		s.byDomain[sc.domain] = append(s.byDomain[sc.domain], sc)
	}
	s.view.Store(s.buildView(nil))
	return s, nil
}

// Domains returns the domains that have signers, sorted.
func (s *Signer) Domains() []string {
	var out []string
	for d := range s.byDomain {
		out = append(out, d)
	}
	sort.Strings(out)
	return out
}

// Start loads (or makes) the keys that sign, and starts the background
// work: publishing records, checking that they resolve, switching a
// rotation to its new key, removing retired records. Stop ends it.
func (s *Signer) Start(ctx context.Context) error {
	if s.opts.Resolver == nil {
		return errors.New("dkim: no resolver to check key records")
	}
	if err := s.sync(ctx); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cancel != nil {
		return nil
	}
	lctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	s.cancel, s.done = cancel, make(chan struct{})
	go s.loop(lctx, s.done)
	return nil
}

// Stop ends the background work and waits for it.
func (s *Signer) Stop() {
	s.mu.Lock()
	cancel, done := s.cancel, s.done
	s.cancel, s.done = nil, nil
	s.mu.Unlock()
	if cancel != nil {
		cancel()
		<-done
	}
}

func (s *Signer) loop(ctx context.Context, done chan struct{}) {
	defer close(done)
	t := time.NewTicker(s.opts.CheckInterval)
	defer t.Stop()
	for {
		s.maintain(ctx)
		if err := s.sync(ctx); err != nil && ctx.Err() == nil {
			s.log.Error("dkim: reading keys and rotation state", zap.Error(err))
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-s.wake:
		}
	}
}

// sync reads the rotation state and the keys it names, and makes the
// view of what signs.
func (s *Signer) sync(ctx context.Context) error {
	states := map[string]*rotationState{}
	for d := range s.byDomain {
		st, err := s.loadState(ctx, d)
		if err != nil {
			return err
		}
		states[d] = st
	}
	v, err := s.keysView(ctx, states)
	if err != nil {
		return err
	}
	s.view.Store(v)
	return nil
}

// keysView gets the current key of every signer and builds the view.
func (s *Signer) keysView(ctx context.Context, states map[string]*rotationState) (*view, error) {
	current := map[*signerConf]*currentKey{}
	for _, sc := range s.signers {
		if k := s.fileKeys[sc]; k != nil {
			current[sc] = &currentKey{key: k, ready: true}
			continue
		}
		e := states[sc.domain].entry(sc)
		k, err := s.keys.Get(ctx, KeySpec{Domain: sc.domain, Selector: e.Current, Algorithm: sc.algorithm})
		if err != nil {
			return nil, err
		}
		// A published key signs once its record resolves; a key
		// published by hand signs at once (a signature whose key is not
		// found counts as none, RFC 6376 section 6.1, and mail retried
		// after the record appears verifies).
		current[sc] = &currentKey{key: k, ready: sc.publish == nil || !e.Resolved.IsZero()}
	}
	return s.buildView(current), nil
}

type currentKey struct {
	key   *Key
	ready bool
}

// buildView makes the view from the current keys (nil before Start: the
// keys from files only).
func (s *Signer) buildView(current map[*signerConf]*currentKey) *view {
	v := &view{domains: map[string]*domainView{}}
	for _, sc := range s.signers {
		ck := current[sc]
		if ck == nil {
			if k := s.fileKeys[sc]; k != nil {
				ck = &currentKey{key: k, ready: true}
			} else {
				continue
			}
		}
		dv := v.domains[sc.domain]
		if dv == nil {
			dv = &domainView{}
			v.domains[sc.domain] = dv
		}
		if ck.ready {
			dv.keys = append(dv.keys, signingKeyFor(ck.key, sc))
		} else {
			dv.waiting = append(dv.waiting, strings.TrimSuffix(ck.key.Name(), "."))
		}
	}
	return v
}

// Rotate starts a rotation of every signer of domain: it makes the next
// key under a new selector (SELECTOR-YYYYMMDD, from the configured
// selector and today's date in UTC), records it in the rotation state,
// publishes its record when the signer has a DNS provider, and returns
// the new records. A running Signer (here or in any instance on the same
// storage) switches to the new key once its record resolves, and keeps
// the old record for RetireAfter after the switch. A rotation already
// under way is not restarted: its record is returned again. Signers
// with a key file cannot be rotated.
func (s *Signer) Rotate(ctx context.Context, domain string) ([]Record, error) {
	d, err := normalizeDomain(domain)
	if err != nil {
		return nil, fmt.Errorf("dkim rotate %q: %w", domain, err)
	}
	scs := s.byDomain[d]
	if len(scs) == 0 {
		return nil, fmt.Errorf("dkim rotate: no signer for domain %s", d)
	}
	var rotating []*signerConf
	var errs []error
	for _, sc := range scs {
		if sc.file != "" {
			errs = append(errs, fmt.Errorf("dkim rotate %s: selector %s: its key is the file %s: rotate it by hand (new file, new selector)", d, sc.selector, sc.file))
			continue
		}
		rotating = append(rotating, sc)
	}
	if len(rotating) == 0 {
		return nil, errors.Join(errs...)
	}
	now := s.opts.Now().UTC()
	var next []*Key
	err = s.updateState(ctx, d, func(st *rotationState) (bool, error) {
		next = next[:0]
		changed := false
		for _, sc := range rotating {
			e := st.entry(sc)
			if e.Next == "" {
				e.Next = nextSelector(sc.selector, now, e)
				e.Rotated = now
				changed = true
			}
			k, err := s.keys.Get(ctx, KeySpec{Domain: d, Selector: e.Next, Algorithm: sc.algorithm})
			if err != nil {
				return false, err
			}
			st.Signers[sc.selector] = e
			next = append(next, k)
		}
		return changed, nil
	})
	if err != nil {
		return nil, err
	}
	var recs []Record
	for i, k := range next {
		r := k.Record()
		r.Role = RoleNext
		recs = append(recs, r)
		s.log.Info("dkim rotation started", zap.String("domain", d), zap.String("selector", k.Selector),
			zap.String("record", r.ZoneLine()))
		if sc := rotating[i]; sc.publish != nil {
			if err := s.publish(ctx, sc, k); err != nil {
				s.log.Warn("dkim: publishing rotated key (retried in the background)", zap.String("record", r.Name), zap.Error(err))
			}
		}
	}
	select {
	case s.wake <- struct{}{}:
	default:
	}
	return recs, errors.Join(errs...)
}

// nextSelector names a rotation's key: BASE-YYYYMMDD, with -2, -3, ...
// when the state already used that name (two rotations in a day).
func nextSelector(base string, now time.Time, e *signerState) string {
	used := map[string]bool{e.Current: true, e.Next: true, base: true}
	for _, r := range e.Retired {
		used[r.Selector] = true
	}
	name := base + "-" + now.Format("20060102")
	cand := name
	for i := 2; used[cand]; i++ {
		cand = fmt.Sprintf("%s-%d", name, i)
	}
	return cand
}

// Records returns the TXT records that the domain's signers need in DNS
// now: the current keys' (made if they do not exist yet, so that a record
// can be published before Caddy first signs), a rotation's next keys',
// and the retired keys' still kept. Domain "" is every domain. This is
// what caddy smtp-dkim prints, with Record.ZoneLine.
func (s *Signer) Records(ctx context.Context, domain string) ([]Record, error) {
	domains := s.Domains()
	if domain != "" {
		d, err := normalizeDomain(domain)
		if err != nil {
			return nil, fmt.Errorf("dkim records %q: %w", domain, err)
		}
		if len(s.byDomain[d]) == 0 {
			return nil, fmt.Errorf("dkim records: no signer for domain %s", d)
		}
		domains = []string{d}
	}
	var recs []Record
	for _, d := range domains {
		st, err := s.loadState(ctx, d)
		if err != nil {
			return nil, err
		}
		for _, sc := range s.byDomain[d] {
			if k := s.fileKeys[sc]; k != nil {
				recs = append(recs, k.Record())
				continue
			}
			e := st.entry(sc)
			k, err := s.keys.Get(ctx, KeySpec{Domain: d, Selector: e.Current, Algorithm: sc.algorithm})
			if err != nil {
				return nil, err
			}
			recs = append(recs, k.Record())
			if e.Next != "" {
				k, err := s.keys.Get(ctx, KeySpec{Domain: d, Selector: e.Next, Algorithm: sc.algorithm})
				if err != nil {
					return nil, err
				}
				r := k.Record()
				r.Role = RoleNext
				recs = append(recs, r)
			}
			for _, old := range e.Retired {
				k, err := s.keys.Load(ctx, d, old.Selector)
				if err != nil {
					continue
				}
				r := k.Record()
				r.Role = RoleRetired
				recs = append(recs, r)
			}
		}
	}
	return recs, nil
}
