package dkim

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/libdns/libdns"
	"github.com/miekg/dns"
)

// rfc2136 is a libdns provider for the tests: it reads a zone with AXFR and
// changes it with RFC 2136 dynamic updates, sent to one server (Knot).
// While held, its SetRecords fail (a provider out of order), to show that
// nothing signs with a key whose record is not out yet.
type rfc2136 struct {
	server string

	mu     sync.Mutex
	held   bool     // SetRecords fails
	sets   []string // names set, in order
	delets []string // names deleted
}

var (
	_ Provider              = (*rfc2136)(nil)
	_ libdns.RecordDeleter  = (*rfc2136)(nil)
	_ libdns.RecordAppender = (*rfc2136)(nil)
)

// hold makes SetRecords fail until release.
func (p *rfc2136) hold() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.held = true
}

func (p *rfc2136) release() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.held = false
}

func (p *rfc2136) setNames() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.sets...)
}

func (p *rfc2136) deletedNames() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.delets...)
}

func (p *rfc2136) GetRecords(ctx context.Context, zone string) ([]libdns.Record, error) {
	m := new(dns.Msg)
	m.SetAxfr(dns.Fqdn(zone))
	tr := &dns.Transfer{DialTimeout: 5 * time.Second, ReadTimeout: 5 * time.Second}
	ch, err := tr.In(m, p.server)
	if err != nil {
		return nil, fmt.Errorf("axfr %s: %w", zone, err)
	}
	var out []libdns.Record
	for env := range ch {
		if env.Error != nil {
			return nil, fmt.Errorf("axfr %s: %w", zone, env.Error)
		}
		for _, rr := range env.RR {
			h := rr.Header()
			name := libdns.RelativeName(h.Name, dns.Fqdn(zone))
			ttl := time.Duration(h.Ttl) * time.Second
			if txt, ok := rr.(*dns.TXT); ok {
				out = append(out, libdns.TXT{Name: name, TTL: ttl, Text: strings.Join(txt.Txt, "")})
				continue
			}
			data := strings.TrimPrefix(rr.String(), h.String())
			out = append(out, libdns.RR{Name: name, TTL: ttl, Type: dns.TypeToString[h.Rrtype], Data: data})
		}
	}
	return out, nil
}

// toRR turns a TXT record into a miekg/dns one, its text cut into strings
// of 255 octets.
func toRR(zone string, r libdns.Record) (dns.RR, error) {
	rr := r.RR()
	if rr.Type != "TXT" {
		return nil, fmt.Errorf("rfc2136 test provider: only TXT records, not %s", rr.Type)
	}
	var parts []string
	t := rr.Data
	for len(t) > 255 {
		parts = append(parts, t[:255])
		t = t[255:]
	}
	parts = append(parts, t)
	return &dns.TXT{Hdr: dns.RR_Header{Name: dns.Fqdn(libdns.AbsoluteName(rr.Name, dns.Fqdn(zone))), Rrtype: dns.TypeTXT,
		Class: dns.ClassINET, Ttl: uint32(rr.TTL / time.Second)}, Txt: parts}, nil
}

func (p *rfc2136) update(ctx context.Context, m *dns.Msg) error {
	c := &dns.Client{Net: "tcp", Timeout: 5 * time.Second}
	resp, _, err := c.ExchangeContext(ctx, m, p.server)
	if err != nil {
		return fmt.Errorf("update: %w", err)
	}
	if resp.Rcode != dns.RcodeSuccess {
		return fmt.Errorf("update: %s", dns.RcodeToString[resp.Rcode])
	}
	return nil
}

func (p *rfc2136) SetRecords(ctx context.Context, zone string, recs []libdns.Record) ([]libdns.Record, error) {
	p.mu.Lock()
	held := p.held
	p.mu.Unlock()
	if held {
		return nil, fmt.Errorf("rfc2136 test provider: held")
	}
	m := new(dns.Msg)
	m.SetUpdate(dns.Fqdn(zone))
	var names []string
	for _, r := range recs {
		rr, err := toRR(zone, r)
		if err != nil {
			return nil, err
		}
		// The RRset of (name, type) becomes exactly the records given.
		m.RemoveRRset([]dns.RR{rr})
		m.Insert([]dns.RR{rr})
		names = append(names, rr.Header().Name)
	}
	if err := p.update(ctx, m); err != nil {
		return nil, err
	}
	p.mu.Lock()
	p.sets = append(p.sets, names...)
	p.mu.Unlock()
	return recs, nil
}

func (p *rfc2136) AppendRecords(ctx context.Context, zone string, recs []libdns.Record) ([]libdns.Record, error) {
	m := new(dns.Msg)
	m.SetUpdate(dns.Fqdn(zone))
	for _, r := range recs {
		rr, err := toRR(zone, r)
		if err != nil {
			return nil, err
		}
		m.Insert([]dns.RR{rr})
	}
	return recs, p.update(ctx, m)
}

func (p *rfc2136) DeleteRecords(ctx context.Context, zone string, recs []libdns.Record) ([]libdns.Record, error) {
	m := new(dns.Msg)
	m.SetUpdate(dns.Fqdn(zone))
	var names []string
	for _, r := range recs {
		rr := r.RR()
		name := dns.Fqdn(libdns.AbsoluteName(rr.Name, dns.Fqdn(zone)))
		if rr.Data == "" {
			t := dns.StringToType[rr.Type]
			m.RemoveRRset([]dns.RR{&dns.ANY{Hdr: dns.RR_Header{Name: name, Rrtype: t, Class: dns.ClassINET}}})
		} else {
			x, err := toRR(zone, r)
			if err != nil {
				return nil, err
			}
			m.Remove([]dns.RR{x})
		}
		names = append(names, name)
	}
	if err := p.update(ctx, m); err != nil {
		return nil, err
	}
	p.mu.Lock()
	p.delets = append(p.delets, names...)
	p.mu.Unlock()
	return recs, nil
}
