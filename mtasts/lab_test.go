package mtasts

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/stretchr/testify/require"

	"github.com/seed7b014b84/caddy-smtp/internal/peertest"
	"github.com/seed7b014b84/caddy-smtp/resolver"
)

// The lab's domain: Knot serves the zone sts.test, whose apex publishes
// an MTA-STS policy served over HTTPS at policyIP.
const (
	labDomain = "sts.test"
	policyIP  = "127.85.0.1"
)

// lab is Knot serving sts.test, unbound resolving it, and OpenSSL's
// s_server serving the policy on mta-sts.sts.test.
type lab struct {
	knot    *peertest.Knot
	unbound *peertest.Unbound
	ca      *peertest.CA
	https   *peertest.HTTPS
	dns     *resolver.Resolver
}

// labRecords is the zone with the _mta-sts record's id (no record for
// ""). The records a test changes have a TTL of 0, so that neither unbound
// nor our resolver keeps them past a Knot reload.
func labRecords(id string) string {
	txt := ""
	if id != "" {
		txt = fmt.Sprintf("_mta-sts 0 TXT \"v=STSv1; id=%s;\"\n", id)
	}
	return txt + `mta-sts 0 A ` + policyIP + `
_mta-sts.multi TXT "v=STSv1; id=a;"
_mta-sts.multi TXT "v=STSv1; id=b;"
_mta-sts.nohost TXT "v=STSv1; id=a;"
_mta-sts.bad TXT "v=STSv1; id=a b;"
_mta-sts.spf TXT "v=spf1 -all"
`
}

func startLab(t *testing.T) *lab {
	t.Helper()
	knot := peertest.StartKnot(t, peertest.KnotOptions{Zones: []peertest.Zone{
		{Name: labDomain, Records: labRecords("20261122T000000"), TTL: 1},
	}})
	unbound := peertest.StartUnbound(t, peertest.UnboundOptions{Knot: knot})
	ca := peertest.NewCA(t, "mta-sts test CA")
	https := peertest.StartHTTPS(t, peertest.HTTPSOptions{
		Host:      policyIP,
		Leaf:      ca.Issue(t, "mta-sts."+labDomain),
		Responses: map[string][]byte{WellKnownPath: policyResponse(policyV1)},
	})
	dns, err := resolver.New(resolver.Config{
		Servers: []string{"udp://" + unbound.Addr},
		Cache:   &resolver.CacheConfig{Size: -1},
	}, "resolver")
	require.NoError(t, err)
	return &lab{knot: knot, unbound: unbound, ca: ca, https: https, dns: dns}
}

// fetcher returns a fetcher that trusts the lab's CA and reaches its
// HTTPS server.
func (l *lab) fetcher() *Fetcher {
	return &Fetcher{DNS: l.dns, RootCAs: l.ca.Pool(), Timeout: 5 * time.Second, Port: l.https.Port}
}

// deadDNS is a resolver whose only server is a loopback port nobody
// listens on: every lookup fails at once, temporarily.
func deadDNS(t *testing.T) *resolver.Resolver {
	t.Helper()
	noTCP := false
	r, err := resolver.New(resolver.Config{
		Servers:       []string{"udp://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(peertest.FreePort(t)))},
		Timeout:       caddy.Duration(300 * time.Millisecond),
		Attempts:      1,
		TryTCPOnError: &noTCP,
		Cache:         &resolver.CacheConfig{Size: -1},
	}, "resolver")
	require.NoError(t, err)
	return r
}

const (
	policyV1 = "version: STSv1\r\nmode: enforce\r\nmx: mx1.sts.test\r\nmx: *.mx.sts.test\r\nmax_age: 86400\r\n"
	policyV2 = "version: STSv1\nmode: testing\nmx: mx2.sts.test\nmax_age: 604800\n"
)

// policyResponse is a 200 response carrying body as text/plain.
func policyResponse(body string) []byte {
	return peertest.HTTPResponse(200, []string{"Content-Type: text/plain; charset=utf-8"}, []byte(body))
}

// aliasDNS answers address lookups of alias with those of target, and
// everything else as Resolver does.
type aliasDNS struct {
	Resolver
	alias, target string
}

func (a aliasDNS) LookupA(ctx context.Context, host string) (*resolver.IPResult, error) {
	if host == a.alias {
		host = a.target
	}
	return a.Resolver.LookupA(ctx, host)
}

func (a aliasDNS) LookupAAAA(ctx context.Context, host string) (*resolver.IPResult, error) {
	if host == a.alias {
		host = a.target
	}
	return a.Resolver.LookupAAAA(ctx, host)
}

// silentListener listens on host, accepts connections and never writes
// to them, until the test ends; it returns the port.
func silentListener(t *testing.T, host string) int {
	t.Helper()
	ln, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	require.NoError(t, err)
	var conns []net.Conn
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				for _, c := range conns {
					_ = c.Close()
				}
				return
			}
			conns = append(conns, c)
		}
	}()
	t.Cleanup(func() {
		_ = ln.Close()
		<-done
	})
	return ln.Addr().(*net.TCPAddr).Port
}
