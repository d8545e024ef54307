package strategy

import (
	"context"
	"encoding/json"
	"errors"
	"math/rand/v2"
	"net/netip"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/seed7b014b84/caddy-smtp/resolver"
	"github.com/seed7b014b84/caddy-smtp/rules"
)

// tableDNS answers from tables: the plan's logic, without a network.
type tableDNS struct {
	mx   map[string]*resolver.MXResult
	a    map[string][]string
	aaaa map[string][]string
	errs map[string]error // by host, for A and AAAA
}

func (d *tableDNS) LookupMX(_ context.Context, domain string) (*resolver.MXResult, error) {
	if err := d.errs[domain]; err != nil {
		return nil, err
	}
	if r, ok := d.mx[domain]; ok {
		return r, nil
	}
	return &resolver.MXResult{Domain: domain, Implicit: true, Hosts: []resolver.MX{{Host: domain}}}, nil
}

func (d *tableDNS) ip(table map[string][]string, host string) (*resolver.IPResult, error) {
	if err := d.errs[host]; err != nil {
		return nil, err
	}
	addrs, ok := table[host]
	if !ok {
		return nil, &resolver.Error{Name: host, Kind: resolver.Permanent, Reason: resolver.ErrNoData}
	}
	res := &resolver.IPResult{Name: host, Security: resolver.Secure}
	for _, a := range addrs {
		res.Addrs = append(res.Addrs, netip.MustParseAddr(a))
	}
	return res, nil
}

func (d *tableDNS) LookupA(_ context.Context, host string) (*resolver.IPResult, error) {
	return d.ip(d.a, host)
}

func (d *tableDNS) LookupAAAA(_ context.Context, host string) (*resolver.IPResult, error) {
	return d.ip(d.aaaa, host)
}

// setting compiles a setting from its JSON form.
func setting[T any](t testing.TB, raw string) *rules.Setting[T] {
	t.Helper()
	var s rules.Setting[T]
	require.NoError(t, json.Unmarshal([]byte(raw), &s))
	env, err := rules.NewEnv(nil)
	require.NoError(t, err)
	require.NoError(t, s.Compile("test", env))
	return &s
}

// settings are the defaults, with overrides by JSON.
func settings(t testing.TB, over map[string]string) Settings {
	get := func(key, def string) string {
		if v, ok := over[key]; ok {
			return v
		}
		return def
	}
	return Settings{
		Hostname:      setting[string](t, get("hostname", `"mx.example.org"`)),
		IPStrategy:    setting[IPStrategy](t, get("ip_strategy", `"ipv4_then_ipv6"`)),
		MX:            setting[int](t, get("mx", `7`)),
		Multihomed:    setting[int](t, get("multihomed", `2`)),
		SourcesV4:     setting[[]Source](t, get("v4", `[]`)),
		SourcesV6:     setting[[]Source](t, get("v6", `[]`)),
		Connect:       setting[caddy.Duration](t, get("connect", `"30s"`)),
		FallbackDelay: setting[Delay](t, get("fallback_delay", `"250ms"`)),
	}
}

func addrs(s ...string) []netip.Addr {
	out := make([]netip.Addr, len(s))
	for i, a := range s {
		out[i] = netip.MustParseAddr(a)
	}
	return out
}

func TestOrder(t *testing.T) {
	v4 := addrs("192.0.2.1", "192.0.2.2", "192.0.2.3")
	v6 := addrs("2001:db8::1", "2001:db8::2")
	tests := []struct {
		name       string
		s          IPStrategy
		v4, v6     []netip.Addr
		multihomed int
		interleave bool
		want       []string
	}{
		{"ipv4_only", IPv4Only, v4, v6, 2, true, []string{"192.0.2.1", "192.0.2.2"}},
		{"ipv6_only", IPv6Only, v4, v6, 5, true, []string{"2001:db8::1", "2001:db8::2"}},
		{"ipv4_only without v4", IPv4Only, nil, v6, 2, true, []string{}},
		{"v4 then v6, happy eyeballs", IPv4ThenIPv6, v4, v6, 5, true, []string{"192.0.2.1", "2001:db8::1", "192.0.2.2", "2001:db8::2", "192.0.2.3"}},
		{"v6 then v4, happy eyeballs", IPv6ThenIPv4, v4, v6, 5, true, []string{"2001:db8::1", "192.0.2.1", "2001:db8::2", "192.0.2.2", "192.0.2.3"}},
		{"balance: 3 v4, multihomed 2 keeps a v6", IPv4ThenIPv6, v4, v6[:1], 2, true, []string{"192.0.2.1", "2001:db8::1"}},
		{"balance without happy eyeballs: preferred first", IPv4ThenIPv6, v4, v6[:1], 3, false, []string{"192.0.2.1", "192.0.2.2", "2001:db8::1"}},
		{"sequential v6 then v4", IPv6ThenIPv4, v4, v6, 4, false, []string{"2001:db8::1", "2001:db8::2", "192.0.2.1", "192.0.2.2"}},
		{"multihomed 1 keeps the preferred family", IPv6ThenIPv4, v4, v6, 1, true, []string{"2001:db8::1"}},
		{"only the second family exists", IPv4ThenIPv6, nil, v6, 2, true, []string{"2001:db8::1", "2001:db8::2"}},
		{"multihomed 0 is read as 1", IPv4Only, v4, nil, 0, true, []string{"192.0.2.1"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Order(tt.s, tt.v4, tt.v6, tt.multihomed, tt.interleave)
			strs := []string{}
			for _, a := range got {
				strs = append(strs, a.String())
			}
			assert.Equal(t, tt.want, strs)
		})
	}
}

