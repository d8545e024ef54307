package resolver

import (
	"context"
	"encoding/hex"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/miekg/dns"
)

// MX is one mail exchanger of a domain.
type MX struct {
	// Host is the exchanger's name, lowercased, without the final dot.
	Host string
	// Preference orders exchangers: lower first.
	Preference uint16
}

// MXResult is a domain's mail exchangers, sorted by preference (equal
// preferences keep the DNS order; the connection plan shuffles them).
type MXResult struct {
	// Domain is the domain looked up, lowercased.
	Domain string
	// Hosts are the exchangers.
	Hosts []MX
	// Implicit is true when the domain has no MX records, so that it is its
	// own exchanger (RFC 5321, section 5.1).
	Implicit bool
	// Security is the DNSSEC status of the MX answer.
	Security Security
}

// LookupMX returns domain's mail exchangers. No MX records gives the
// implicit MX (the domain itself); "MX 0 ." is ErrNullMX; NXDOMAIN is
// ErrNXDomain; all three are permanent.
func (r *Resolver) LookupMX(ctx context.Context, domain string) (*MXResult, error) {
	domain = trimDot(domain)
	res := &MXResult{Domain: domain}
	a, err := r.resolve(ctx, domain, dns.TypeMX)
	switch {
	case err == nil:
	case isNoData(err):
		res.Implicit = true
		res.Hosts = []MX{{Host: domain}}
		res.Security = err.(*Error).DNSSEC
		return res, nil
	default:
		return nil, err
	}
	res.Security = a.security
	var null bool
	for _, rr := range a.records {
		mx := rr.(*dns.MX)
		if mx.Mx == "." {
			null = true
			continue
		}
		res.Hosts = append(res.Hosts, MX{Host: trimDot(mx.Mx), Preference: mx.Preference})
	}
	if len(res.Hosts) == 0 && null {
		// RFC 7505: a null MX, alone, says the domain takes no mail. (Beside
		// other MX records it is an error of the domain's, and ignored.)
		return nil, &Error{Name: domain, Type: dns.TypeMX, Kind: Permanent, Reason: ErrNullMX, Rcode: dns.RcodeSuccess}
	}
	slices.SortStableFunc(res.Hosts, func(x, y MX) int { return int(x.Preference) - int(y.Preference) })
	return res, nil
}

func isNoData(err error) bool {
	e, ok := err.(*Error)
	return ok && e.Reason == ErrNoData
}

// IPResult is a host's addresses of one family.
type IPResult struct {
	// Name is the name the addresses belong to, after any CNAMEs.
	Name string
	// Addrs are the addresses, in DNS order.
	Addrs []netip.Addr
	// Security is the DNSSEC status of the answer (and its CNAME chain).
	Security Security
}

// LookupA returns host's IPv4 addresses.
func (r *Resolver) LookupA(ctx context.Context, host string) (*IPResult, error) {
	return r.lookupIP(ctx, host, dns.TypeA)
}

// LookupAAAA returns host's IPv6 addresses.
func (r *Resolver) LookupAAAA(ctx context.Context, host string) (*IPResult, error) {
	return r.lookupIP(ctx, host, dns.TypeAAAA)
}

func (r *Resolver) lookupIP(ctx context.Context, host string, qtype uint16) (*IPResult, error) {
	a, err := r.resolve(ctx, host, qtype)
	if err != nil {
		return nil, err
	}
	res := &IPResult{Name: trimDot(a.name), Security: a.security, Addrs: make([]netip.Addr, 0, len(a.records))}
	for _, rr := range a.records {
		var ip netip.Addr
		switch rr := rr.(type) {
		case *dns.A:
			ip, _ = netip.AddrFromSlice(rr.A.To4())
		case *dns.AAAA:
			ip, _ = netip.AddrFromSlice(rr.AAAA.To16())
		}
		if ip.IsValid() {
			res.Addrs = append(res.Addrs, ip)
		}
	}
	return res, nil
}

// TXTResult is a name's TXT records.
type TXTResult struct {
	// Records holds each record's strings joined into one, as RFC 7208
	// and RFC 8461 read them.
	Records []string
	// Security is the DNSSEC status of the answer.
	Security Security
}

// LookupTXT returns name's TXT records.
func (r *Resolver) LookupTXT(ctx context.Context, name string) (*TXTResult, error) {
	a, err := r.resolve(ctx, name, dns.TypeTXT)
	if err != nil {
		return nil, err
	}
	res := &TXTResult{Security: a.security, Records: make([]string, 0, len(a.records))}
	for _, rr := range a.records {
		res.Records = append(res.Records, strings.Join(rr.(*dns.TXT).Txt, ""))
	}
	return res, nil
}

// TLSA is one TLSA record (RFC 6698).
type TLSA struct {
	Usage        uint8
	Selector     uint8
	MatchingType uint8
	// Data is the certificate association data, decoded from hex.
	Data []byte
}

// TLSAResult is the TLSA records of a service.
type TLSAResult struct {
	// Name is the name looked up (after any CNAMEs).
	Name string
	// Records are the records, in DNS order.
	Records []TLSA
	// Security is the DNSSEC status: DANE uses only secure records.
	Security Security
}

// LookupTLSA returns the TLSA records of _PORT._tcp.HOST.
func (r *Resolver) LookupTLSA(ctx context.Context, port uint16, host string) (*TLSAResult, error) {
	name, err := dns.TLSAName(dns.Fqdn(host), strconv.Itoa(int(port)), "tcp")
	if err != nil {
		return nil, err
	}
	a, err := r.resolve(ctx, name, dns.TypeTLSA)
	if err != nil {
		return nil, err
	}
	res := &TLSAResult{Name: trimDot(a.name), Security: a.security}
	for _, rr := range a.records {
		t := rr.(*dns.TLSA)
		data, err := hex.DecodeString(t.Certificate)
		if err != nil {
			continue // malformed data is an unusable record (RFC 7671)
		}
		res.Records = append(res.Records, TLSA{Usage: t.Usage, Selector: t.Selector, MatchingType: t.MatchingType, Data: data})
	}
	return res, nil
}
