package strategy

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"net/textproto"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/seed7b014b84/caddy-smtp/internal/peertest"
	"github.com/seed7b014b84/caddy-smtp/resolver"
	"github.com/seed7b014b84/caddy-smtp/rules"
)

// The network of these tests: a client namespace and a server namespace
// joined by a veth pair. The server runs smtp-sink on 198.51.100.2,
// 2001:db8:1::2 and (IPv4 only) 198.51.100.3. From the client,
// 2001:db8:1::3 refuses (no listener), 2001:db8:2::/64 is unreachable (an
// unreachable route), and 198.51.100.99 and 2001:db8:1::99 drop every
// packet (a permanent neighbour entry for a MAC nobody has: a real
// timeout). The client has three IPv4 and two IPv6 source addresses.
//
// Plans are built in this process from real DNS (Knot and unbound on
// loopback), then dialled by a child process (this test binary, run with
// `ip netns exec` in the client namespace, so that all its threads are
// there), which reports what it connected to and how long it took.

const childEnv = "STRATEGY_NETNS_CHILD"

// childJob is what the child is asked to do: one connection per host (a
// plan's host each time: each plan picks its sources anew), one after
// another.
type childJob struct {
	Hosts []Host `json:"hosts"`
	Mail  bool   `json:"mail"` // send a message on each
}

// childResult is one connection the child made (or failed to make).
type childResult struct {
	Addr    string        `json:"addr"`
	Source  string        `json:"source"`
	EHLO    string        `json:"ehlo"`
	Elapsed time.Duration `json:"elapsed"`
	Err     string        `json:"err"`
}

// TestNetnsChild is the child's side; it does nothing in a normal run.
func TestNetnsChild(t *testing.T) {
	spec := os.Getenv(childEnv)
	if spec == "" {
		t.Skip("run by TestNetns* in a network namespace")
	}
	var job childJob
	require.NoError(t, json.Unmarshal([]byte(spec), &job))
	enc := json.NewEncoder(os.Stdout)
	var d Dialer
	for _, host := range job.Hosts {
		start := time.Now()
		conn, err := d.DialHost(context.Background(), &host)
		r := childResult{Elapsed: time.Since(start)}
		if err != nil {
			r.Err = err.Error()
		} else {
			r.Addr, r.EHLO = conn.Candidate.Addr.String(), conn.EHLO
			if conn.Source.IsValid() {
				r.Source = conn.Source.String()
			}
			if job.Mail {
				if err := sendOne(conn, conn.EHLO); err != nil {
					r.Err = "smtp: " + err.Error()
				}
			}
			_ = conn.Close()
		}
		require.NoError(t, enc.Encode(r))
	}
}

// sendOne sends one small message on conn, just enough SMTP for the sink
// to record the connection's source.
func sendOne(conn *Conn, ehlo string) error {
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	tp := textproto.NewConn(conn)
	steps := []struct {
		cmd  string
		code int
	}{{"", 220}, {"EHLO " + ehlo, 250}, {"MAIL FROM:<a@example.org>", 250}, {"RCPT TO:<b@he.test>", 250}, {"DATA", 354}, {"Subject: t\r\n\r\nhello\r\n.", 250}, {"QUIT", 221}}
	for _, s := range steps {
		if s.cmd != "" {
			if err := tp.PrintfLine("%s", s.cmd); err != nil {
				return err
			}
		}
		if _, _, err := tp.ReadResponse(s.code); err != nil {
			return fmt.Errorf("after %q: %w", s.cmd, err)
		}
	}
	return nil
}

type netLab struct {
	link    *peertest.Link
	dns     *resolver.Resolver
	sink2v4 *peertest.Sink
	sink2v6 *peertest.Sink
	sink3v4 *peertest.Sink
}

