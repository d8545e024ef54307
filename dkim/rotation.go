package dkim

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"strings"
	"time"

	"go.uber.org/zap"
)

// rotationState is the file smtp/dkim/<domain>/_rotation.json: which key
// of each of the domain's signers signs, and where a rotation is. Every
// instance on the storage reads it each CheckInterval and follows it; it
// is changed only under the storage lock "smtp_dkim_<domain>", read again
// after taking the lock. A signer without an entry signs with its
// configured selector. Example:
//
//	{
//		"signers": {
//			"s1": {
//				"current": "s1-20250601",
//				"resolved": "2025-06-01T10:02:00Z",
//				"next": "s1-20250901",
//				"rotated": "2025-09-01T08:00:00Z",
//				"retired": [{"selector": "s1", "until": "2025-06-08T10:02:00Z"}]
//			}
//		}
//	}
//
// (The leading underscore keeps the name apart from the selectors'
// folders: a selector cannot hold one.)
type rotationState struct {
	// Signers are the domain's signers, by configured selector.
	Signers map[string]*signerState `json:"signers"`
}

// signerState is one signer's entry in the rotation state.
type signerState struct {
	// Current is the selector that signs.
	Current string `json:"current"`
	// Resolved is when Current's record was first seen in DNS; zero when
	// not yet. A signer that publishes its records signs only once it is
	// set.
	Resolved time.Time `json:"resolved,omitzero"`
	// Next is the selector a rotation made, which becomes Current once its
	// record resolves; "" when no rotation is under way.
	Next string `json:"next,omitempty"`
	// Rotated is when Next was made.
	Rotated time.Time `json:"rotated,omitzero"`
	// Retired are the selectors that rotations replaced, whose records
	// stay in DNS until Until (the switch plus RetireAfter); then a
	// publishing signer removes the record, and the entry goes.
	Retired []retiredKey `json:"retired,omitempty"`
}

type retiredKey struct {
	Selector string    `json:"selector"`
	Until    time.Time `json:"until"`
}

// entry returns a copy of sc's entry, or the default one.
func (st *rotationState) entry(sc *signerConf) *signerState {
	if e := st.Signers[sc.selector]; e != nil && e.Current != "" {
		c := *e
		c.Retired = append([]retiredKey(nil), e.Retired...)
		return &c
	}
	return &signerState{Current: sc.selector}
}

func stateKey(domain string) string  { return "smtp/dkim/" + domain + "/_rotation.json" }
func stateLock(domain string) string { return "smtp_dkim_" + domain }

// loadState reads a domain's rotation state; none is an empty state.
func (s *Signer) loadState(ctx context.Context, domain string) (*rotationState, error) {
	st := &rotationState{Signers: map[string]*signerState{}}
	data, err := s.keys.storage.Load(ctx, stateKey(domain))
	if errors.Is(err, fs.ErrNotExist) {
		return st, nil
	}
	if err != nil {
		return nil, fmt.Errorf("dkim %s: loading %s: %w", domain, stateKey(domain), err)
	}
	if err := json.Unmarshal(data, st); err != nil {
		return nil, fmt.Errorf("dkim %s: %s: %w", domain, stateKey(domain), err)
	}
	if st.Signers == nil {
		st.Signers = map[string]*signerState{}
	}
	return st, nil
}

// updateState changes a domain's rotation state under the storage lock:
// it reads the state, calls change, and stores the state if change says
// it changed.
func (s *Signer) updateState(ctx context.Context, domain string, change func(*rotationState) (bool, error)) error {
	lock := stateLock(domain)
	if err := s.keys.storage.Lock(ctx, lock); err != nil {
		return fmt.Errorf("dkim %s: taking storage lock: %w", domain, err)
	}
	defer func() {
		if err := s.keys.storage.Unlock(context.WithoutCancel(ctx), lock); err != nil {
			s.log.Error("releasing dkim state lock", zap.String("lock", lock), zap.Error(err))
		}
	}()
	st, err := s.loadState(ctx, domain)
	if err != nil {
		return err
	}
	changed, err := change(st)
	if err != nil || !changed {
		return err
	}
	data, err := json.MarshalIndent(st, "", "\t")
	if err != nil {
		return err
	}
	if err := s.keys.storage.Store(ctx, stateKey(domain), data); err != nil {
		return fmt.Errorf("dkim %s: storing %s: %w", domain, stateKey(domain), err)
	}
	return nil
}

