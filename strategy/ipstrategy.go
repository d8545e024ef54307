package strategy

import (
	"encoding/json"
	"fmt"
	"strings"
)

// IPStrategy says which address families of a remote host are tried, and in
// which order. Its JSON form is one of the four names below; the older
// spellings with `-` (ipv4-then-ipv6) are read as the same strategy.
type IPStrategy string

// The IP strategies of Stalwart's queue.outbound.ip-strategy.
const (
	// IPv4Only uses only IPv4 addresses.
	IPv4Only IPStrategy = "ipv4_only"
	// IPv6Only uses only IPv6 addresses.
	IPv6Only IPStrategy = "ipv6_only"
	// IPv6ThenIPv4 tries IPv6 addresses first and falls back to IPv4.
	IPv6ThenIPv4 IPStrategy = "ipv6_then_ipv4"
	// IPv4ThenIPv6 tries IPv4 addresses first and falls back to IPv6.
	IPv4ThenIPv6 IPStrategy = "ipv4_then_ipv6"
)

var ipStrategies = []IPStrategy{IPv4Only, IPv6Only, IPv6ThenIPv4, IPv4ThenIPv6}

// ParseIPStrategy reads s as a strategy, accepting `-` for `_` and any case.
func ParseIPStrategy(s string) (IPStrategy, error) {
	norm := IPStrategy(strings.ToLower(strings.ReplaceAll(strings.TrimSpace(s), "-", "_")))
	for _, known := range ipStrategies {
		if norm == known {
			return known, nil
		}
	}
	return "", fmt.Errorf("unknown ip_strategy %q (want ipv4_only, ipv6_only, ipv6_then_ipv4 or ipv4_then_ipv6)", s)
}

// Valid reports whether s is one of the four strategies, spelled canonically.
func (s IPStrategy) Valid() bool {
	p, err := ParseIPStrategy(string(s))
	return err == nil && p == s
}

// UnmarshalJSON reads a strategy name in either spelling and keeps it in the
// canonical one.
func (s *IPStrategy) UnmarshalJSON(b []byte) error {
	var str string
	if err := json.Unmarshal(b, &str); err != nil {
		return fmt.Errorf("ip_strategy is a string: %w", err)
	}
	p, err := ParseIPStrategy(str)
	if err != nil {
		return err
	}
	*s = p
	return nil
}

// Interface guards
var _ json.Unmarshaler = (*IPStrategy)(nil)
