package peertest

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// UnboundOptions configures StartUnbound.
type UnboundOptions struct {
	// Knot is the authoritative server the stub zones point at; it may be
	// nil for a resolver that knows no zone (it then refuses everything).
	Knot *Knot
	// Zones are the stub zones to resolve at Knot; nil means every zone
	// Knot serves.
	Zones []string
	// TrustAnchors are DS records in presentation form (see Knot.DS); nil
	// means the DS of every signed zone Knot serves among Zones. Give an
	// empty, non-nil slice for no trust anchor at all.
	TrustAnchors []string
	// Extra are raw lines added to the "server:" clause, for example
	// "cache-max-ttl: 5" or "val-log-level: 2".
	Extra []string
	// Stubs are more zones, served elsewhere than Knot (such as a
	// BogusZone, or a dead address for a zone that cannot be resolved).
	Stubs []Stub
	// TLS, when set, makes unbound also serve DNS over TLS (RFC 7858) on
	// TLSAddr with this certificate.
	TLS *Leaf
	// Addr and Port, if set, are where the resolver listens (Addr), for a
	// resolver that a libc stub resolver must reach: resolv.conf has no
	// port, so such a client needs port 53 of a loopback address of its
	// own, such as 127.88.0.53. Addr must be an IPv4 loopback address.
	// Default: 127.0.0.1 and a free port.
	Addr string
	Port int
}

// Stub is a zone unbound resolves at an address other than Knot's.
type Stub struct {
	// Zone is the zone's apex.
	Zone string
	// Addr is the server, "IP:port".
	Addr string
	// TrustAnchor is the zone's DS record, or "" for an unanchored
	// (insecure) zone.
	TrustAnchor string
}

// Unbound is a running unbound validating resolver.
type Unbound struct {
	// Addr is the resolver's address, "127.0.0.1:port" unless
	// UnboundOptions.Addr says otherwise, UDP and TCP.
	Addr string
	// Host is 127.0.0.1, or UnboundOptions.Addr.
	Host string
	// Port is the resolver's port.
	Port int
	// TLSAddr is where it serves DNS over TLS ("127.0.0.1:port"), when
	// UnboundOptions.TLS is set.
	TLSAddr string
	// Dir is the instance directory; ConfigFile is its unbound.conf.
	Dir, ConfigFile string

	log  string
	proc *proc
}

