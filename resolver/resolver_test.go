package resolver

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/seed7b014b84/caddy-smtp/internal/peertest"
)

// lab is the DNS of the tests: Knot serving a signed and an unsigned zone,
// NSD serving a zone whose signatures expired, and unbound validating them
// all, plus a zone delegated to a server that does not serve it.
type lab struct {
	knot    *peertest.Knot
	unbound *peertest.Unbound
	ca      *peertest.CA
}

func bigTXT() string {
	var b strings.Builder
	for i := range 30 {
		fmt.Fprintf(&b, "big TXT \"%03d %s\"\n", i, strings.Repeat("x", 150))
	}
	return b.String()
}

// tlsaData is the association data of the test TLSA record.
const tlsaData = "8f2a8c2e4d9b7d1f0a6c5e3b2d1f0e9c8b7a6f5e4d3c2b1a0f9e8d7c6b5a4f3e"

func startLab(t testing.TB) *lab {
	t.Helper()
	knot := peertest.StartKnot(t, peertest.KnotOptions{Zones: []peertest.Zone{
		{Name: "example.test", Signed: true, Records: exampleRecords()},
		{Name: "unsigned.test", Records: `
@ MX 10 mx
mx A 127.0.0.40
*.mix MX 10 mx.unsigned.test.
`},
	}})
	bogus := peertest.StartBogusZone(t, "bogus.test", "@ MX 10 mx\nmx A 127.0.0.50\n")
	// lame.test is delegated to Knot, which does not serve it: unbound
	// gets REFUSED from its only server and answers SERVFAIL.
	ca := peertest.NewCA(t, "resolver test CA")
	unbound := peertest.StartUnbound(t, peertest.UnboundOptions{
		Knot:  knot,
		Stubs: []peertest.Stub{bogus.Stub(), {Zone: "lame.test", Addr: knot.Addr}},
		TLS:   ca.Issue(t, "dns.lab.test"),
	})
	return &lab{knot: knot, unbound: unbound, ca: ca}
}

func (l *lab) resolver(t testing.TB, cfg Config) *Resolver {
	t.Helper()
	if cfg.Servers == nil {
		cfg.Servers = []string{"udp://" + l.unbound.Addr}
	}
	r, err := New(cfg, "resolver")
	require.NoError(t, err)
	return r
}