func labDNS() *tableDNS {
	return &tableDNS{
		mx: map[string]*resolver.MXResult{
			"example.net": {Domain: "example.net", Security: resolver.Secure, Hosts: []resolver.MX{
				{Host: "mx1.example.net", Preference: 10}, {Host: "mx2.example.net", Preference: 10},
				{Host: "mx3.example.net", Preference: 10}, {Host: "backup.example.net", Preference: 20},
			}},
			"v4only.example": {Domain: "v4only.example", Hosts: []resolver.MX{{Host: "mx.v4only.example", Preference: 5}}},
		},
		a: map[string][]string{
			"mx1.example.net":    {"192.0.2.11", "192.0.2.12", "192.0.2.13"},
			"mx2.example.net":    {"192.0.2.21"},
			"mx3.example.net":    {"192.0.2.31"},
			"backup.example.net": {"192.0.2.41"},
			"mx.v4only.example":  {"198.51.100.5"},
			"implicit.example":   {"198.51.100.9"},
			"relay.example.net":  {"203.0.113.25"},
		},
		aaaa: map[string][]string{
			"mx1.example.net":    {"2001:db8::11"},
			"backup.example.net": {"2001:db8::41"},
			"relay.example.net":  {"2001:db8::25"},
		},
		errs: map[string]error{
			"nullmx.example":   &resolver.Error{Name: "nullmx.example", Kind: resolver.Permanent, Reason: resolver.ErrNullMX},
			"servfail.example": &resolver.Error{Name: "servfail.example", Kind: resolver.Temporary, Reason: resolver.ErrServFail},
		},
	}
}

func hostNames(p *Plan) []string {
	var out []string
	for _, h := range p.Hosts {
		out = append(out, h.Name)
	}
	return out
}

func candidateAddrs(h Host) []string {
	var out []string
	for _, c := range h.Candidates {
		out = append(out, c.Addr.String())
	}
	return out
}

func TestPlanMX(t *testing.T) {
	ctx := context.Background()
	p := &Planner{Settings: settings(t, nil), DNS: labDNS(), Rand: rand.New(rand.NewPCG(1, 1))}
	plan, err := p.Plan(ctx, Destination{Domain: "Example.NET."}, rules.Vars{})
	require.NoError(t, err)
	assert.Equal(t, "example.net", plan.Domain)
	assert.Equal(t, resolver.Secure, plan.MXSecurity)
	require.Len(t, plan.Hosts, 4)
	assert.ElementsMatch(t, []string{"mx1.example.net", "mx2.example.net", "mx3.example.net"}, hostNames(plan)[:3])
	assert.Equal(t, "backup.example.net", plan.Hosts[3].Name, "lower preference last")

	var mx1 Host
	for _, h := range plan.Hosts {
		if h.Name == "mx1.example.net" {
			mx1 = h
		}
	}
	assert.Equal(t, []string{"192.0.2.11:25", "[2001:db8::11]:25"}, candidateAddrs(mx1), "multihomed 2 keeps the IPv6 address")
	assert.Equal(t, IPv4ThenIPv6, mx1.Strategy)
	assert.Equal(t, Delay(DefaultFallbackDelay), mx1.FallbackDelay)
	assert.Equal(t, "mx.example.org", mx1.Candidates[0].EHLO)
	assert.Empty(t, mx1.Candidates[0].Sources, "no sources configured: the kernel chooses")
}

