package resolver

import (
	"context"
	"strings"
	"time"

	"github.com/miekg/dns"
)

// maxCNAMEHops bounds a CNAME chain, as resolvers do (BIND follows 16;
// a mail domain needs few).
const maxCNAMEHops = 8

// answer is what one question settled: the records of the asked type at
// the end of the CNAME chain the answer holds, or a negative result.
type answer struct {
	name     string   // the owner of records (after CNAMEs), fully qualified
	records  []dns.RR // of the asked type
	next     string   // a CNAME target the answer left unresolved
	security Security
	neg      *Error // NXDOMAIN or NODATA
	ttl      time.Duration
}

// interpret turns a settling response (NOERROR or NXDOMAIN) into an answer,
// following the CNAME chain within it.
func (r *Resolver) interpret(resp *dns.Msg, srv server, qname string, qtype uint16) *answer {
	a := &answer{name: dns.Fqdn(strings.ToLower(qname))}
	if r.s.trustAD && resp.AuthenticatedData {
		a.security = Secure
	}
	ttl := uint32(0)
	first := true
	note := func(t uint32) {
		if first || t < ttl {
			ttl, first = t, false
		}
	}
	target := a.name
	for hop := 0; hop <= maxCNAMEHops; hop++ {
		var cname string
		for _, rr := range resp.Answer {
			h := rr.Header()
			if !strings.EqualFold(h.Name, target) {
				continue
			}
			switch {
			case h.Rrtype == qtype:
				a.records = append(a.records, rr)
				note(h.Ttl)
			case h.Rrtype == dns.TypeCNAME && qtype != dns.TypeCNAME:
				cname = dns.Fqdn(strings.ToLower(rr.(*dns.CNAME).Target))
				note(h.Ttl)
			}
		}
		if len(a.records) > 0 || cname == "" {
			break
		}
		target = cname
	}
	a.name = target

	if len(a.records) > 0 {
		a.ttl = clamp(time.Duration(ttl)*time.Second, r.s.minTTL, r.s.maxTTL)
		return a
	}
	soa := negativeTTL(resp)
	negative := func(reason error) *answer {
		a.neg = &Error{Name: trimDot(target), Type: qtype, Kind: Permanent, Reason: reason, Server: srv.String(), Rcode: resp.Rcode, DNSSEC: a.security}
		if soa >= 0 {
			a.ttl = clamp(soa, r.s.minTTL, r.s.maxNegativeTTL)
		}
		return a
	}
	if resp.Rcode == dns.RcodeNameError {
		return negative(ErrNXDomain)
	}
	if target != dns.Fqdn(strings.ToLower(qname)) && soa < 0 {
		// The chain leaves this answer: ask about its end.
		a.next = target
		a.ttl = clamp(time.Duration(ttl)*time.Second, r.s.minTTL, r.s.maxTTL)
		return a
	}
	return negative(ErrNoData)
}

// negativeTTL is how long a negative answer may be kept (RFC 2308, section
// 5): the smaller of the SOA's TTL and its MINIMUM field; -1 without a SOA,
// which must not be cached.
func negativeTTL(resp *dns.Msg) time.Duration {
	for _, rr := range resp.Ns {
		if soa, ok := rr.(*dns.SOA); ok {
			return time.Duration(min(soa.Hdr.Ttl, soa.Minttl)) * time.Second
		}
	}
	return -1
}

// query answers one question from the cache, or by asking the servers
// (concurrent identical questions share one exchange).
func (r *Resolver) query(ctx context.Context, name string, qtype uint16) (*answer, error) {
	key := cacheKey{name: dns.Fqdn(strings.ToLower(name)), qtype: qtype}
	if a, ok := r.cache.get(key, now()); ok {
		metricCacheHit()
		return a, nil
	}
	if ctx.Value(cachedOnlyKey{}) != nil {
		return nil, &Error{Name: trimDot(name), Type: qtype, Kind: Temporary, Reason: ErrNotCached, Rcode: -1}
	}
	ch := r.group.DoChan(key.name+"/"+dns.TypeToString[qtype], func() (any, error) {
		// The shared exchange outlives one caller's cancellation; each
		// server's time is bounded by the timeout.
		return r.fetch(context.WithoutCancel(ctx), key)
	})
	select {
	case res := <-ch:
		if res.Err != nil {
			return nil, res.Err
		}
		return res.Val.(*answer), nil
	case <-ctx.Done():
		return nil, r.fail(name, qtype, server{}, -1, ctx.Err())
	}
}

// fetch asks the servers and keeps the answer.
func (r *Resolver) fetch(ctx context.Context, key cacheKey) (*answer, error) {
	resp, srv, err := r.exchange(ctx, key.name, key.qtype, false)
	if err != nil {
		return nil, err
	}
	if resp.Rcode != dns.RcodeSuccess && resp.Rcode != dns.RcodeNameError {
		return nil, r.failure(ctx, resp, srv, key)
	}
	a := r.interpret(resp, srv, key.name, key.qtype)
	r.cache.put(key, a, a.ttl, now())
	return a, nil
}

// failure builds the error for a SERVFAIL, REFUSED or other rcode. A
// SERVFAIL from a trusted validating resolver is bogus when the data is
// there with checking disabled (RFC 4035, section 3.2.2).
func (r *Resolver) failure(ctx context.Context, resp *dns.Msg, srv server, key cacheKey) error {
	reason := ErrServFail
	switch resp.Rcode {
	case dns.RcodeServerFailure:
		if r.s.trustAD {
			cd, _, err := r.exchange(ctx, key.name, key.qtype, true)
			if err == nil && cd.Rcode == dns.RcodeSuccess && len(cd.Answer) > 0 {
				reason = ErrBogus
			}
		}
	case dns.RcodeRefused:
		reason = ErrRefused
	}
	e := &Error{Name: trimDot(key.name), Type: key.qtype, Kind: Temporary, Reason: reason, Server: srv.String(), Rcode: resp.Rcode}
	if reason == ErrBogus {
		e.DNSSEC = Bogus
	}
	return e
}

// resolve answers a question to the end of its CNAME chain, across
// queries where one answer does not hold the whole chain. The result is
// secure only if every step was.
func (r *Resolver) resolve(ctx context.Context, name string, qtype uint16) (*answer, error) {
	security := Secure
	for hop := 0; hop <= maxCNAMEHops; hop++ {
		a, err := r.query(ctx, name, qtype)
		if err != nil {
			return nil, err
		}
		if a.security != Secure {
			security = Insecure
		}
		if a.next == "" {
			if a.neg != nil {
				return nil, a.neg
			}
			if a.security == security {
				return a, nil
			}
			out := *a
			out.security = security
			return &out, nil
		}
		name = a.next
	}
	return nil, &Error{Name: trimDot(name), Type: qtype, Kind: Temporary, Reason: ErrCNAMELoop, Rcode: -1}
}

// cachedOnlyKey marks a context whose lookups are answered from the cache
// only.
type cachedOnlyKey struct{}

// CachedOnly returns a context under which lookups are answered from the
// cache alone: a question whose answer is not cached fails at once with
// ErrNotCached, without a query. For what is worth knowing only when it
// costs nothing (the queue's name of a destination).
func CachedOnly(ctx context.Context) context.Context {
	return context.WithValue(ctx, cachedOnlyKey{}, true)
}
