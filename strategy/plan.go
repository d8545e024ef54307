package strategy

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/seed7b014b84/caddy-smtp/resolver"
	"github.com/seed7b014b84/caddy-smtp/rules"
)

// Resolver is what a plan needs of DNS; *resolver.Resolver has it.
type Resolver interface {
	LookupMX(ctx context.Context, domain string) (*resolver.MXResult, error)
	LookupA(ctx context.Context, host string) (*resolver.IPResult, error)
	LookupAAAA(ctx context.Context, host string) (*resolver.IPResult, error)
}

// Settings are the app's settings a plan follows. Each is a compiled rule
// list (or plain value), evaluated per attempt, and per host with the `mx`
// variable set to the host's name.
type Settings struct {
	Hostname      *rules.Setting[string]
	IPStrategy    *rules.Setting[IPStrategy]
	MX            *rules.Setting[int]
	Multihomed    *rules.Setting[int]
	SourcesV4     *rules.Setting[[]Source]
	SourcesV6     *rules.Setting[[]Source]
	Connect       *rules.Setting[caddy.Duration]
	FallbackDelay *rules.Setting[Delay]
}

// Planner builds connection plans.
type Planner struct {
	Settings Settings
	DNS      Resolver
	// Rand shuffles MX hosts of equal preference and picks source
	// addresses. Nil uses the runtime's random source; a seeded Rand makes
	// plans repeatable (tests), and is then not safe for concurrent use.
	Rand *rand.Rand
}

// Destination is where one delivery attempt goes: the MX hosts of Domain,
// or a configured remote.
type Destination struct {
	// Domain is the recipient domain, for delivery by MX.
	Domain string
	// Remote, when set, is the server to deliver to instead.
	Remote *Remote
}

// Remote is a configured server: a relay or a message store.
type Remote struct {
	// Name is the remote's name in the config.
	Name string
	// Address is a host name, resolved under the IP strategy, or an IP
	// address, used as it is.
	Address string
	// Port is the TCP port.
	Port uint16
}

// Plan is the ordered list of hosts an attempt tries, each with its
// ordered addresses.
type Plan struct {
	// Domain is the recipient domain (MX delivery) or "" for a remote.
	Domain string `json:"domain,omitempty"`
	// Remote is the remote's name, or "" for MX delivery.
	Remote string `json:"remote,omitempty"`
	// Implicit is true when the domain has no MX records and is its own.
	Implicit bool `json:"implicit_mx,omitempty"`
	// MXSecurity is the DNSSEC status of the MX answer.
	MXSecurity resolver.Security `json:"mx_dnssec"`
	// Hosts are tried in this order.
	Hosts []Host `json:"hosts"`
}

// Host is one server of a plan.
type Host struct {
	// Name is the MX host's (or remote's) name, or its IP address.
	Name string `json:"name"`
	// Preference is the MX preference (0 for a remote or implicit MX).
	Preference uint16 `json:"preference"`
	// Strategy is the IP strategy evaluated for this host.
	Strategy IPStrategy `json:"ip_strategy"`
	// FallbackDelay is the happy-eyeballs delay; Off for one by one.
	FallbackDelay Delay `json:"fallback_delay"`
	// ConnectTimeout bounds each address's TCP handshake.
	ConnectTimeout time.Duration `json:"connect_timeout"`
	// Candidates are the addresses to try, in order.
	Candidates []Candidate `json:"candidates"`
	// AddrSecurity is the DNSSEC status of the address answers (secure
	// only if every one used was).
	AddrSecurity resolver.Security `json:"addr_dnssec"`
	// AddrName is the name the addresses belong to, after any CNAMEs: the
	// TLSA base domain of DANE (RFC 7672, section 2.2.2). Empty for an IP
	// address.
	AddrName string `json:"addr_name,omitempty"`
	// Err says why the host has no candidates (a DNS failure, or no
	// address of the only family allowed); nil when it has some.
	Err error `json:"-"`
	// Error is Err as text, for JSON.
	Error string `json:"error,omitempty"`
}

