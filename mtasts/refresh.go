package mtasts

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"slices"
	"strings"
	"time"
)

// RefreshAfter is the longest a cached policy goes without being fetched
// again by Refresh, whatever its max_age.
const RefreshAfter = 24 * time.Hour

// RefreshDue reports whether Refresh fetches p again at time at: once
// half of its max_age or RefreshAfter has passed since it was fetched,
// whichever comes first. Half of max_age leaves the other half to retry a
// failing host before the policy expires; a day bounds how long a change
// the domain made without a new TXT id goes unseen.
func RefreshDue(p *Policy, at time.Time) bool {
	return !at.Before(p.Fetched.Add(min(p.MaxAge/2, RefreshAfter)))
}

// Refresh keeps the cached policies fresh, fetching them again before
// they expire, as RFC 8461 advises senders to: for every domain with a
// policy in memory or in storage, it
//
//   - drops the policy from memory and storage when it has expired;
//   - when it is due (see RefreshDue), looks up the TXT record and, if
//     there is a valid one, fetches the policy again (a success restarts
//     its max_age, and takes the record's id);
//   - keeps the policy as it is when the record is gone (it then expires
//     in its time) or when the lookup or the fetch fails (the next
//     Refresh tries again).
//
// The app runs it periodically (every hour is plenty: the shortest
// useful max_age is a day or so). Domains are refreshed one after the
// other, each fetch bounded by the Fetcher's timeout. The error joins
// every failure, for the log; the policies that could be refreshed are.
func (c *Cache) Refresh(ctx context.Context) error {
	domains, err := c.domains(ctx)
	errs := []error{err}
	for _, domain := range domains {
		if ctx.Err() != nil {
			errs = append(errs, ctx.Err())
			break
		}
		p := c.cached(ctx, domain)
		if p == nil {
			continue
		}
		now := c.clock()
		if p.Expired(now) {
			errs = append(errs, c.forget(ctx, domain))
			continue
		}
		if !RefreshDue(p, now) {
			continue
		}
		rec, err := c.lookupRecord(ctx, domain)
		if err != nil {
			if !errors.Is(err, ErrNoRecord) {
				errs = append(errs, err)
			}
			continue
		}
		if _, err := c.fetch(ctx, domain, rec.ID, true); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// domains returns, sorted, the domains with a policy in memory or in
// storage.
func (c *Cache) domains(ctx context.Context) ([]string, error) {
	set := map[string]bool{}
	c.mu.Lock()
	for d, p := range c.mem {
		if p != nil {
			set[d] = true
		}
	}
	c.mu.Unlock()
	var err error
	if c.storage != nil {
		var keys []string
		keys, err = c.storage.List(ctx, StoragePrefix, false)
		if errors.Is(err, fs.ErrNotExist) {
			err = nil
		} else if err != nil {
			err = fmt.Errorf("listing cached MTA-STS policies: %w", err)
		}
		for _, k := range keys {
			name, ok := strings.CutSuffix(path.Base(k), ".json")
			if ok && validDomain(name) {
				set[name] = true
			}
		}
	}
	out := make([]string, 0, len(set))
	for d := range set {
		out = append(out, d)
	}
	slices.Sort(out)
	return out, err
}
