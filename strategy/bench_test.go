package strategy

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/seed7b014b84/caddy-smtp/internal/peertest"
	"github.com/seed7b014b84/caddy-smtp/resolver"
	"github.com/seed7b014b84/caddy-smtp/rules"
)

// BenchmarkPlan builds the plan of a domain with three MX hosts (one with
// IPv4 and IPv6 addresses), rule lists on ip_strategy and multihomed, and
// two source addresses, with the DNS answers in the resolver's cache.
func BenchmarkPlan(b *testing.B) {
	knot := peertest.StartKnot(b, peertest.KnotOptions{Zones: []peertest.Zone{{Name: "bench.test", TTL: 3600, Records: `
@ MX 10 mx1
@ MX 10 mx2
@ MX 20 mx3
mx1 A 192.0.2.1
mx1 AAAA 2001:db8::1
mx2 A 192.0.2.2
mx3 A 192.0.2.3
`}}})
	r, err := resolver.New(resolver.Config{Servers: []string{"udp://" + knot.Addr}}, "resolver")
	require.NoError(b, err)
	p := &Planner{
		Settings: settings(b, map[string]string{
			"ip_strategy": `[{"if": "retry_num == 0", "then": "ipv6_then_ipv4"}, {"else": "ipv4_only"}]`,
			"multihomed":  `[{"if": "mx.endsWith('.bench.test')", "then": 2}, {"else": 1}]`,
			"v4":          `["192.0.2.100", "192.0.2.101"]`,
		}),
		DNS: r,
	}
	dest := Destination{Domain: "bench.test"}
	vars := rules.Vars{RcptDomain: "bench.test"}
	_, err = p.Plan(b.Context(), dest, vars)
	require.NoError(b, err)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := p.Plan(b.Context(), dest, vars); err != nil {
			b.Fatal(err)
		}
	}
}