// Candidate is one address of a host, with the local sources to dial it
// from.
type Candidate struct {
	// Addr is the address and port to connect to.
	Addr netip.AddrPort `json:"address"`
	// Sources are the local addresses to bind, of Addr's family: the first
	// is picked at random, the others follow in case it cannot be bound.
	// Empty when no source is configured: the kernel chooses.
	Sources []SourceAddr `json:"sources,omitempty"`
	// EHLO is the name to greet with when the kernel chooses the source.
	EHLO string `json:"ehlo"`
}

// SourceAddr is a parsed local address with its EHLO name.
type SourceAddr struct {
	Addr netip.Addr `json:"address"`
	EHLO string     `json:"ehlo"`
}

// ErrNoAddress is why a host is skipped when it has no address of the
// family (or families) the IP strategy allows.
var ErrNoAddress = errors.New("no address of the family the ip_strategy allows")

// Plan builds the plan of one attempt to dest. vars holds what the caller
// knows (retry_num, rcpt_domain, ...). An error means no host could be
// planned at all: the MX lookup failed (resolver errors keep their
// permanent or temporary kind), the domain has a null MX, or every host
// failed (the first host's error is returned, the others are in the plan).
func (p *Planner) Plan(ctx context.Context, dest Destination, vars rules.Vars) (*Plan, error) {
	plan := &Plan{}
	var hosts []Host
	if dest.Remote != nil {
		plan.Remote = dest.Remote.Name
		hosts = []Host{{Name: strings.ToLower(dest.Remote.Address)}}
	} else {
		plan.Domain = strings.ToLower(strings.TrimSuffix(dest.Domain, "."))
		mx, err := p.DNS.LookupMX(ctx, plan.Domain)
		if err != nil {
			return nil, fmt.Errorf("plan %s: %w", plan.Domain, err)
		}
		plan.Implicit, plan.MXSecurity = mx.Implicit, mx.Security
		limit, err := p.Settings.MX.Eval(&vars)
		if err != nil {
			return nil, err
		}
		for _, h := range p.orderMX(mx.Hosts) {
			if len(hosts) == limit {
				break
			}
			hosts = append(hosts, Host{Name: h.Host, Preference: h.Preference})
		}
	}
	port := uint16(25)
	if dest.Remote != nil {
		port = dest.Remote.Port
	}
	ok := false
	for i := range hosts {
		h := &hosts[i]
		hv := vars
		hv.MX = h.Name
		if err := p.planHost(ctx, h, port, &hv); err != nil {
			h.Err, h.Error = err, err.Error()
			continue
		}
		ok = true
	}
	plan.Hosts = hosts
	if !ok && len(hosts) > 0 {
		return plan, hosts[0].Err
	}
	return plan, nil
}

// orderMX sorts hosts by preference and shuffles each group of equal
// preference, so that load spreads as RFC 5321 (section 5.1) asks.
func (p *Planner) orderMX(in []resolver.MX) []resolver.MX {
	hosts := slices.Clone(in)
	slices.SortStableFunc(hosts, func(a, b resolver.MX) int { return int(a.Preference) - int(b.Preference) })
	for i := 0; i < len(hosts); {
		j := i
		for j < len(hosts) && hosts[j].Preference == hosts[i].Preference {
			j++
		}
		group := hosts[i:j]
		p.shuffle(len(group), func(a, b int) { group[a], group[b] = group[b], group[a] })
		i = j
	}
	return hosts
}

func (p *Planner) shuffle(n int, swap func(i, j int)) {
	if p.Rand != nil {
		p.Rand.Shuffle(n, swap)
		return
	}
	rand.Shuffle(n, swap)
}

func (p *Planner) intN(n int) int {
	if p.Rand != nil {
		return p.Rand.IntN(n)
	}
	return rand.IntN(n)
}