func startNetLab(t *testing.T) *netLab {
	t.Helper()
	link := peertest.NewLink(t,
		[]string{"198.51.100.1/24", "198.51.100.11/24", "198.51.100.12/24", "198.51.100.13/24",
			"2001:db8:1::1/64", "2001:db8:1::11/64", "2001:db8:1::12/64"},
		[]string{"198.51.100.2/24", "198.51.100.3/24", "2001:db8:1::2/64", "2001:db8:1::3/64"})
	link.IP(t, link.Client, "-6", "route", "add", "unreachable", "2001:db8:2::/64")
	link.IP(t, link.Client, "neigh", "add", "198.51.100.99", "lladdr", "02:00:00:00:00:77", "nud", "permanent", "dev", link.ClientDev)
	link.IP(t, link.Client, "-6", "neigh", "add", "2001:db8:1::99", "lladdr", "02:00:00:00:00:77", "nud", "permanent", "dev", link.ClientDev)

	l := &netLab{link: link}
	l.sink2v4 = peertest.StartSink(t, peertest.SinkOptions{Addr: "198.51.100.2", Port: 25, Netns: link.Server})
	l.sink2v6 = peertest.StartSink(t, peertest.SinkOptions{Addr: "2001:db8:1::2", Port: 25, Netns: link.Server})
	l.sink3v4 = peertest.StartSink(t, peertest.SinkOptions{Addr: "198.51.100.3", Port: 25, Netns: link.Server})

	knot := peertest.StartKnot(t, peertest.KnotOptions{Zones: []peertest.Zone{{Name: "he.test", Records: `
both MX 10 mx-both
mx-both A 198.51.100.2
mx-both AAAA 2001:db8:1::2
refused MX 10 mx-refused
mx-refused A 198.51.100.3
mx-refused AAAA 2001:db8:1::3
unreachable MX 10 mx-unreachable
mx-unreachable A 198.51.100.2
mx-unreachable AAAA 2001:db8:2::2
dropped MX 10 mx-dropped
mx-dropped A 198.51.100.2
mx-dropped AAAA 2001:db8:1::99
dropped4 MX 10 mx-dropped4
mx-dropped4 A 198.51.100.99
mx-dropped4 AAAA 2001:db8:1::2
`}}})
	unbound := peertest.StartUnbound(t, peertest.UnboundOptions{Knot: knot})
	r, err := resolver.New(resolver.Config{Servers: []string{"udp://" + unbound.Addr}}, "resolver")
	require.NoError(t, err)
	l.dns = r
	return l
}

// plan builds the plan for domain with the given settings.
func (l *netLab) plan(t *testing.T, domain string, over map[string]string) Host {
	t.Helper()
	p := &Planner{Settings: settings(t, over), DNS: l.dns}
	plan, err := p.Plan(t.Context(), Destination{Domain: domain}, rules.Vars{})
	require.NoError(t, err)
	require.Len(t, plan.Hosts, 1)
	return plan.Hosts[0]
}

// run has the child dial each host once in the client namespace.
func (l *netLab) run(t *testing.T, hosts []Host, mail bool) []childResult {
	t.Helper()
	count := len(hosts)
	spec, err := json.Marshal(childJob{Hosts: hosts, Mail: mail})
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", l.link.Client, os.Args[0], "-test.run", "^TestNetnsChild$", "-test.count=1")
	cmd.Env = append(os.Environ(), childEnv+"="+string(spec))
	out, err := cmd.Output()
	require.NoError(t, err, "child: %s", out)
	var results []childResult
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "{") {
			continue
		}
		var r childResult
		require.NoError(t, json.Unmarshal([]byte(line), &r))
		results = append(results, r)
	}
	require.Len(t, results, count, "child output: %s", out)
	return results
}