// maintain does the background work for every signer: publish what must
// be, note a current record that resolves, switch a rotation whose new
// record resolves, remove retired records whose week is over.
func (s *Signer) maintain(ctx context.Context) {
	for _, d := range s.Domains() {
		st, err := s.loadState(ctx, d)
		if err != nil {
			s.log.Error("dkim: reading rotation state", zap.String("domain", d), zap.Error(err))
			continue
		}
		for _, sc := range s.byDomain[d] {
			if sc.file != "" {
				continue
			}
			if err := s.maintainSigner(ctx, sc, st.entry(sc)); err != nil && ctx.Err() == nil {
				s.log.Error("dkim: key maintenance", zap.String("domain", d), zap.String("selector", sc.selector), zap.Error(err))
			}
		}
	}
}

func (s *Signer) maintainSigner(ctx context.Context, sc *signerConf, e *signerState) error {
	now := s.opts.Now().UTC()
	cur, err := s.keys.Get(ctx, KeySpec{Domain: sc.domain, Selector: e.Current, Algorithm: sc.algorithm})
	if err != nil {
		return err
	}
	if e.Resolved.IsZero() {
		if sc.publish != nil {
			if err := s.publish(ctx, sc, cur); err != nil {
				s.log.Warn("dkim: publishing key record", zap.String("record", cur.Name()), zap.Error(err))
			}
		}
		if s.resolves(ctx, cur) {
			err := s.updateState(ctx, sc.domain, func(st *rotationState) (bool, error) {
				x := st.entry(sc)
				if x.Current != cur.Selector || !x.Resolved.IsZero() {
					return false, nil
				}
				x.Resolved = now
				st.Signers[sc.selector] = x
				return true, nil
			})
			if err != nil {
				return err
			}
			s.log.Info("dkim key record resolves", zap.String("record", cur.Name()))
		} else if sc.publish == nil {
			s.warnUnpublished(cur)
		}
	}
	if e.Next != "" {
		next, err := s.keys.Get(ctx, KeySpec{Domain: sc.domain, Selector: e.Next, Algorithm: sc.algorithm})
		if err != nil {
			return err
		}
		if sc.publish != nil {
			if err := s.publish(ctx, sc, next); err != nil {
				s.log.Warn("dkim: publishing rotated key record", zap.String("record", next.Name()), zap.Error(err))
			}
		}
		if s.resolves(ctx, next) {
			switched := false
			err := s.updateState(ctx, sc.domain, func(st *rotationState) (bool, error) {
				x := st.entry(sc)
				if x.Next != next.Selector {
					return false, nil // switched by another instance
				}
				x.Retired = append(x.Retired, retiredKey{Selector: x.Current, Until: now.Add(s.opts.RetireAfter)})
				x.Current, x.Resolved, x.Next, x.Rotated = x.Next, now, "", time.Time{}
				st.Signers[sc.selector] = x
				switched = true
				return true, nil
			})
			if err != nil {
				return err
			}
			if switched {
				s.log.Info("dkim key rotated: signing with the new key", zap.String("domain", sc.domain),
					zap.String("selector", next.Selector), zap.String("previous", e.Current),
					zap.Time("previous_record_until", now.Add(s.opts.RetireAfter)))
			}
		} else if sc.publish == nil {
			s.warnUnpublished(next)
		}
	}
	for _, r := range e.Retired {
		if now.Before(r.Until) {
			continue
		}
		if err := s.retire(ctx, sc, r.Selector); err != nil {
			s.log.Warn("dkim: removing retired key record (retried later)", zap.String("domain", sc.domain),
				zap.String("selector", r.Selector), zap.Error(err))
			continue
		}
		err := s.updateState(ctx, sc.domain, func(st *rotationState) (bool, error) {
			x := st.entry(sc)
			kept := x.Retired[:0]
			for _, o := range x.Retired {
				if o.Selector != r.Selector {
					kept = append(kept, o)
				}
			}
			if len(kept) == len(x.Retired) {
				return false, nil
			}
			x.Retired = kept
			st.Signers[sc.selector] = x
			return true, nil
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// warnUnpublished logs, once per record, that a key's record must be
// published by hand.
func (s *Signer) warnUnpublished(k *Key) {
	s.mu.Lock()
	seen := s.warned[k.Name()+" "+k.pub]
	s.warned[k.Name()+" "+k.pub] = true
	s.mu.Unlock()
	if !seen {
		s.log.Warn("dkim key record not found in DNS: publish it", zap.String("record", k.Record().ZoneLine()))
	}
}

// resolves tells whether k's record resolves with k's public key.
func (s *Signer) resolves(ctx context.Context, k *Key) bool {
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	txt, err := s.opts.Resolver.LookupTXT(ctx, strings.TrimSuffix(k.Name(), "."))
	if err != nil {
		s.log.Debug("dkim: key record lookup", zap.String("record", k.Name()), zap.Error(err))
		return false
	}
	return keyInRecords(txt, k.pub)
}
