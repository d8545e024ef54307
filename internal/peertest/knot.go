package peertest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// Zone is one zone served by Knot.
type Zone struct {
	// Name is the zone's apex, with or without the final dot.
	Name string
	// Signed makes Knot sign the zone (ECDSA P-256 SHA-256, NSEC).
	Signed bool
	// Records are zone-file lines. Names may be relative to the zone
	// ("mx1", "@") or absolute ("mx1.example.test."). The harness adds
	// $ORIGIN, $TTL, the SOA and "@ NS ns" with "ns A 127.0.0.1": do not
	// give an SOA or apex NS, and leave the owner name "ns" to the harness.
	Records string
	// TTL is the default TTL and the SOA minimum (negative caching TTL),
	// in seconds; 0 means 60.
	TTL int
}

// KnotOptions configures StartKnot.
type KnotOptions struct {
	// Zones are the zones to serve.
	Zones []Zone
	// AllowUpdate lets clients on loopback change every zone with RFC 2136
	// dynamic updates and read it whole with AXFR (a Knot ACL with the
	// update and transfer actions), for tests of DNS providers. Knot then
	// keeps the changes in its journal (the zone files are never
	// rewritten, zonefile-sync being -1).
	AllowUpdate bool
}

// Knot is a running Knot DNS authoritative server.
type Knot struct {
	// Addr is the server on 127.0.0.1 ("127.0.0.1:port"), UDP and TCP.
	Addr string
	// Addr6 is the same server on [::1], or "" without IPv6 loopback.
	Addr6 string
	// Host is 127.0.0.1.
	Host string
	// Port is the port of Addr and Addr6.
	Port int
	// Dir is the instance directory; ConfigFile is its knot.conf.
	Dir, ConfigFile string

	mu    sync.Mutex
	zones map[string]*knotZone // by canonical name without final dot
	order []string
	proc  *proc
}

type knotZone struct {
	Zone
	serial uint32 // serial of the zone file
}

// StartKnot starts knotd in the foreground with the given zones and waits
// until each is loaded (SOA answered with AA) and, for signed zones,
// signed (DNSKEY answered with an RRSIG). It is stopped and its files
// removed when the test ends.
//
// Knot runs as root (no "user:" setting) with its database, key store
// (KASP database under the storage directory), run directory and control
// socket in the instance directory. zonefile-sync is -1 so Knot never
// rewrites our zone files (a signed zone's serial therefore differs from
// the file's: Knot increments it when it signs).
func StartKnot(t testing.TB, o KnotOptions) *Knot {
	t.Helper()
	Need(t, "knotd", "knotc", "keymgr")
	dir := instanceDir(t, "knot")
	k := &Knot{
		Host:       "127.0.0.1",
		Port:       FreePort(t),
		Dir:        dir,
		ConfigFile: filepath.Join(dir, "knot.conf"),
		zones:      map[string]*knotZone{},
	}
	k.Addr = net.JoinHostPort(k.Host, strconv.Itoa(k.Port))
	listen := fmt.Sprintf("127.0.0.1@%d", k.Port)
	if haveIPv6Loopback() {
		k.Addr6 = net.JoinHostPort("::1", strconv.Itoa(k.Port))
		listen += fmt.Sprintf(", ::1@%d", k.Port)
	}
	mkdirs(t, "", filepath.Join(dir, "run"), filepath.Join(dir, "db"), filepath.Join(dir, "zones"))

	var zoneConf strings.Builder
	for _, z := range o.Zones {
		name := canonicalZone(z.Name)
		if name == "" {
			t.Fatalf("peertest: Knot zone with empty name")
		}
		if _, dup := k.zones[name]; dup {
			t.Fatalf("peertest: Knot zone %s given twice", name)
		}
		z.Name = name
		if z.TTL == 0 {
			z.TTL = 60
		}
		kz := &knotZone{Zone: z, serial: 1}
		k.zones[name] = kz
		k.order = append(k.order, name)
		k.writeZone(t, kz)
		if z.Signed {
			fmt.Fprintf(&zoneConf, "  - domain: %s\n    dnssec-signing: on\n    dnssec-policy: peertest\n", name)
		} else {
			fmt.Fprintf(&zoneConf, "  - domain: %s\n", name)
		}
		if o.AllowUpdate {
			zoneConf.WriteString("    acl: peertest_update\n")
		}
	}
	conf := fmt.Sprintf(`# peertest Knot: loopback only.
server:
  listen: [ %[1]s ]
  rundir: %[2]s/run
log:
  - target: stderr
    any: info
database:
  storage: %[2]s/db
control:
  listen: %[2]s/run/knot.sock
policy:
  - id: peertest
    algorithm: ecdsap256sha256
template:
  - id: default
    storage: %[2]s/zones
    file: "%%s.zone"
    zonefile-sync: -1
zone:
%[3]s`, listen, dir, zoneConf.String())
	if len(o.Zones) == 0 {
		conf = strings.TrimSuffix(conf, "zone:\n")
	}
	if o.AllowUpdate {
		conf = strings.Replace(conf, "template:\n", `acl:
  - id: peertest_update
    address: [ 127.0.0.0/8, ::1 ]
    action: [ update, transfer ]
template:
`, 1)
	}
	writeFile(t, k.ConfigFile, []byte(conf))

	k.proc = startProc(t, "knotd "+k.Addr, filepath.Join(dir, "knot.log"), 3*time.Second, nil, nil,
		bin(t, "knotd"), "-c", k.ConfigFile)
	k.proc.waitReady(t, func(ctx context.Context) error {
		if len(k.order) == 0 {
			_, err := exchange(ctx, k.Addr, ".", dns.TypeSOA, false, "udp")
			return err
		}
		for i, name := range k.order {
			network := "udp"
			if i == 0 {
				network = "tcp" // prove TCP works too
			}
			if err := k.zoneReady(ctx, name, network, 0); err != nil {
				return err
			}
		}
		return nil
	})
	return k
}

