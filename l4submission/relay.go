package l4submission

import (
	"fmt"
	"net/netip"
	"strings"
)

// The shortest prefixes relay_networks accepts: a shorter one (0.0.0.0/0,
// ::/0) lets a good part of the Internet relay.
const (
	minRelayBitsIPv4 = 8
	minRelayBitsIPv6 = 32
)

// uniqueLocal is fc00::/7 (RFC 4193), private IPv6 addresses: a prefix
// within it may be shorter than /32 (Caddy's private_ranges has fd00::/8).
var uniqueLocal = netip.MustParsePrefix("fc00::/7")

// parseNetworks parses relay_networks: CIDR ranges or single addresses.
func parseNetworks(list []string) ([]netip.Prefix, error) {
	out := make([]netip.Prefix, 0, len(list))
	for _, s := range list {
		s = strings.TrimSpace(s)
		if strings.Contains(s, "/") {
			p, err := netip.ParsePrefix(s)
			if err != nil {
				return nil, fmt.Errorf("%q: %w", s, err)
			}
			p = p.Masked()
			if err := checkRelayPrefix(p); err != nil {
				return nil, fmt.Errorf("%q: %w", s, err)
			}
			out = append(out, p)
			continue
		}
		a, err := netip.ParseAddr(s)
		if err != nil {
			return nil, fmt.Errorf("%q: neither a CIDR range nor an IP address: %w", s, err)
		}
		a = a.Unmap()
		out = append(out, netip.PrefixFrom(a, a.BitLen()))
	}
	return out, nil
}

// inNetworks reports whether addr is in one of the networks.
func inNetworks(networks []netip.Prefix, addr netip.Addr) bool {
	if !addr.IsValid() {
		return false
	}
	for _, p := range networks {
		if p.Contains(addr) {
			return true
		}
	}
	return false
}

// checkRelayPrefix refuses a range so wide that it would make an open
// relay.
func checkRelayPrefix(p netip.Prefix) error {
	least := minRelayBitsIPv4
	if p.Addr().Is6() {
		if uniqueLocal.Contains(p.Addr()) && p.Bits() >= uniqueLocal.Bits() {
			return nil
		}
		least = minRelayBitsIPv6
	}
	if p.Bits() < least {
		return fmt.Errorf("a range shorter than /%d would make an open relay: every client in it may send mail "+
			"anywhere without authenticating, and spammers find such relays within hours; list the networks "+
			"of your own clients, and have the others authenticate (users)", least)
	}
	return nil
}