// StartUnbound starts unbound in the foreground (unbound -d) as a
// validating resolver ("validator iterator") that only knows the stub zones
// at Knot, and waits until it answers. It is stopped and its files removed
// when the test ends.
//
// What makes it a closed lab resolver:
//   - local-zone "." refuse answers REFUSED for any name outside the stub
//     zones, each of which is a transparent local zone; local-zone "test."
//     nodefault undoes unbound's built-in empty "test." zone (RFC 6761);
//   - no root trust anchor and no auto-trust-anchor-file: only the given
//     DS records are anchors, so a zone under one answers with AD when it
//     validates and SERVFAIL when it is bogus, and a zone outside any
//     anchor is insecure (no AD);
//   - outgoing-interface 127.0.0.1 and do-ip6 no: unbound cannot send a
//     query off the machine even if it wanted to reach a root server;
//   - do-not-query-localhost no: Knot is on 127.0.0.1;
//   - chroot "" and username "": it runs as root in the instance directory;
//   - so-reuseport no: a port clash fails loudly instead of sharing.
func StartUnbound(t testing.TB, o UnboundOptions) *Unbound {
	t.Helper()
	Need(t, "unbound", "unbound-checkconf")
	dir := instanceDir(t, "unbound")
	if o.Addr == "" {
		o.Addr = "127.0.0.1"
	}
	if o.Port == 0 {
		o.Port = FreePort(t)
	}
	u := &Unbound{
		Host:       o.Addr,
		Port:       o.Port,
		Dir:        dir,
		ConfigFile: filepath.Join(dir, "unbound.conf"),
		log:        filepath.Join(dir, "unbound.log"),
	}
	u.Addr = net.JoinHostPort(u.Host, strconv.Itoa(u.Port))

	zones := o.Zones
	if zones == nil && o.Knot != nil {
		zones = o.Knot.Zones()
	}
	if len(zones) > 0 && o.Knot == nil {
		t.Fatalf("peertest: unbound stub zones need a Knot")
	}
	anchors := o.TrustAnchors
	if anchors == nil && o.Knot != nil {
		for _, z := range zones {
			if o.Knot.Signed(z) {
				anchors = append(anchors, o.Knot.DS(t, z))
			}
		}
	}

	var b strings.Builder
	fmt.Fprintf(&b, `# peertest unbound: validating, loopback only, knows only the stub zones.
server:
  interface: %[4]s@%[1]d
  port: %[1]d
  do-ip4: yes
  do-ip6: no
  do-udp: yes
  do-tcp: yes
  so-reuseport: no
  outgoing-interface: 127.0.0.1
  access-control: 127.0.0.0/8 allow
  num-threads: 1
  chroot: ""
  username: ""
  directory: "%[2]s"
  pidfile: "%[2]s/unbound.pid"
  logfile: "%[3]s"
  use-syslog: no
  log-time-ascii: yes
  verbosity: 1
  val-log-level: 2
  module-config: "validator iterator"
  do-not-query-localhost: no
  local-zone: "test." nodefault
  local-zone: "." refuse
`, u.Port, dir, u.log, u.Host)
	for _, z := range zones {
		fmt.Fprintf(&b, "  local-zone: \"%s.\" transparent\n", canonicalZone(z))
	}
	if o.TLS != nil {
		tlsPort := FreePort(t)
		u.TLSAddr = net.JoinHostPort(u.Host, strconv.Itoa(tlsPort))
		fmt.Fprintf(&b, "  interface: %s@%d\n  tls-port: %d\n  tls-service-key: \"%s\"\n  tls-service-pem: \"%s\"\n",
			u.Host, tlsPort, tlsPort, o.TLS.KeyFile, o.TLS.ChainFile)
	}
	for _, st := range o.Stubs {
		fmt.Fprintf(&b, "  local-zone: \"%s.\" transparent\n", canonicalZone(st.Zone))
		if st.TrustAnchor != "" {
			anchors = append(anchors, st.TrustAnchor)
		}
	}
	for _, a := range anchors {
		fmt.Fprintf(&b, "  trust-anchor: \"%s\"\n", a)
	}
	for _, l := range o.Extra {
		fmt.Fprintf(&b, "  %s\n", l)
	}
	for _, z := range zones {
		fmt.Fprintf(&b, "stub-zone:\n  name: \"%s.\"\n  stub-addr: %s@%d\n", canonicalZone(z), o.Knot.Host, o.Knot.Port)
	}
	for _, st := range o.Stubs {
		host, port, err := net.SplitHostPort(st.Addr)
		if err != nil {
			t.Fatalf("peertest: stub %s: %v", st.Zone, err)
		}
		fmt.Fprintf(&b, "stub-zone:\n  name: \"%s.\"\n  stub-addr: %s@%s\n", canonicalZone(st.Zone), host, port)
	}
	b.WriteString("remote-control:\n  control-enable: no\n")
	writeFile(t, u.ConfigFile, []byte(b.String()))

	if out, err := runErr(10*time.Second, nil, bin(t, "unbound-checkconf"), u.ConfigFile); err != nil {
		t.Fatalf("peertest: unbound-checkconf: %v\n%s\n%s", err, out, b.String())
	}
	u.proc = startProc(t, "unbound "+u.Addr, filepath.Join(dir, "unbound.out"), 3*time.Second,
		[]string{u.log}, nil, bin(t, "unbound"), "-d", "-c", u.ConfigFile)
	probe := "."
	if len(zones) > 0 {
		probe = zones[0]
	}
	// Any reply means it serves; a bogus zone answering SERVFAIL is a
	// reply too, which tests of bogus zones need.
	u.proc.waitReady(t, func(ctx context.Context) error {
		_, err := exchange(ctx, u.Addr, probe, dns.TypeSOA, true, "udp")
		return err
	})
	return u
}

// Log returns unbound's log.
func (u *Unbound) Log() string { return readFile(u.log) }