func TestPlanShuffleSeeded(t *testing.T) {
	ctx := context.Background()
	orders := map[string]int{}
	for seed := range uint64(60) {
		p := &Planner{Settings: settings(t, nil), DNS: labDNS(), Rand: rand.New(rand.NewPCG(seed, 7))}
		plan, err := p.Plan(ctx, Destination{Domain: "example.net"}, rules.Vars{})
		require.NoError(t, err)
		names := hostNames(plan)
		orders[names[0]+","+names[1]+","+names[2]]++
		assert.Equal(t, "backup.example.net", names[3])

		again := &Planner{Settings: settings(t, nil), DNS: labDNS(), Rand: rand.New(rand.NewPCG(seed, 7))}
		plan2, err := again.Plan(ctx, Destination{Domain: "example.net"}, rules.Vars{})
		require.NoError(t, err)
		assert.Equal(t, names, hostNames(plan2), "the same seed gives the same plan")
	}
	assert.Len(t, orders, 6, "all 3! orders of the equal-preference hosts appear: %v", orders)
}

func TestPlanLimits(t *testing.T) {
	ctx := context.Background()
	p := &Planner{Settings: settings(t, map[string]string{"mx": `2`, "multihomed": `1`}), DNS: labDNS(), Rand: rand.New(rand.NewPCG(3, 3))}
	plan, err := p.Plan(ctx, Destination{Domain: "example.net"}, rules.Vars{})
	require.NoError(t, err)
	require.Len(t, plan.Hosts, 2, "limits.mx")
	for _, h := range plan.Hosts {
		assert.Len(t, h.Candidates, 1, "limits.multihomed")
		assert.NotEqual(t, "backup.example.net", h.Name)
	}
}

func TestPlanImplicitAndNullMX(t *testing.T) {
	ctx := context.Background()
	p := &Planner{Settings: settings(t, nil), DNS: labDNS()}
	plan, err := p.Plan(ctx, Destination{Domain: "implicit.example"}, rules.Vars{})
	require.NoError(t, err)
	assert.True(t, plan.Implicit)
	assert.Equal(t, []string{"implicit.example"}, hostNames(plan))
	assert.Equal(t, []string{"198.51.100.9:25"}, candidateAddrs(plan.Hosts[0]))

	_, err = p.Plan(ctx, Destination{Domain: "nullmx.example"}, rules.Vars{})
	require.ErrorIs(t, err, resolver.ErrNullMX)
	assert.True(t, resolver.IsPermanent(err))

	_, err = p.Plan(ctx, Destination{Domain: "servfail.example"}, rules.Vars{})
	require.ErrorIs(t, err, resolver.ErrServFail)
	assert.True(t, resolver.IsTemporary(err))
}

func TestPlanOnlyModeWithoutFamily(t *testing.T) {
	ctx := context.Background()
	p := &Planner{Settings: settings(t, map[string]string{"ip_strategy": `"ipv6_only"`}), DNS: labDNS(), Rand: rand.New(rand.NewPCG(1, 2))}
	plan, err := p.Plan(ctx, Destination{Domain: "example.net"}, rules.Vars{})
	require.NoError(t, err, "some hosts have IPv6")
	for _, h := range plan.Hosts {
		switch h.Name {
		case "mx1.example.net", "backup.example.net":
			assert.NoError(t, h.Err)
			assert.Len(t, h.Candidates, 1)
		default:
			require.ErrorIs(t, h.Err, ErrNoAddress, h.Name)
			assert.Contains(t, h.Error, h.Name)
			assert.Contains(t, h.Error, "ipv6_only")
			assert.Empty(t, h.Candidates)
		}
	}
	_, err = p.Plan(ctx, Destination{Domain: "v4only.example"}, rules.Vars{})
	require.ErrorIs(t, err, ErrNoAddress, "no host has an IPv6 address")
	assert.Contains(t, err.Error(), "mx.v4only.example")
}

