package caddysmtp

import (
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/seed7b014b84/caddy-smtp/rules"
	"github.com/seed7b014b84/caddy-smtp/strategy"
	"github.com/seed7b014b84/caddy-smtp/transport"
)

// Validate checks the provisioned config. Every problem is reported, each
// with the key path it is at.
func (a *App) Validate() error {
	var errs []error
	add := func(err error) {
		if err != nil {
			errs = append(errs, err)
		}
	}
	add(a.Hostname.Each("hostname", func(path string, h *string) error {
		return checkHostname(path, *h)
	}))
	for _, name := range sortedNames(a.Lists) {
		if !namePattern.MatchString(name) {
			add(fmt.Errorf("lists.%s: a list name is letters, digits, '_', '-' and '.'", name))
		}
		for i, entry := range a.Lists[name] {
			if strings.TrimSpace(entry) == "" {
				add(fmt.Errorf("lists.%s[%d]: empty entry", name, i))
			}
		}
	}
	for _, name := range sortedNames(a.Remotes) {
		add(a.validateRemote(name, a.Remotes[name]))
	}
	if a.Queue != nil {
		add(a.Queue.validate())
	}
	add(a.NextHop.Each("next_hop", func(path string, hop *NextHop) error {
		if *hop == MX {
			return nil
		}
		if _, ok := a.Remotes[string(*hop)]; !ok {
			return fmt.Errorf("%s: no remote named %q (remotes: %s)", path, *hop, namesOr(sortedNames(a.Remotes), "none"))
		}
		return nil
	}))
	add(a.IPStrategy.Each("ip_strategy", func(path string, s *strategy.IPStrategy) error {
		if !s.Valid() {
			return fmt.Errorf("%s: unknown ip_strategy %q (want ipv4_only, ipv6_only, ipv6_then_ipv4 or ipv4_then_ipv6)", path, *s)
		}
		return nil
	}))
	add(a.FallbackDelay.Each("fallback_delay", func(path string, d *strategy.Delay) error {
		if *d == 0 {
			return fmt.Errorf("%s: zero would start every address at once; give a duration such as 250ms, or off", path)
		}
		return nil
	}))
	add(a.SourceIP.V4.Each("source_ip.v4", func(path string, addrs *[]strategy.Source) error {
		return checkSources(path, *addrs, false)
	}))
	add(a.SourceIP.V6.Each("source_ip.v6", func(path string, addrs *[]strategy.Source) error {
		return checkSources(path, *addrs, true)
	}))
	add(a.Limits.MX.Each("limits.mx", atLeastOne))
	add(a.Limits.Multihomed.Each("limits.multihomed", atLeastOne))
	for _, t := range a.timeoutSettings() {
		add(t.setting.Each("timeouts."+t.key, positiveDuration))
	}
	for _, m := range []struct {
		path string
		s    *rules.Setting[transport.TLSMode]
	}{{"tls.starttls", &a.TLS.StartTLS}, {"tls.mta_sts", &a.TLS.MTASTS}, {"tls.dane", &a.TLS.DANE}} {
		add(m.s.Each(m.path, func(path string, mode *transport.TLSMode) error {
			if _, err := transport.ParseTLSMode(string(*mode)); err != nil {
				return fmt.Errorf("%s: %w", path, err)
			}
			return nil
		}))
	}
	if a.Pool.MaxMessages < 1 {
		add(fmt.Errorf("pool.max_messages: %d is below 1", a.Pool.MaxMessages))
	}
	if a.Pool.IdleTimeout <= 0 {
		add(fmt.Errorf("pool.idle_timeout: %s is not a positive duration", time.Duration(a.Pool.IdleTimeout)))
	}
	return errors.Join(errs...)
}

