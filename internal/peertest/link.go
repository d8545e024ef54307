package peertest

import (
	"net/netip"
	"strings"
	"testing"
	"time"
)

// Link is two network namespaces made by the test, joined by a veth pair:
// a client side and a server side, each with its own addresses, so that a
// test has several IPv4 and IPv6 addresses and can make some of them
// refuse, be unreachable or drop packets, without touching the machine's
// own network.
type Link struct {
	// Client and Server are the namespaces' names.
	Client, Server string
	// ClientDev and ServerDev are the veth ends' names.
	ClientDev, ServerDev string
}

// NewLink makes the two namespaces and the veth pair, and puts the
// addresses (with prefix: "198.51.100.1/24", "2001:db8:1::1/64") on each
// end. IPv6 addresses skip duplicate address detection (nodad), so they are
// usable at once. On the client, every address after the first of its
// family gets preferred_lft 0, so that the kernel uses it only when a
// socket binds it (its default source stays the first). Not on the server:
// neighbour discovery of a deprecated address answers only after about a
// second. Everything is removed when the test ends.
func NewLink(t testing.TB, clientAddrs, serverAddrs []string) *Link {
	t.Helper()
	l := &Link{Client: NewNetns(t), Server: NewNetns(t)}
	suffix := strings.TrimPrefix(l.Client, "pt-")
	l.ClientDev, l.ServerDev = "vc"+suffix, "vs"+suffix
	ip := bin(t, "ip")
	// No duplicate address detection on the new interfaces at all, link
	// local addresses included: while a peer's link-local address is
	// tentative (about a second after the link comes up), neighbour
	// discovery of it waits, and the first IPv6 connection takes a second
	// even to be refused.
	for _, ns := range []string{l.Client, l.Server} {
		run(t, 10*time.Second, nil, ip, "netns", "exec", ns, "sh", "-c",
			"echo 0 > /proc/sys/net/ipv6/conf/default/accept_dad && echo 0 > /proc/sys/net/ipv6/conf/all/accept_dad")
	}
	run(t, 10*time.Second, nil, ip, "link", "add", l.ClientDev, "netns", l.Client, "type", "veth", "peer", "name", l.ServerDev, "netns", l.Server)
	// Both ends up, with carrier, before any address is added: an address
	// added while the link comes up makes the first neighbour discovery
	// of it wait about a second (seen on this kernel).
	l.IP(t, l.Client, "link", "set", l.ClientDev, "up")
	l.IP(t, l.Server, "link", "set", l.ServerDev, "up")
	deadline := time.Now().Add(5 * time.Second)
	for !l.carrier(t, l.Client, l.ClientDev) || !l.carrier(t, l.Server, l.ServerDev) {
		if time.Now().After(deadline) {
			t.Fatalf("peertest: veth %s/%s has no carrier after 5s", l.ClientDev, l.ServerDev)
		}
		time.Sleep(20 * time.Millisecond)
	}
	l.setup(t, l.Client, l.ClientDev, clientAddrs, true)
	l.setup(t, l.Server, l.ServerDev, serverAddrs, false)
	return l
}

func (l *Link) carrier(t testing.TB, ns, dev string) bool {
	out := run(t, 10*time.Second, nil, bin(t, "ip"), "-n", ns, "link", "show", dev)
	return strings.Contains(string(out), "LOWER_UP")
}

func (l *Link) setup(t testing.TB, ns, dev string, addrs []string, deprecateSecondaries bool) {
	t.Helper()
	seen := map[bool]bool{}
	for _, a := range addrs {
		p, err := netip.ParsePrefix(a)
		if err != nil {
			t.Fatalf("peertest: link address %q: %v", a, err)
		}
		args := []string{"addr", "add", a, "dev", dev}
		if p.Addr().Is6() {
			args = append(args, "nodad")
		}
		if deprecateSecondaries && seen[p.Addr().Is4()] {
			args = append(args, "preferred_lft", "0")
		}
		seen[p.Addr().Is4()] = true
		l.IP(t, ns, args...)
	}
}

// IP runs `ip -n NS ARGS...` (for routes, neighbours and addresses), failing
// the test on error.
func (l *Link) IP(t testing.TB, ns string, args ...string) {
	t.Helper()
	run(t, 10*time.Second, nil, append([]string{bin(t, "ip"), "-n", ns}, args...)...)
}
