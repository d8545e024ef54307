package strategy

import "net/netip"

// UsesIPv4 reports whether the strategy dials IPv4 addresses.
func (s IPStrategy) UsesIPv4() bool { return s != IPv6Only }

// UsesIPv6 reports whether the strategy dials IPv6 addresses.
func (s IPStrategy) UsesIPv6() bool { return s != IPv4Only }

// Order returns the addresses of one host to try, in order, at most
// multihomed of them.
//
// An _only strategy keeps its family, in DNS order. A _then_ strategy
// balances the families before it caps: the list is taken interleaved,
// preferred family first (P1 S1 P2 S2 ..., the rest of the longer family
// last), and cut to multihomed, so that with multihomed >= 2 at least one
// address of the second family is kept whenever the host has one. (Cutting
// the preferred family's list first, as Stalwart does, means a host with
// three IPv4 addresses and multihomed = 2 is never tried over IPv6.) With
// multihomed = 1 the one address is of the preferred family.
//
// With happy eyeballs (interleave true) the interleaved order is the dial
// order, as RFC 8305 (section 4) has it: the first fallback goes to the
// other family. Without it the kept addresses are dialled preferred family
// first, as "try IPv4, then fall back to IPv6" reads.
func Order(s IPStrategy, v4, v6 []netip.Addr, multihomed int, interleave bool) []netip.Addr {
	if multihomed < 1 {
		multihomed = 1
	}
	var first, second []netip.Addr
	switch s {
	case IPv4Only:
		return capped(v4, multihomed)
	case IPv6Only:
		return capped(v6, multihomed)
	case IPv6ThenIPv4:
		first, second = v6, v4
	default:
		first, second = v4, v6
	}
	mixed := make([]netip.Addr, 0, len(first)+len(second))
	for i := 0; i < len(first) || i < len(second); i++ {
		if i < len(first) {
			mixed = append(mixed, first[i])
		}
		if i < len(second) {
			mixed = append(mixed, second[i])
		}
	}
	mixed = capped(mixed, multihomed)
	if interleave {
		return mixed
	}
	out := make([]netip.Addr, 0, len(mixed))
	for _, a := range mixed {
		if a.Is4() == first4(s) {
			out = append(out, a)
		}
	}
	for _, a := range mixed {
		if a.Is4() != first4(s) {
			out = append(out, a)
		}
	}
	return out
}

func first4(s IPStrategy) bool { return s != IPv6ThenIPv4 }

func capped(a []netip.Addr, n int) []netip.Addr {
	if len(a) > n {
		a = a[:n]
	}
	return append([]netip.Addr(nil), a...)
}