func TestAgainstKnotAndUnbound(t *testing.T) {
	l := startLab(t)
	ctx := t.Context()
	r := l.resolver(t, Config{})
	require.True(t, r.TrustsAD(), "a resolver on loopback is trusted to validate")

	t.Run("MX ordering, secure", func(t *testing.T) {
		mx, err := r.LookupMX(ctx, "Example.Test.")
		require.NoError(t, err)
		assert.Equal(t, "example.test", mx.Domain)
		assert.False(t, mx.Implicit)
		assert.Equal(t, Secure, mx.Security)
		require.Len(t, mx.Hosts, 3)
		assert.ElementsMatch(t, []MX{{"mx1.example.test", 10}, {"mx3.example.test", 10}}, mx.Hosts[:2])
		assert.Equal(t, MX{"mx2.example.test", 20}, mx.Hosts[2])
	})
	t.Run("implicit MX", func(t *testing.T) {
		mx, err := r.LookupMX(ctx, "implicit.example.test")
		require.NoError(t, err)
		assert.True(t, mx.Implicit)
		assert.Equal(t, []MX{{"implicit.example.test", 0}}, mx.Hosts)
		assert.Equal(t, Secure, mx.Security, "a validated NODATA")
	})
	t.Run("null MX", func(t *testing.T) {
		_, err := r.LookupMX(ctx, "nullmx.example.test")
		require.ErrorIs(t, err, ErrNullMX)
		assert.True(t, IsPermanent(err))
	})
	t.Run("NXDOMAIN is permanent", func(t *testing.T) {
		_, err := r.LookupMX(ctx, "nothere.example.test")
		require.ErrorIs(t, err, ErrNXDomain)
		assert.True(t, IsPermanent(err))
		var e *Error
		require.ErrorAs(t, err, &e)
		assert.Equal(t, dns.RcodeNameError, e.Rcode)
		assert.Equal(t, "udp://"+l.unbound.Addr, e.Server)
		assert.Equal(t, Secure, e.Security(), "a validated denial of existence")
	})
	t.Run("NODATA is permanent", func(t *testing.T) {
		_, err := r.LookupAAAA(ctx, "mx2.example.test")
		require.ErrorIs(t, err, ErrNoData)
		assert.True(t, IsPermanent(err))
	})
	t.Run("SERVFAIL is temporary", func(t *testing.T) {
		_, err := r.LookupMX(ctx, "lame.test")
		require.ErrorIs(t, err, ErrServFail)
		assert.True(t, IsTemporary(err))
		assert.NotErrorIs(t, err, ErrBogus)
		assert.Contains(t, err.Error(), "rcode SERVFAIL")
	})
	t.Run("REFUSED is temporary", func(t *testing.T) {
		_, err := r.LookupMX(ctx, "example.com")
		require.ErrorIs(t, err, ErrRefused)
		assert.True(t, IsTemporary(err))
	})
	t.Run("bogus zone", func(t *testing.T) {
		_, err := r.LookupMX(ctx, "bogus.test")
		require.ErrorIs(t, err, ErrBogus)
		assert.True(t, IsTemporary(err))
		var e *Error
		require.ErrorAs(t, err, &e)
		assert.Equal(t, Bogus, e.Security())
	})
	t.Run("CNAME'd MX target", func(t *testing.T) {
		mx, err := r.LookupMX(ctx, "cname-mx.example.test")
		require.NoError(t, err)
		require.Equal(t, []MX{{"alias.example.test", 10}}, mx.Hosts)
		ip, err := r.LookupA(ctx, mx.Hosts[0].Host)
		require.NoError(t, err)
		assert.Equal(t, "mx1.example.test", ip.Name)
		assert.Equal(t, []netip.Addr{netip.MustParseAddr("127.0.0.11")}, ip.Addrs)
		assert.Equal(t, Secure, ip.Security)
		ip6, err := r.LookupAAAA(ctx, "alias.example.test")
		require.NoError(t, err)
		assert.Equal(t, []netip.Addr{netip.MustParseAddr("::1")}, ip6.Addrs)
	})
	t.Run("truncated answer is asked again over TCP", func(t *testing.T) {
		before := testutil.ToFloat64(queries.WithLabelValues("TXT", "tcp"))
		txt, err := r.LookupTXT(ctx, "big.example.test")
		require.NoError(t, err)
		assert.Len(t, txt.Records, 30)
		assert.Equal(t, Secure, txt.Security)
		assert.Equal(t, before+1, testutil.ToFloat64(queries.WithLabelValues("TXT", "tcp")))
	})
	t.Run("unsigned zone is insecure", func(t *testing.T) {
		mx, err := r.LookupMX(ctx, "unsigned.test")
		require.NoError(t, err)
		assert.Equal(t, []MX{{"mx.unsigned.test", 10}}, mx.Hosts)
		assert.Equal(t, Insecure, mx.Security)
	})
	t.Run("TLSA", func(t *testing.T) {
		tlsa, err := r.LookupTLSA(ctx, 25, "mx1.example.test")
		require.NoError(t, err)
		assert.Equal(t, Secure, tlsa.Security)
		require.Len(t, tlsa.Records, 1)
		assert.Equal(t, TLSA{Usage: 3, Selector: 1, MatchingType: 1, Data: mustHex(t, tlsaData)}, tlsa.Records[0])
	})
	t.Run("AD not trusted when told so", func(t *testing.T) {
		no := false
		r := l.resolver(t, Config{TrustAD: &no})
		mx, err := r.LookupMX(ctx, "example.test")
		require.NoError(t, err)
		assert.Equal(t, Insecure, mx.Security)
	})
	t.Run("an authoritative server sets no AD", func(t *testing.T) {
		r := l.resolver(t, Config{Servers: []string{"udp://" + l.knot.Addr, "tcp://" + l.knot.Addr}})
		mx, err := r.LookupMX(ctx, "example.test")
		require.NoError(t, err)
		assert.Equal(t, Insecure, mx.Security)
		assert.Len(t, mx.Hosts, 3)
	})
	t.Run("DNS over TLS", func(t *testing.T) {
		r := l.resolver(t, Config{Servers: []string{"tls://" + l.unbound.TLSAddr + "#dns.lab.test"}})
		r.rootCAs = l.ca.Pool()
		require.True(t, r.TrustsAD())
		before := testutil.ToFloat64(queries.WithLabelValues("MX", "tls"))
		mx, err := r.LookupMX(ctx, "example.test")
		require.NoError(t, err)
		assert.Equal(t, Secure, mx.Security)
		assert.Len(t, mx.Hosts, 3)
		assert.Equal(t, before+1, testutil.ToFloat64(queries.WithLabelValues("MX", "tls")))

		wrong := l.resolver(t, Config{Servers: []string{"tls://" + l.unbound.TLSAddr + "#other.lab.test"}, Attempts: 1})
		wrong.rootCAs = l.ca.Pool()
		_, err = wrong.LookupMX(ctx, "example.test")
		require.Error(t, err)
		assert.True(t, IsTemporary(err))
		assert.Contains(t, err.Error(), "certificate")
	})
	t.Run("failures are logged with server and rcode", func(t *testing.T) {
		core, logs := observer.New(zap.WarnLevel)
		r := l.resolver(t, Config{Attempts: 1})
		r.SetLogger(zap.New(core))
		_, err := r.LookupMX(ctx, "lame.test")
		require.ErrorIs(t, err, ErrServFail)
		entries := logs.FilterMessage("dns server failed a query").All()
		require.NotEmpty(t, entries)
		fields := entries[0].ContextMap()
		assert.Equal(t, "udp://"+l.unbound.Addr, fields["server"])
		assert.Equal(t, "SERVFAIL", fields["rcode"])
		assert.Equal(t, "lame.test", fields["name"])
	})
	t.Run("TTL expiry observed", func(t *testing.T) {
		ip, err := r.LookupA(ctx, "short.example.test")
		require.NoError(t, err)
		require.Equal(t, "127.0.0.30", ip.Addrs[0].String())
		hits := testutil.ToFloat64(cacheHits)
		l.knot.Reload(t, "example.test", strings.Replace(exampleRecords(), "short 2 A 127.0.0.30", "short 2 A 127.0.0.31", 1))
		ip, err = r.LookupA(ctx, "short.example.test")
		require.NoError(t, err)
		assert.Equal(t, "127.0.0.30", ip.Addrs[0].String(), "within its TTL the cached answer is used")
		assert.Equal(t, hits+1, testutil.ToFloat64(cacheHits))
		require.Eventually(t, func() bool {
			ip, err := r.LookupA(ctx, "short.example.test")
			return err == nil && ip.Addrs[0].String() == "127.0.0.31"
		}, 10*time.Second, 250*time.Millisecond, "after its 2 s TTL the new address is seen")
	})
	t.Run("negative answers are cached", func(t *testing.T) {
		_, err := r.LookupMX(ctx, "nothere2.example.test")
		require.ErrorIs(t, err, ErrNXDomain)
		hits := testutil.ToFloat64(cacheHits)
		_, err = r.LookupMX(ctx, "nothere2.example.test")
		require.ErrorIs(t, err, ErrNXDomain)
		assert.Equal(t, hits+1, testutil.ToFloat64(cacheHits))
	})
	t.Run("concurrent identical questions share one query", func(t *testing.T) {
		r := l.resolver(t, Config{})
		before := testutil.ToFloat64(queries.WithLabelValues("MX", "udp"))
		var wg sync.WaitGroup
		errs := make(chan error, 50)
		start := make(chan struct{})
		for range 50 {
			wg.Go(func() {
				<-start
				_, err := r.LookupMX(ctx, "singleflight.mix.unsigned.test")
				errs <- err
			})
		}
		close(start)
		wg.Wait()
		close(errs)
		for err := range errs {
			require.NoError(t, err)
		}
		assert.Equal(t, before+1, testutil.ToFloat64(queries.WithLabelValues("MX", "udp")))
	})
}