// canonicalZone lower-cases a zone name and drops the final dot.
func canonicalZone(name string) string {
	return strings.TrimSuffix(strings.ToLower(strings.TrimSpace(name)), ".")
}

// writeZone writes a zone's file with its current serial.
func (k *Knot) writeZone(t testing.TB, z *knotZone) {
	t.Helper()
	ttl := z.TTL
	text := fmt.Sprintf(`$ORIGIN %[1]s.
$TTL %[2]d
@ %[2]d IN SOA ns.%[1]s. hostmaster.%[1]s. %[3]d 60 60 3600 %[2]d
@ NS ns
ns A 127.0.0.1
%[4]s
`, z.Name, ttl, z.serial, z.Records)
	writeFile(t, filepath.Join(k.Dir, "zones", z.Name+".zone"), []byte(text))
}

// zoneReady checks that Knot serves the zone authoritatively with a serial
// above minSerial and, for a signed zone, that its DNSKEY set is signed.
func (k *Knot) zoneReady(ctx context.Context, name, network string, minSerial uint32) error {
	k.mu.Lock()
	z := k.zones[name]
	k.mu.Unlock()
	m, err := exchange(ctx, k.Addr, name, dns.TypeSOA, z.Signed, network)
	if err != nil {
		return err
	}
	if m.Rcode != dns.RcodeSuccess || !m.Authoritative {
		return fmt.Errorf("%s SOA: rcode %s, aa %v", name, dns.RcodeToString[m.Rcode], m.Authoritative)
	}
	var soa *dns.SOA
	for _, rr := range m.Answer {
		if s, ok := rr.(*dns.SOA); ok {
			soa = s
		}
	}
	if soa == nil {
		return fmt.Errorf("%s SOA: no SOA in answer", name)
	}
	if soa.Serial <= minSerial {
		return fmt.Errorf("%s SOA: serial %d, want above %d", name, soa.Serial, minSerial)
	}
	if !z.Signed {
		return nil
	}
	if !hasRRSIG(m, dns.TypeSOA) {
		return fmt.Errorf("%s SOA: not signed yet", name)
	}
	m, err = exchange(ctx, k.Addr, name, dns.TypeDNSKEY, true, network)
	if err != nil {
		return err
	}
	if !hasRRSIG(m, dns.TypeDNSKEY) {
		return fmt.Errorf("%s DNSKEY: not signed yet", name)
	}
	return nil
}

// hasRRSIG tells whether the answer holds an RRSIG covering type covered.
func hasRRSIG(m *dns.Msg, covered uint16) bool {
	for _, rr := range m.Answer {
		if s, ok := rr.(*dns.RRSIG); ok && s.TypeCovered == covered {
			return true
		}
	}
	return false
}

// Log returns what knotd logged (to stderr).
func (k *Knot) Log() string { return readFile(k.proc.logs[0]) }

// Zones returns the names of the zones served, without final dots, in the
// order given to StartKnot.
func (k *Knot) Zones() []string {
	k.mu.Lock()
	defer k.mu.Unlock()
	return append([]string(nil), k.order...)
}

// Signed tells whether Knot signs the named zone.
func (k *Knot) Signed(zone string) bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	z, ok := k.zones[canonicalZone(zone)]
	return ok && z.Signed
}

