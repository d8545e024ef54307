package peertest

import (
	"context"
	"fmt"
	"net"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// BogusZone is a zone signed with signatures that expired long ago, served
// by NSD: a validating resolver anchored at its DS answers SERVFAIL for it
// ("bogus"), while the data is there with checking disabled.
//
// Knot cannot serve one: it re-signs a zone whose signatures have expired.
// NSD serves a zone file as it is, so the file is signed once with
// ldns-signzone and explicit inception and expiration dates in the past.
type BogusZone struct {
	// Name is the zone's apex, without the final dot.
	Name string
	// Addr is NSD's address, "127.0.0.1:port", UDP and TCP.
	Addr string
	// Host is 127.0.0.1 and Port NSD's port.
	Host string
	Port int
	// DS is the zone's DS record, for a trust anchor.
	DS string
	// Dir is the instance directory.
	Dir string

	proc *proc
}

// StartBogusZone signs name's records (zone-file lines relative to the
// zone; the harness adds the SOA, NS and ns A) with signatures valid from
// 2019-01-01 to 2020-01-01, and serves the zone with NSD on a free loopback
// port until the test ends.
func StartBogusZone(t testing.TB, name, records string) *BogusZone {
	t.Helper()
	Need(t, "nsd", "ldns-keygen", "ldns-signzone", "ldns-key2ds")
	name = canonicalZone(name)
	dir := instanceDir(t, "nsd")
	z := &BogusZone{Name: name, Host: "127.0.0.1", Port: FreePort(t), Dir: dir}
	z.Addr = net.JoinHostPort(z.Host, strconv.Itoa(z.Port))

	zoneFile := filepath.Join(dir, name+".zone")
	writeFile(t, zoneFile, []byte(fmt.Sprintf(`$ORIGIN %[1]s.
$TTL 60
@ 60 IN SOA ns.%[1]s. hostmaster.%[1]s. 1 60 60 3600 60
@ NS ns
ns A 127.0.0.1
%[2]s
`, name, records)))

	// ldns-keygen writes K<name>.+013+<tag>.{key,private,ds} in the
	// working directory and prints the base name.
	base := strings.TrimSpace(string(runIn(t, dir, "ldns-keygen", "-a", "ECDSAP256SHA256", "-k", name)))
	if base == "" {
		t.Fatalf("peertest: ldns-keygen printed no key name")
	}
	runIn(t, dir, "ldns-signzone", "-i", "20190101000000", "-e", "20200101000000",
		"-f", zoneFile+".signed", zoneFile, base)
	ds := strings.TrimSpace(string(runIn(t, dir, "ldns-key2ds", "-n", "-2", base+".key")))
	z.DS = strings.Join(strings.Fields(ds), " ")

	conf := filepath.Join(dir, "nsd.conf")
	writeFile(t, conf, []byte(fmt.Sprintf(`server:
  ip-address: 127.0.0.1@%[1]d
  port: %[1]d
  do-ip6: no
  reuseport: no
  username: ""
  chroot: ""
  zonesdir: "%[2]s"
  database: ""
  zonelistfile: "%[2]s/zone.list"
  xfrdfile: "%[2]s/xfrd.state"
  xfrdir: "%[2]s"
  pidfile: "%[2]s/nsd.pid"
  logfile: "%[2]s/nsd.log"
  server-count: 1
  verbosity: 1
remote-control:
  control-enable: no
zone:
  name: "%[3]s."
  zonefile: "%[3]s.zone.signed"
`, z.Port, dir, name)))
	if out, err := runErr(10*time.Second, nil, bin(t, "nsd-checkconf"), conf); err != nil {
		t.Fatalf("peertest: nsd-checkconf: %v\n%s", err, out)
	}
	z.proc = startProc(t, "nsd "+z.Addr, filepath.Join(dir, "nsd.out"), 3*time.Second,
		[]string{filepath.Join(dir, "nsd.log")}, nil, bin(t, "nsd"), "-d", "-c", conf)
	z.proc.waitReady(t, func(ctx context.Context) error {
		m, err := exchange(ctx, z.Addr, name, dns.TypeSOA, true, "udp")
		if err != nil {
			return err
		}
		if !m.Authoritative || !hasRRSIG(m, dns.TypeSOA) {
			return fmt.Errorf("%s not served signed yet (rcode %s)", name, dns.RcodeToString[m.Rcode])
		}
		return nil
	})
	return z
}

// Stub is where unbound sends the queries of one zone: StartUnbound's
// UnboundOptions.Stubs.
func (z *BogusZone) Stub() Stub { return Stub{Zone: z.Name, Addr: z.Addr, TrustAnchor: z.DS} }

// runIn runs a command in dir and returns its standard output, failing the
// test with its output on error.
func runIn(t testing.TB, dir string, name string, args ...string) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin(t, name), args...)
	cmd.Dir = dir
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("peertest: %s %s: %v\n%s", name, strings.Join(args, " "), err, stderr.String())
	}
	return out
}