// exampleRecords are the records of the signed zone example.test.
func exampleRecords() string {
	return `
@ MX 10 mx1
@ MX 20 mx2
@ MX 10 mx3
mx1 A 127.0.0.11
mx1 AAAA ::1
mx2 A 127.0.0.12
mx3 A 127.0.0.13
cname-mx MX 10 alias
alias CNAME mx1
implicit A 127.0.0.20
nullmx MX 0 .
short 2 A 127.0.0.30
_25._tcp.mx1 TLSA 3 1 1 ` + tlsaData + `
` + bigTXT()
}

func mustHex(t testing.TB, s string) []byte {
	t.Helper()
	b := make([]byte, len(s)/2)
	_, err := fmt.Sscanf(s, "%x", &b)
	require.NoError(t, err)
	return b
}

// TestTimeout asks a server that never answers: a UDP socket on loopback
// that nobody reads.
func TestTimeout(t *testing.T) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	require.NoError(t, err)
	defer pc.Close()
	no := false
	r, err := New(Config{
		Servers:       []string{"udp://" + pc.LocalAddr().String()},
		Timeout:       caddy.Duration(200 * time.Millisecond),
		Attempts:      2,
		TryTCPOnError: &no,
	}, "resolver")
	require.NoError(t, err)
	start := time.Now()
	_, err = r.LookupMX(t.Context(), "example.test")
	require.ErrorIs(t, err, ErrTimeout)
	assert.True(t, IsTemporary(err))
	assert.Less(t, time.Since(start), 2*time.Second, "two attempts of 200 ms")
	assert.Contains(t, err.Error(), pc.LocalAddr().String())
}