func TestPlanRuleListOnRetryNum(t *testing.T) {
	ctx := context.Background()
	p := &Planner{
		Settings: settings(t, map[string]string{
			"ip_strategy":    `[{"if": "retry_num == 0", "then": "ipv6_only"}, {"else": "ipv4_only"}]`,
			"multihomed":     `[{"if": "mx.startsWith('backup.')", "then": 5}, {"else": 2}]`,
			"fallback_delay": `[{"if": "retry_num == 0", "then": "100ms"}, {"else": "off"}]`,
		}),
		DNS: labDNS(),
	}
	first, err := p.Plan(ctx, Destination{Domain: "relay.example.net"}, rules.Vars{RetryNum: 0})
	require.NoError(t, err)
	assert.Equal(t, []string{"[2001:db8::25]:25"}, candidateAddrs(first.Hosts[0]))
	assert.Equal(t, IPv6Only, first.Hosts[0].Strategy)
	assert.Equal(t, Delay(100e6), first.Hosts[0].FallbackDelay)

	retry, err := p.Plan(ctx, Destination{Domain: "relay.example.net"}, rules.Vars{RetryNum: 1})
	require.NoError(t, err)
	assert.Equal(t, []string{"203.0.113.25:25"}, candidateAddrs(retry.Hosts[0]))
	assert.True(t, retry.Hosts[0].FallbackDelay.IsOff())
}

func TestPlanSources(t *testing.T) {
	ctx := context.Background()
	p := &Planner{
		Settings: settings(t, map[string]string{
			"v4": `["192.0.2.100", {"address": "192.0.2.101", "ehlo": "out101.example.org"}, "192.0.2.102"]`,
			"v6": `[{"address": "2001:db8::100", "ehlo": "out6.example.org"}]`,
		}),
		DNS:  labDNS(),
		Rand: rand.New(rand.NewPCG(9, 9)),
	}
	picked := map[string]int{}
	for range 300 {
		plan, err := p.Plan(ctx, Destination{Remote: &Remote{Name: "relay", Address: "relay.example.net", Port: 587}}, rules.Vars{})
		require.NoError(t, err)
		require.Len(t, plan.Hosts[0].Candidates, 2)
		for _, c := range plan.Hosts[0].Candidates {
			require.NotEmpty(t, c.Sources)
			assert.Equal(t, c.Addr.Addr().Is4(), c.Sources[0].Addr.Is4(), "a source of the family dialled")
			assert.Equal(t, c.Sources[0].EHLO, c.EHLO)
			if c.Addr.Addr().Is6() {
				assert.Equal(t, "out6.example.org", c.EHLO)
				continue
			}
			assert.Len(t, c.Sources, 3, "the other sources follow, in case the first cannot be bound")
			picked[c.Sources[0].Addr.String()]++
			if c.Sources[0].Addr.String() == "192.0.2.101" {
				assert.Equal(t, "out101.example.org", c.EHLO)
			} else {
				assert.Equal(t, "mx.example.org", c.EHLO, "a source without its own name uses the hostname")
			}
			assert.Equal(t, uint16(587), c.Addr.Port())
		}
	}
	require.Len(t, picked, 3)
	for src, n := range picked {
		assert.Greater(t, n, 60, "%s picked %d times of 300", src, n)
	}
}

func TestPlanRemote(t *testing.T) {
	ctx := context.Background()
	p := &Planner{Settings: settings(t, nil), DNS: labDNS()}
	plan, err := p.Plan(ctx, Destination{Remote: &Remote{Name: "store", Address: "127.0.0.1", Port: 24}}, rules.Vars{})
	require.NoError(t, err)
	assert.Equal(t, "store", plan.Remote)
	assert.Equal(t, []string{"127.0.0.1:24"}, candidateAddrs(plan.Hosts[0]))

	plan, err = p.Plan(ctx, Destination{Remote: &Remote{Name: "v6", Address: "[2001:db8::5]", Port: 25}}, rules.Vars{})
	require.NoError(t, err)
	assert.Equal(t, []string{"[2001:db8::5]:25"}, candidateAddrs(plan.Hosts[0]))

	v4only := &Planner{Settings: settings(t, map[string]string{"ip_strategy": `"ipv4_only"`}), DNS: labDNS()}
	_, err = v4only.Plan(ctx, Destination{Remote: &Remote{Name: "v6", Address: "2001:db8::5", Port: 25}}, rules.Vars{})
	require.ErrorIs(t, err, ErrNoAddress)

	unknown := &Planner{Settings: settings(t, nil), DNS: &tableDNS{errs: map[string]error{
		"gone.example": &resolver.Error{Name: "gone.example", Kind: resolver.Permanent, Reason: resolver.ErrNXDomain},
	}}}
	_, err = unknown.Plan(ctx, Destination{Remote: &Remote{Name: "gone", Address: "gone.example", Port: 25}}, rules.Vars{})
	require.Error(t, err)
	assert.True(t, errors.Is(err, resolver.ErrNXDomain))
}