func TestNetnsFallback(t *testing.T) {
	peertest.Need(t, "ip")
	l := startNetLab(t)
	const delay = 250 * time.Millisecond

	tests := []struct {
		name     string
		domain   string
		strategy string
		want     string
		within   time.Duration
	}{
		{"IPv6 refused: IPv4 at once", "refused.he.test", "ipv6_then_ipv4", "198.51.100.3:25", 100 * time.Millisecond},
		{"IPv6 unreachable: IPv4 at once", "unreachable.he.test", "ipv6_then_ipv4", "198.51.100.2:25", 100 * time.Millisecond},
		{"IPv6 dropped: IPv4 after the fallback delay", "dropped.he.test", "ipv6_then_ipv4", "198.51.100.2:25", delay + 100*time.Millisecond},
		{"IPv4 dropped: IPv6 after the fallback delay", "dropped4.he.test", "ipv4_then_ipv6", "[2001:db8:1::2]:25", delay + 100*time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			host := l.plan(t, tt.domain, map[string]string{"ip_strategy": `"` + tt.strategy + `"`, "connect": `"5s"`})
			require.Len(t, host.Candidates, 2)
			r := l.run(t, []Host{host}, false)[0]
			require.Empty(t, r.Err)
			t.Logf("connected to %s in %s", r.Addr, r.Elapsed)
			assert.Equal(t, tt.want, r.Addr)
			assert.Less(t, r.Elapsed, tt.within)
			if strings.Contains(tt.name, "dropped") {
				assert.GreaterOrEqual(t, r.Elapsed, delay, "the other family starts only after the delay")
			}
		})
	}

	t.Run("without happy eyeballs a dropped family costs the connect timeout", func(t *testing.T) {
		host := l.plan(t, "dropped.he.test", map[string]string{"ip_strategy": `"ipv6_then_ipv4"`, "connect": `"1s"`, "fallback_delay": `"off"`})
		r := l.run(t, []Host{host}, false)[0]
		require.Empty(t, r.Err)
		assert.Equal(t, "198.51.100.2:25", r.Addr)
		assert.GreaterOrEqual(t, r.Elapsed, time.Second)
		assert.Less(t, r.Elapsed, 2*time.Second)
	})

	t.Run("errors name address, family, source and reason", func(t *testing.T) {
		host := l.plan(t, "dropped.he.test", map[string]string{"ip_strategy": `"ipv6_only"`, "connect": `"300ms"`,
			"v6": `["2001:db8:1::11"]`})
		r := l.run(t, []Host{host}, false)[0]
		assert.Contains(t, r.Err, "dial [2001:db8:1::99]:25 (ipv6) from 2001:db8:1::11: connect timeout (300ms) expired")

		host = l.plan(t, "refused.he.test", map[string]string{"ip_strategy": `"ipv6_only"`})
		r = l.run(t, []Host{host}, false)[0]
		assert.Contains(t, r.Err, "dial [2001:db8:1::3]:25 (ipv6) from any source: connect: connection refused")
	})
}

func TestNetnsSources(t *testing.T) {
	peertest.Need(t, "ip")
	l := startNetLab(t)
	over := map[string]string{
		"ip_strategy": `[{"if": "retry_num == 0", "then": "ipv4_only"}, {"else": "ipv6_only"}]`,
		// 198.51.100.77 is not on the machine: picked first, it fails to
		// bind and the next source is used.
		"v4": `["198.51.100.11", {"address": "198.51.100.12", "ehlo": "out12.example.org"}, "198.51.100.13", "198.51.100.77"]`,
		"v6": `["2001:db8:1::11", "2001:db8:1::12"]`,
	}
	p := &Planner{Settings: settings(t, over), DNS: l.dns}
	const n = 50
	hosts := make([]Host, n)
	for i := range n {
		plan, err := p.Plan(t.Context(), Destination{Domain: "both.he.test"}, rules.Vars{RetryNum: int64(i % 2)})
		require.NoError(t, err)
		hosts[i] = plan.Hosts[0]
	}
	sent := map[string]int{}
	for _, r := range l.run(t, hosts, true) {
		require.Empty(t, r.Err)
		sent[r.Source]++
		if r.Source == "198.51.100.12" {
			assert.Equal(t, "out12.example.org", r.EHLO)
		} else {
			assert.Equal(t, "mx.example.org", r.EHLO)
		}
	}
	seen := map[string]int{}
	for _, m := range append(l.sink2v4.WaitMessages(t, n/2, 10*time.Second), l.sink2v6.WaitMessages(t, n/2, 10*time.Second)...) {
		seen[m.ClientAddr]++
		if m.ClientAddr == "198.51.100.12" {
			assert.Equal(t, "out12.example.org", m.Helo)
		}
	}
	assert.Equal(t, sent, seen, "the sink saw the sources the dialer reported")
	for _, src := range []string{"198.51.100.11", "198.51.100.12", "198.51.100.13", "2001:db8:1::11", "2001:db8:1::12"} {
		assert.Positive(t, seen[src], "source %s used (spread: %v)", src, seen)
	}
	assert.Zero(t, seen["198.51.100.77"])

	// A source the machine does not have, alone, is an error naming it.
	host := l.plan(t, "both.he.test", map[string]string{"ip_strategy": `"ipv4_only"`, "v4": `["198.51.100.77"]`})
	r := l.run(t, []Host{host}, false)[0]
	assert.Contains(t, r.Err, "from 198.51.100.77: source address is not on this machine")
}

