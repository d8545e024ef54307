package queue

import (
	"slices"
	"strings"
	"time"
)

// Match reports whether m is selected by f. Stores that cannot select by
// every field in their own query language call it on each candidate.
func (f *Filter) Match(m *Message) bool {
	if f == nil {
		return true
	}
	if len(f.IDs) > 0 && !slices.Contains(f.IDs, m.ID) {
		return false
	}
	if f.From != "" && !addrMatches(m.From, f.From) {
		return false
	}
	if f.State != "" && m.State() != f.State {
		return false
	}
	if f.Held != nil && m.Held != *f.Held {
		return false
	}
	if !f.ArrivedBefore.IsZero() && !m.Arrived.Before(f.ArrivedBefore) {
		return false
	}
	if !f.ArrivedAfter.IsZero() && !m.Arrived.After(f.ArrivedAfter) {
		return false
	}
	if !f.NextBefore.IsZero() && (m.NextAttempt.IsZero() || !m.NextAttempt.Before(f.NextBefore)) {
		return false
	}
	if f.Source != "" && m.Source != f.Source {
		return false
	}
	if f.HeldBy != "" && !(m.Held && (m.HoldReason == "hold rule "+f.HeldBy || strings.HasPrefix(m.HoldReason, "hold rule "+f.HeldBy+":"))) {
		return false
	}
	if f.To == "" && f.Domain == "" && f.Destination == "" {
		return true
	}
	for _, r := range m.Recipients {
		if f.To != "" && !addrMatches(r.Addr, f.To) {
			continue
		}
		if f.Domain != "" && !strings.EqualFold(Domain(r.Addr), strings.TrimPrefix(f.Domain, "@")) {
			continue
		}
		if f.Destination != "" && !destinationMatches(r, f.Destination) {
			continue
		}
		return true
	}
	return false
}

// IsZero reports whether f selects every message.
func (f *Filter) IsZero() bool {
	return f == nil || (len(f.IDs) == 0 && f.From == "" && f.To == "" && f.Domain == "" && f.Destination == "" &&
		f.State == "" && f.Held == nil && f.ArrivedBefore.IsZero() && f.ArrivedAfter.IsZero() &&
		f.NextBefore.IsZero() && f.Source == "" && f.HeldBy == "")
}

// addrMatches compares an address with a pattern: an address (any case),
// or "@domain".
func addrMatches(addr, pattern string) bool {
	if strings.HasPrefix(pattern, "@") {
		return strings.EqualFold(Domain(addr), pattern[1:])
	}
	return strings.EqualFold(addr, pattern)
}

// destinationMatches compares a recipient's destination with a pattern:
// the whole destination, or one of its hosts, or the recipient's domain
// (a recipient never tried has no destination yet).
func destinationMatches(r Recipient, pattern string) bool {
	pattern = strings.ToLower(strings.TrimSuffix(pattern, "."))
	if r.Destination == "" {
		return pattern == Domain(r.Addr) || pattern == "mx:"+Domain(r.Addr)
	}
	d := strings.ToLower(r.Destination)
	if d == pattern {
		return true
	}
	_, hosts, _ := strings.Cut(d, ":")
	for _, h := range strings.Split(hosts, ",") {
		if h == pattern {
			return true
		}
	}
	return false
}

// ageOf is how long ago t was, never negative.
func ageOf(now, t time.Time) time.Duration {
	if d := now.Sub(t); d > 0 {
		return d
	}
	return 0
}