func (a *App) validateRemote(name string, r *Remote) error {
	at := "remotes." + name
	if !namePattern.MatchString(name) || name == "false" {
		return fmt.Errorf("%s: a remote's name is letters, digits, '_', '-' and '.', and not \"false\"", at)
	}
	if r == nil {
		return fmt.Errorf("%s: empty remote (it needs at least an address)", at)
	}
	var errs []error
	if r.Address == "" {
		errs = append(errs, fmt.Errorf("%s.address: required", at))
	} else if err := checkHostname(at+".address", r.Address); err != nil {
		if _, perr := netip.ParseAddr(r.Address); perr != nil {
			errs = append(errs, fmt.Errorf("%s.address: %q is neither an IP address nor a host name", at, r.Address))
		}
	}
	if r.Port < 1 || r.Port > 65535 {
		errs = append(errs, fmt.Errorf("%s.port: %d is out of range 1-65535", at, r.Port))
	}
	if _, err := transport.ParseProtocol(string(r.Protocol)); err != nil {
		errs = append(errs, fmt.Errorf("%s.protocol: %w", at, err))
	}
	if r.Concurrency < 1 {
		errs = append(errs, fmt.Errorf("%s.concurrency: %d is below 1", at, r.Concurrency))
	}
	if r.Timeout < 0 {
		errs = append(errs, fmt.Errorf("%s.timeout: %s is negative", at, time.Duration(r.Timeout)))
	}
	if r.Auth != nil {
		if r.Auth.Username == "" {
			errs = append(errs, fmt.Errorf("%s.auth.username: required with auth", at))
		}
		if r.Auth.Secret == "" {
			errs = append(errs, fmt.Errorf("%s.auth.secret: required with auth", at))
		}
	}
	return errors.Join(errs...)
}

// namePattern is what a remote's or a list's name may be.
var namePattern = regexp.MustCompile(`^[A-Za-z0-9_.-]+$`)

// hostnamePattern is a domain name as EHLO takes it (RFC 5321's Domain),
// labels of letters, digits and inner hyphens.
var hostnamePattern = regexp.MustCompile(`^(?i)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*\.?$`)

// checkHostname accepts a domain name or an address literal ([192.0.2.1],
// [IPv6:2001:db8::1]) as EHLO takes them.
func checkHostname(path, h string) error {
	if strings.HasPrefix(h, "[") && strings.HasSuffix(h, "]") {
		lit := strings.TrimPrefix(h[1:len(h)-1], "IPv6:")
		if _, err := netip.ParseAddr(lit); err == nil {
			return nil
		}
	}
	if len(h) > 255 || !hostnamePattern.MatchString(h) {
		return fmt.Errorf("%s: %q is not a host name EHLO can use (a domain name, or an address literal such as [192.0.2.1])", path, h)
	}
	return nil
}

func checkSources(path string, addrs []strategy.Source, v6 bool) error {
	family, other := "IPv4", "IPv6"
	if v6 {
		family, other = other, family
	}
	for i, s := range addrs {
		at := fmt.Sprintf("%s[%d]", path, i)
		ip, err := netip.ParseAddr(s.Address)
		if err != nil {
			return fmt.Errorf("%s: %q is not an IP address", at, s.Address)
		}
		if ip.Zone() != "" {
			return fmt.Errorf("%s: %q has a zone; give the address alone", at, s.Address)
		}
		if ip.Is4In6() {
			return fmt.Errorf("%s: %s is an IPv4-mapped IPv6 address; list %s under source_ip.v4", at, s.Address, ip.Unmap())
		}
		if ip.Is4() == v6 {
			return fmt.Errorf("%s: %s is an %s address, and this list is for %s", at, s.Address, other, family)
		}
		if s.EHLO != "" {
			if err := checkHostname(at+".ehlo", s.EHLO); err != nil {
				return err
			}
		}
	}
	return nil
}

func atLeastOne(path string, n *int) error {
	if *n < 1 {
		return fmt.Errorf("%s: %d is below 1", path, *n)
	}
	return nil
}

func positiveDuration(path string, d *caddy.Duration) error {
	if *d <= 0 {
		return fmt.Errorf("%s: %s is not a positive duration", path, time.Duration(*d))
	}
	return nil
}

func sortedNames[V any](m map[string]V) []string {
	names := make([]string, 0, len(m))
	for n := range m {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

func namesOr(names []string, none string) string {
	if len(names) == 0 {
		return none
	}
	return strings.Join(names, ", ")
}