// TestCancelled checks that a caller's cancellation ends its wait.
func TestCancelled(t *testing.T) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	require.NoError(t, err)
	defer pc.Close()
	r, err := New(Config{Servers: []string{"udp://" + pc.LocalAddr().String()}, Timeout: caddy.Duration(5 * time.Second)}, "resolver")
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err = r.LookupA(ctx, "example.test")
	require.Error(t, err)
	assert.True(t, errors.Is(err, ErrTimeout) || errors.Is(err, context.DeadlineExceeded), err.Error())
	assert.Less(t, time.Since(start), time.Second)
}

func TestPoolSharesAcrossReloads(t *testing.T) {
	cfg := Config{Servers: []string{"udp://127.0.0.1:53"}, Attempts: 1}
	r1, release1, err := Get(cfg, "resolver")
	require.NoError(t, err)
	r2, release2, err := Get(cfg, "resolver")
	require.NoError(t, err)
	assert.Same(t, r1, r2, "the same settings share one resolver (and cache)")
	release1()
	r3, release3, err := Get(Config{Servers: []string{"udp://127.0.0.1:53"}, Attempts: 2}, "resolver")
	require.NoError(t, err)
	assert.NotSame(t, r1, r3, "other settings get another resolver")
	release2()
	release3()
	r4, release4, err := Get(cfg, "resolver")
	require.NoError(t, err)
	defer release4()
	assert.NotSame(t, r1, r4, "once every user released it, it is gone")
}