// planHost evaluates the host's settings and fills its candidates.
func (p *Planner) planHost(ctx context.Context, h *Host, port uint16, vars *rules.Vars) error {
	var err error
	if h.Strategy, err = p.Settings.IPStrategy.Eval(vars); err != nil {
		return err
	}
	if h.FallbackDelay, err = p.Settings.FallbackDelay.Eval(vars); err != nil {
		return err
	}
	connect, err := p.Settings.Connect.Eval(vars)
	if err != nil {
		return err
	}
	h.ConnectTimeout = time.Duration(connect)
	multihomed, err := p.Settings.Multihomed.Eval(vars)
	if err != nil {
		return err
	}
	hostname, err := p.Settings.Hostname.Eval(vars)
	if err != nil {
		return err
	}
	v4src, err := p.Settings.SourcesV4.Eval(vars)
	if err != nil {
		return err
	}
	v6src, err := p.Settings.SourcesV6.Eval(vars)
	if err != nil {
		return err
	}

	v4, v6, sec, name, err := p.addresses(ctx, h.Name, h.Strategy)
	if err != nil {
		return err
	}
	h.AddrSecurity, h.AddrName = sec, name
	addrs := Order(h.Strategy, v4, v6, multihomed, !h.FallbackDelay.IsOff())
	if len(addrs) == 0 {
		return fmt.Errorf("host %s: %w (%s)", h.Name, ErrNoAddress, h.Strategy)
	}
	for _, a := range addrs {
		c := Candidate{Addr: netip.AddrPortFrom(a, port), EHLO: hostname}
		list := v4src
		if a.Is6() {
			list = v6src
		}
		c.Sources = p.pickSources(list, hostname)
		if len(c.Sources) > 0 {
			c.EHLO = c.Sources[0].EHLO
		}
		h.Candidates = append(h.Candidates, c)
	}
	return nil
}

// pickSources parses the family's sources and puts one picked at random
// first; the rest keep their order, as fallbacks.
func (p *Planner) pickSources(list []Source, hostname string) []SourceAddr {
	if len(list) == 0 {
		return nil
	}
	out := make([]SourceAddr, 0, len(list))
	for _, s := range list {
		ip, err := netip.ParseAddr(s.Address)
		if err != nil {
			continue // validated when the config loaded
		}
		ehlo := s.EHLO
		if ehlo == "" {
			ehlo = hostname
		}
		out = append(out, SourceAddr{Addr: ip.Unmap(), EHLO: ehlo})
	}
	if len(out) > 1 {
		i := p.intN(len(out))
		out[0], out[i] = out[i], out[0]
	}
	return out
}

// addresses looks up the host's addresses of the families the strategy
// uses (or takes an IP literal as it is). A lookup failure of one family
// is an error only when no address was found at all.
func (p *Planner) addresses(ctx context.Context, host string, s IPStrategy) (v4, v6 []netip.Addr, sec resolver.Security, name string, err error) {
	if ip, perr := netip.ParseAddr(strings.Trim(host, "[]")); perr == nil {
		ip = ip.Unmap()
		if ip.Is4() {
			return []netip.Addr{ip}, nil, resolver.Insecure, "", nil
		}
		return nil, []netip.Addr{ip}, resolver.Insecure, "", nil
	}
	sec = resolver.Secure
	var errs []error
	lookup := func(f func(context.Context, string) (*resolver.IPResult, error)) []netip.Addr {
		res, err := f(ctx, host)
		if err != nil {
			if !errors.Is(err, resolver.ErrNoData) {
				errs = append(errs, err)
			}
			return nil
		}
		if res.Security != resolver.Secure {
			sec = resolver.Insecure
		}
		if name == "" {
			name = res.Name
		}
		return res.Addrs
	}
	if s.UsesIPv4() {
		v4 = lookup(p.DNS.LookupA)
	}
	if s.UsesIPv6() {
		v6 = lookup(p.DNS.LookupAAAA)
	}
	if len(v4) == 0 && len(v6) == 0 && len(errs) > 0 {
		return nil, nil, resolver.Insecure, "", fmt.Errorf("host %s: %w", host, errors.Join(errs...))
	}
	return v4, v6, sec, name, nil
}