// TestNetnsMemory: an nft rule in the client namespace drops every packet
// to 198.51.100.2 port 25, so that the IPv4 address of a host with IPv4
// and IPv6 times out. The first connection pays the fallback delay (or,
// without happy eyeballs, the connect timeout); the next ones, made by the
// same process, try IPv6 first and are as fast as a connection to the
// IPv6 address alone.
func TestNetnsMemory(t *testing.T) {
	peertest.Need(t, "ip", "nft")
	l := startNetLab(t)
	for _, args := range [][]string{
		{"add", "table", "inet", "blackhole"},
		{"add", "chain", "inet", "blackhole", "out", "{", "type", "filter", "hook", "output", "priority", "0", ";", "}"},
		{"add", "rule", "inet", "blackhole", "out", "ip", "daddr", "198.51.100.2", "tcp", "dport", "25", "drop"},
	} {
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		out, err := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", l.link.Client, "nft"}, args...)...).CombinedOutput()
		cancel()
		require.NoError(t, err, "nft %v: %s", args, out)
	}
	v4 := Candidate{Addr: netip.MustParseAddrPort("198.51.100.2:25"), EHLO: "mx.example.org"}
	v6 := Candidate{Addr: netip.MustParseAddrPort("[2001:db8:1::2]:25"), EHLO: "mx.example.org"}
	baseline := Host{Name: "mx-v6", Strategy: IPv6Only, FallbackDelay: Delay(DefaultFallbackDelay), ConnectTimeout: 5 * time.Second,
		Candidates: []Candidate{v6}}

	t.Run("happy eyeballs: the fallback delay once", func(t *testing.T) {
		both := Host{Name: "mx-both", Strategy: IPv4ThenIPv6, FallbackDelay: Delay(DefaultFallbackDelay), ConnectTimeout: 5 * time.Second,
			Candidates: []Candidate{v4, v6}}
		res := l.run(t, []Host{baseline, both, both, both}, false)
		for i, r := range res {
			require.Empty(t, r.Err, "connection %d", i)
			assert.Equal(t, v6.Addr.String(), r.Addr, "connection %d", i)
			t.Logf("connection %d: %s", i, r.Elapsed)
		}
		assert.GreaterOrEqual(t, res[1].Elapsed, DefaultFallbackDelay, "the first pays the delay")
		for _, r := range res[2:] {
			assert.Less(t, r.Elapsed, DefaultFallbackDelay/2, "the next ones do not (baseline %s)", res[0].Elapsed)
			assert.Less(t, r.Elapsed, res[0].Elapsed+50*time.Millisecond, "as fast as the baseline")
		}
	})
	t.Run("without happy eyeballs: the connect timeout once", func(t *testing.T) {
		both := Host{Name: "mx-both", Strategy: IPv4ThenIPv6, FallbackDelay: Off, ConnectTimeout: time.Second,
			Candidates: []Candidate{v4, v6}}
		res := l.run(t, []Host{baseline, both, both}, false)
		for i, r := range res {
			require.Empty(t, r.Err, "connection %d", i)
			assert.Equal(t, v6.Addr.String(), r.Addr, "connection %d", i)
			t.Logf("connection %d: %s", i, r.Elapsed)
		}
		assert.GreaterOrEqual(t, res[1].Elapsed, time.Second, "the first pays the connect timeout")
		assert.Less(t, res[2].Elapsed, DefaultFallbackDelay/2, "the next does not (baseline %s)", res[0].Elapsed)
		assert.Less(t, res[2].Elapsed, res[0].Elapsed+50*time.Millisecond, "as fast as the baseline")
	})
}