// DS returns the SHA-256 DS record of a signed zone's key-signing key, in
// presentation form ("example.test. DS 12345 13 2 ABCD..."), ready for
// unbound's trust-anchor. It comes from "keymgr -c CONF ZONE ds".
func (k *Knot) DS(t testing.TB, zone string) string {
	t.Helper()
	name := canonicalZone(zone)
	if !k.Signed(name) {
		t.Fatalf("peertest: Knot zone %s is not served signed", name)
	}
	out := run(t, 10*time.Second, nil, bin(t, "keymgr"), "-c", k.ConfigFile, name, "ds")
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		// owner DS keytag algorithm digesttype digest
		if len(f) == 6 && f[1] == "DS" && f[4] == "2" {
			return strings.Join(f, " ")
		}
	}
	t.Fatalf("peertest: no SHA-256 DS for %s in keymgr output:\n%s", name, out)
	return ""
}

// Reload replaces a zone's records (same rules as Zone.Records) at run
// time: it rewrites the zone file with a higher serial, runs
// "knotc -b zone-reload", and waits until Knot serves a higher SOA serial
// (and, for a signed zone, new signatures). Use it to change answers under
// a running client, e.g. for TTL and refresh tests.
func (k *Knot) Reload(t testing.TB, zone, records string) {
	t.Helper()
	name := canonicalZone(zone)
	k.mu.Lock()
	z, ok := k.zones[name]
	k.mu.Unlock()
	if !ok {
		t.Fatalf("peertest: Knot does not serve %s", name)
	}
	ctx, cancel := context.WithTimeout(context.Background(), ReadyTimeout)
	defer cancel()
	before, err := k.servedSerial(ctx, name)
	if err != nil {
		t.Fatalf("peertest: %v\n%s", err, k.proc.logText())
	}
	k.mu.Lock()
	z.Records = records
	// The file's serial must grow past what is served: a signed zone's
	// served serial runs ahead of its file's, since Knot increments the
	// serial each time it signs.
	z.serial = max(z.serial, before) + 1
	k.writeZone(t, z)
	k.mu.Unlock()
	run(t, 20*time.Second, nil, bin(t, "knotc"), "-c", k.ConfigFile, "-b", "zone-reload", name)
	for {
		err := k.zoneReady(ctx, name, "udp", before)
		if err == nil {
			return
		}
		if ctx.Err() != nil {
			t.Fatalf("peertest: Knot zone %s not reloaded after %v: %v\n%s", name, ReadyTimeout, err, k.proc.logText())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// servedSerial returns the SOA serial Knot serves for a zone.
func (k *Knot) servedSerial(ctx context.Context, name string) (uint32, error) {
	m, err := exchange(ctx, k.Addr, name, dns.TypeSOA, false, "udp")
	if err != nil {
		return 0, err
	}
	for _, rr := range m.Answer {
		if s, ok := rr.(*dns.SOA); ok {
			return s.Serial, nil
		}
	}
	return 0, fmt.Errorf("%s: no SOA served (rcode %s)", name, dns.RcodeToString[m.Rcode])
}

// Query sends one DNS query to server (host:port) and returns the reply.
// It sets RD; with dnssec it adds EDNS0 with the DO bit (1232-byte
// buffer). It uses UDP and retries over TCP when the reply is truncated,
// tries up to three times, and fails the test if no reply comes.
func Query(t testing.TB, server, name string, qtype uint16, dnssec bool) *dns.Msg {
	t.Helper()
	var err error
	for range 3 {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		var m *dns.Msg
		m, err = exchange(ctx, server, name, qtype, dnssec, "udp")
		cancel()
		if err == nil {
			return m
		}
	}
	t.Fatalf("peertest: query %s %s to %s: %v", name, dns.TypeToString[qtype], server, err)
	return nil
}

// exchange sends one query over network ("udp" or "tcp"); a truncated UDP
// reply is retried over TCP.
func exchange(ctx context.Context, server, name string, qtype uint16, dnssec bool, network string) (*dns.Msg, error) {
	q := new(dns.Msg)
	q.SetQuestion(dns.Fqdn(name), qtype)
	q.RecursionDesired = true
	if dnssec {
		q.SetEdns0(1232, true)
	}
	c := &dns.Client{Net: network, Timeout: 2 * time.Second}
	m, _, err := c.ExchangeContext(ctx, q, server)
	if err != nil {
		return nil, err
	}
	if m.Truncated && network == "udp" {
		return exchange(ctx, server, name, qtype, dnssec, "tcp")
	}
	if m.Id != q.Id {
		return nil, errors.New("reply id mismatch")
	}
	return m, nil
}
