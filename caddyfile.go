package caddysmtp

import (
	"net/netip"
	"strconv"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"

	"github.com/seed7b014b84/caddy-smtp/dkim"
	"github.com/seed7b014b84/caddy-smtp/resolver"
	"github.com/seed7b014b84/caddy-smtp/rules"
	"github.com/seed7b014b84/caddy-smtp/strategy"
	"github.com/seed7b014b84/caddy-smtp/transport"
)

func init() {
	httpcaddyfile.RegisterGlobalOption("smtp", parseGlobalOption)
}

// parseGlobalOption turns the `smtp` global option into the smtp app.
func parseGlobalOption(d *caddyfile.Dispenser, existing any) (any, error) {
	if existing != nil {
		d.Next()
		return nil, d.Err("the smtp global option is given twice; merge the two blocks")
	}
	app := new(App)
	if err := app.UnmarshalCaddyfile(d); err != nil {
		return nil, err
	}
	return httpcaddyfile.App{Name: "smtp", Value: caddyconfig.JSON(app, nil)}, nil
}

// UnmarshalCaddyfile sets up the app from the `smtp` global option:
//
//	smtp {
//		hostname <name>
//		next_hop <remote>|false
//		remote <name> {
//			address <host>
//			port <port>
//			protocol smtp|lmtp
//			concurrency <n>
//			timeout <duration>
//			tls {
//				implicit [true|false]
//				allow_invalid_certs [true|false]
//			}
//			auth <username> <secret>
//		}
//		list <name> <entry>...
//		ip_strategy ipv4_only|ipv6_only|ipv6_then_ipv4|ipv4_then_ipv6
//		fallback_delay <duration>|off
//		source_ip {
//			v4 <address>...
//			v6 <address>...
//		}
//		limits {
//			mx <n>
//			multihomed <n>
//		}
//		timeouts {
//			connect|greeting|tls|ehlo|mail_from|rcpt_to|data|mta_sts <duration>
//		}
//		tls {
//			starttls disable|optional|require
//			allow_invalid_certs [true|false]
//			mta_sts disable|optional|require
//			dane disable|optional|require
//		}
//		pool {
//			max_messages <n>
//			idle_timeout <duration>
//		}
//		resolver [<server>...] {
//			servers <server>...
//			trust_ad [true|false]
//			timeout <duration>
//			attempts <n>
//			try_tcp_on_error [true|false]
//			max_in_flight <n>
//			cache {
//				size <n>
//				min_ttl <duration>
//				max_ttl <duration>
//				max_negative_ttl <duration>
//			}
//		}
//	}
//
// A resolver server is udp://IP:PORT, tcp://IP:PORT, tls://IP:PORT#NAME, a
// preset (cloudflare, google, quad9, each also -tls) or system.
//
// A list's entries may also be given one or more per line in a block
// (`list domains { ... }`), and auth as a block with `username`, `secret`
// and `allow_plaintext` (send the credentials without TLS: only on a
// network you control).
// Source addresses may be given one per line in a block, each with its own
// EHLO name:
//
//	v4 {
//		192.0.2.10 ehlo out1.example.org
//		192.0.2.11 ehlo out2.example.org
//	}
//
// Every setting that takes a value (hostname, next_hop, ip_strategy,
// source_ip's v4 and v6, the limits, the timeouts and the tls settings) may
// instead take a rule list, a block of `if` lines and a final `else`:
//
//	ip_strategy {
//		if "retry_num == 0" ipv6_only
//		else ipv4_only
//	}
//	next_hop {
//		if rcpt_domain in_list domains lmtp
//		else false
//	}
//
// `if <expression> <value>` takes a CEL expression (quote it); the older
// form `if <variable> in_list <list> <value>` tests membership in a list.
// Defaults are not written here: Provision sets them, so that the Caddyfile
// and JSON forms mean the same.
func (a *App) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the option's name
	if d.NextArg() {
		return d.ArgErr()
	}
	p := newRuleParser()
	for d.NextBlock(0) {
		var err error
		switch d.Val() {
		case "hostname":
			a.Hostname, err = parseSetting(d, p, once(&a.Hostname), parseString)
		case "next_hop":
			a.NextHop, err = parseSetting(d, p, once(&a.NextHop), parseNextHop)
		case "remote":
			err = a.parseRemote(d)
		case "list":
			err = a.parseList(d)
		case "ip_strategy":
			a.IPStrategy, err = parseSetting(d, p, once(&a.IPStrategy), parseIPStrategy)
		case "fallback_delay":
			a.FallbackDelay, err = parseSetting(d, p, once(&a.FallbackDelay), parseDelay)
		case "source_ip":
			if a.SourceIP == nil {
				a.SourceIP = new(SourceIP)
			}
			err = parseSourceIP(d, p, a.SourceIP)
		case "limits":
			if a.Limits == nil {
				a.Limits = new(Limits)
			}
			err = parseLimits(d, p, a.Limits)
		case "timeouts":
			if a.Timeouts == nil {
				a.Timeouts = new(Timeouts)
			}
			err = a.parseTimeouts(d, p)
		case "tls":
			if a.TLS == nil {
				a.TLS = new(TLS)
			}
			err = parseTLS(d, p, a.TLS)
		case "pool":
			if a.Pool != nil {
				return d.Err("pool is given twice")
			}
			a.Pool, err = parsePool(d)
		case "resolver":
			if a.Resolver != nil {
				return d.Err("resolver is given twice")
			}
			a.Resolver, err = parseResolver(d)
		case "queue":
			if a.Queue != nil {
				return d.Err("queue is given twice")
			}
			a.Queue = new(QueueConfig)
			err = parseQueue(d, p, a.Queue)
		case "dkim":
			var c dkim.Config
			c, err = parseDKIM(d)
			a.DKIM = append(a.DKIM, c)
		case "dkim_sign":
			a.DKIMSign, err = parseSetting(d, p, once(&a.DKIMSign), parseStrings)
		default:
			return d.Errf("unknown smtp option %q (known: hostname, next_hop, remote, list, ip_strategy, fallback_delay, source_ip, limits, timeouts, tls, pool, resolver, queue, dkim, dkim_sign)", d.Val())
		}
		if err != nil {
			return err
		}
	}
	return nil
}

func (a *App) parseRemote(d *caddyfile.Dispenser) error {
	var name string
	if !d.Args(&name) {
		return d.Err("remote needs a name: remote <name> { ... }")
	}
	if d.NextArg() {
		return d.ArgErr()
	}
	if a.Remotes == nil {
		a.Remotes = map[string]*Remote{}
	}
	if _, dup := a.Remotes[name]; dup {
		return d.Errf("remote %q is defined twice", name)
	}
	r := new(Remote)
	a.Remotes[name] = r
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		key := d.Val()
		var err error
		switch key {
		case "address":
			r.Address, err = oneArg(d)
		case "port":
			r.Port, err = intArg(d)
		case "protocol":
			var s string
			if s, err = oneArg(d); err == nil {
				var proto transport.Protocol
				if proto, err = transport.ParseProtocol(s); err != nil {
					return d.Errf("remote %s: %v", name, err)
				}
				r.Protocol = proto
			}
		case "concurrency":
			r.Concurrency, err = intArg(d)
		case "timeout":
			var s string
			if s, err = oneArg(d); err == nil {
				var dur caddy.Duration
				if dur, err = parseDuration(d, []string{s}); err == nil {
					r.Timeout = dur
				}
			}
		case "tls":
			if r.TLS == nil {
				r.TLS = new(RemoteTLS)
			}
			err = parseRemoteTLS(d, r.TLS)
		case "auth":
			r.Auth, err = parseAuth(d)
		default:
			return d.Errf("unknown remote option %q (known: address, port, protocol, concurrency, timeout, tls, auth)", key)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

func parseRemoteTLS(d *caddyfile.Dispenser, t *RemoteTLS) error {
	if d.NextArg() {
		return d.ArgErr()
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		var err error
		switch d.Val() {
		case "implicit":
			t.Implicit, err = parseBool(d, d.RemainingArgs())
		case "allow_invalid_certs":
			t.AllowInvalidCerts, err = parseBool(d, d.RemainingArgs())
		default:
			return d.Errf("unknown remote tls option %q (known: implicit, allow_invalid_certs)", d.Val())
		}
		if err != nil {
			return err
		}
	}
	return nil
}

func parseAuth(d *caddyfile.Dispenser) (*RemoteAuth, error) {
	auth := new(RemoteAuth)
	args := d.RemainingArgs()
	switch len(args) {
	case 0:
	case 2:
		auth.Username, auth.Secret = args[0], args[1]
	default:
		return nil, d.Err("auth takes <username> <secret>, or a block with username and secret")
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		if len(args) > 0 {
			return nil, d.Err("auth takes its arguments or a block, not both")
		}
		var err error
		switch d.Val() {
		case "username":
			auth.Username, err = oneArg(d)
		case "secret":
			auth.Secret, err = oneArg(d)
		case "allow_plaintext":
			auth.AllowPlaintext, err = parseBool(d, d.RemainingArgs())
		default:
			return nil, d.Errf("unknown auth option %q (known: username, secret, allow_plaintext)", d.Val())
		}
		if err != nil {
			return nil, err
		}
	}
	if auth.Username == "" || auth.Secret == "" {
		return nil, d.Err("auth needs both a username and a secret")
	}
	return auth, nil
}

func (a *App) parseList(d *caddyfile.Dispenser) error {
	var name string
	if !d.Args(&name) {
		return d.Err("list needs a name: list <name> <entry>...")
	}
	entries := d.RemainingArgs()
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		entries = append(entries, d.Val())
		entries = append(entries, d.RemainingArgs()...)
	}
	if a.Lists == nil {
		a.Lists = map[string][]string{}
	}
	if _, dup := a.Lists[name]; dup {
		return d.Errf("list %q is defined twice", name)
	}
	if entries == nil {
		entries = []string{}
	}
	a.Lists[name] = entries
	return nil
}

func parseSourceIP(d *caddyfile.Dispenser, p *ruleParser, s *SourceIP) error {
	if d.NextArg() {
		return d.ArgErr()
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		var err error
		switch d.Val() {
		case "v4":
			s.V4, err = parseSettingOrBlock(d, p, once(&s.V4), sourcesParser(false), sourcesBlock(false))
		case "v6":
			s.V6, err = parseSettingOrBlock(d, p, once(&s.V6), sourcesParser(true), sourcesBlock(true))
		default:
			return d.Errf("unknown source_ip option %q (known: v4, v6)", d.Val())
		}
		if err != nil {
			return err
		}
	}
	return nil
}

func parseLimits(d *caddyfile.Dispenser, p *ruleParser, l *Limits) error {
	if d.NextArg() {
		return d.ArgErr()
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		var err error
		switch d.Val() {
		case "mx":
			l.MX, err = parseSetting(d, p, once(&l.MX), parseInt)
		case "multihomed":
			l.Multihomed, err = parseSetting(d, p, once(&l.Multihomed), parseInt)
		default:
			return d.Errf("unknown limits option %q (known: mx, multihomed)", d.Val())
		}
		if err != nil {
			return err
		}
	}
	return nil
}

func (a *App) parseTimeouts(d *caddyfile.Dispenser, p *ruleParser) error {
	if d.NextArg() {
		return d.ArgErr()
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		var target *rules.Setting[caddy.Duration]
		for _, t := range a.timeoutSettings() {
			if t.key == d.Val() {
				target = t.setting
			}
		}
		if target == nil {
			return d.Errf("unknown timeout %q (known: connect, greeting, tls, ehlo, mail_from, rcpt_to, data, mta_sts)", d.Val())
		}
		s, err := parseSetting(d, p, once(target), parseDuration)
		if err != nil {
			return err
		}
		*target = s
	}
	return nil
}

func parseTLS(d *caddyfile.Dispenser, p *ruleParser, t *TLS) error {
	if d.NextArg() {
		return d.ArgErr()
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		var err error
		switch d.Val() {
		case "starttls":
			t.StartTLS, err = parseSetting(d, p, once(&t.StartTLS), parseTLSMode)
		case "allow_invalid_certs":
			t.AllowInvalidCerts, err = parseSetting(d, p, once(&t.AllowInvalidCerts), parseBool)
		case "mta_sts":
			t.MTASTS, err = parseSetting(d, p, once(&t.MTASTS), parseTLSMode)
		case "dane":
			t.DANE, err = parseSetting(d, p, once(&t.DANE), parseTLSMode)
		default:
			return d.Errf("unknown tls option %q (known: starttls, allow_invalid_certs, mta_sts, dane)", d.Val())
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// ruleParser checks rule conditions while the Caddyfile is read, so that a
// CEL error carries the file and line. Lists are not known yet, but CEL
// types `lists` as a map, so every condition type-checks without them.
type ruleParser struct {
	env *rules.Env
	err error
}

func newRuleParser() *ruleParser {
	env, err := rules.NewEnv(nil)
	return &ruleParser{env: env, err: err}
}

// once reports whether a setting is still unset, so that a setting given
// twice is an error rather than the last one silently winning.
func once[T any](s *rules.Setting[T]) bool { return s.IsZero() }

// valueParser reads a setting's value from a line's arguments.
type valueParser[T any] func(d *caddyfile.Dispenser, args []string) (T, error)

// parseSetting reads the setting whose name d is on: a value from the rest
// of the line, or a rule block.
func parseSetting[T any](d *caddyfile.Dispenser, p *ruleParser, unset bool, parse valueParser[T]) (rules.Setting[T], error) {
	return parseSettingOrBlock(d, p, unset, parse, nil)
}

// blockParser reads a value given as a block (its lines), for a setting
// whose block is not a rule list (its first line starts with neither if
// nor else). d is on the block's first token.
type blockParser[T any] func(d *caddyfile.Dispenser, nesting int) (T, error)

// parseSettingOrBlock is parseSetting for a setting that may also take its
// value as a block.
func parseSettingOrBlock[T any](d *caddyfile.Dispenser, p *ruleParser, unset bool, parse valueParser[T], block blockParser[T]) (rules.Setting[T], error) {
	name := d.Val()
	if !unset {
		return rules.Setting[T]{}, d.Errf("%s is given twice", name)
	}
	args := d.RemainingArgs()
	nesting := d.Nesting()
	if !d.NextBlock(nesting) {
		v, err := parse(d, args)
		if err != nil {
			return rules.Setting[T]{}, err
		}
		return rules.Plain(v), nil
	}
	if len(args) > 0 {
		return rules.Setting[T]{}, d.Errf("%s takes a value or a rule block, not both", name)
	}
	if block != nil && d.Val() != "if" && d.Val() != "else" {
		v, err := block(d, nesting)
		if err != nil {
			return rules.Setting[T]{}, err
		}
		return rules.Plain(v), nil
	}
	if p.err != nil {
		return rules.Setting[T]{}, d.WrapErr(p.err)
	}
	var list []rules.Rule[T]
	sawElse := false
	for {
		if sawElse {
			return rules.Setting[T]{}, d.Errf("%s: else must be the last rule", name)
		}
		keyword := d.Val()
		line := d.RemainingArgs()
		switch keyword {
		case "else":
			v, err := parse(d, line)
			if err != nil {
				return rules.Setting[T]{}, err
			}
			list = append(list, rules.Rule[T]{Else: &v})
			sawElse = true
		case "if":
			r, err := parseIfRule(d, p, line, parse)
			if err != nil {
				return rules.Setting[T]{}, err
			}
			list = append(list, r)
		default:
			return rules.Setting[T]{}, d.Errf("%s: a rule line starts with if or else, not %q", name, keyword)
		}
		if !d.NextBlock(nesting) {
			break
		}
	}
	if !sawElse {
		return rules.Setting[T]{}, d.Errf("%s: rule list has no else: end it with `else <value>`", name)
	}
	return rules.List(list...), nil
}

func parseIfRule[T any](d *caddyfile.Dispenser, p *ruleParser, line []string, parse valueParser[T]) (rules.Rule[T], error) {
	if len(line) < 2 {
		return rules.Rule[T]{}, d.Err(`if needs a condition and a value: if "<expression>" <value>`)
	}
	var r rules.Rule[T]
	r.If = line[0]
	rest := line[1:]
	if len(rest) >= 2 && (rest[0] == "in_list" || rest[0] == "in-list") {
		r.InList, rest = rest[1], rest[2:]
		if len(rest) == 0 {
			return r, d.Err("if <variable> in_list <list> needs a value after the list")
		}
	} else if _, err := p.env.Compile(r.If); err != nil {
		return r, d.Errf("if: %v", err)
	}
	v, err := parse(d, rest)
	if err != nil {
		return r, err
	}
	r.Then = &v
	return r, nil
}

func oneArg(d *caddyfile.Dispenser) (string, error) {
	var s string
	if !d.AllArgs(&s) {
		return "", d.ArgErr()
	}
	return s, nil
}

func intArg(d *caddyfile.Dispenser) (int, error) {
	return parseInt(d, d.RemainingArgs())
}

func parseStrings(d *caddyfile.Dispenser, args []string) ([]string, error) {
	if len(args) == 0 {
		return nil, d.ArgErr()
	}
	if len(args) == 1 && args[0] == "none" {
		return []string{}, nil
	}
	return args, nil
}

func parseString(d *caddyfile.Dispenser, args []string) (string, error) {
	if len(args) != 1 {
		return "", d.ArgErr()
	}
	return args[0], nil
}

func parseNextHop(d *caddyfile.Dispenser, args []string) (NextHop, error) {
	if len(args) != 1 {
		return MX, d.Err("next_hop takes one value: a remote's name, or false for delivery by MX")
	}
	if args[0] == "false" {
		return MX, nil
	}
	return NextHop(args[0]), nil
}

func parseIPStrategy(d *caddyfile.Dispenser, args []string) (strategy.IPStrategy, error) {
	if len(args) != 1 {
		return "", d.ArgErr()
	}
	s, err := strategy.ParseIPStrategy(args[0])
	if err != nil {
		return "", d.WrapErr(err)
	}
	return s, nil
}

func parseInt(d *caddyfile.Dispenser, args []string) (int, error) {
	if len(args) != 1 {
		return 0, d.ArgErr()
	}
	n, err := strconv.Atoi(args[0])
	if err != nil {
		return 0, d.Errf("%q is not a whole number", args[0])
	}
	return n, nil
}

func parseDuration(d *caddyfile.Dispenser, args []string) (caddy.Duration, error) {
	if len(args) != 1 {
		return 0, d.ArgErr()
	}
	dur, err := caddy.ParseDuration(args[0])
	if err != nil {
		return 0, d.Errf("%q is not a duration (such as 30s or 5m): %v", args[0], err)
	}
	return caddy.Duration(dur), nil
}

func parseTLSMode(d *caddyfile.Dispenser, args []string) (transport.TLSMode, error) {
	if len(args) != 1 {
		return "", d.ArgErr()
	}
	m, err := transport.ParseTLSMode(args[0])
	if err != nil {
		return "", d.WrapErr(err)
	}
	return m, nil
}

// parseBool reads an optional true/false: a flag alone means true.
func parseBool(d *caddyfile.Dispenser, args []string) (bool, error) {
	switch len(args) {
	case 0:
		return true, nil
	case 1:
		b, err := strconv.ParseBool(args[0])
		if err != nil {
			return false, d.Errf("%q is not true or false", args[0])
		}
		return b, nil
	}
	return false, d.ArgErr()
}

func parseDelay(d *caddyfile.Dispenser, args []string) (strategy.Delay, error) {
	if len(args) != 1 {
		return 0, d.ArgErr()
	}
	v, err := strategy.ParseDelay(args[0])
	if err != nil {
		return 0, d.WrapErr(err)
	}
	return v, nil
}

// sourcesBlock reads source addresses one per line: <address> [ehlo <name>].
func sourcesBlock(v6 bool) blockParser[[]strategy.Source] {
	parse := sourcesParser(v6)
	return func(d *caddyfile.Dispenser, nesting int) ([]strategy.Source, error) {
		var out []strategy.Source
		for {
			line := append([]string{d.Val()}, d.RemainingArgs()...)
			src, err := parse(d, line[:1])
			if err != nil {
				return nil, err
			}
			switch {
			case len(line) == 3 && line[1] == "ehlo":
				src[0].EHLO = line[2]
			case len(line) != 1:
				return nil, d.Err("a source line is <address> [ehlo <name>]")
			}
			out = append(out, src[0])
			if !d.NextBlock(nesting) {
				return out, nil
			}
		}
	}
}

func sourcesParser(v6 bool) valueParser[[]strategy.Source] {
	return func(d *caddyfile.Dispenser, args []string) ([]strategy.Source, error) {
		out := make([]strategy.Source, 0, len(args))
		for _, a := range args {
			ip, err := netip.ParseAddr(a)
			if err != nil {
				return nil, d.Errf("%q is not an IP address", a)
			}
			if ip.Is4() == v6 || ip.Is4In6() {
				return nil, d.Errf("%s is not an %s address", a, map[bool]string{false: "IPv4", true: "IPv6"}[v6])
			}
			out = append(out, strategy.Source{Address: a})
		}
		return out, nil
	}
}

// Interface guards
var _ caddyfile.Unmarshaler = (*App)(nil)

func parseResolver(d *caddyfile.Dispenser) (*resolver.Config, error) {
	cfg := &resolver.Config{Servers: d.RemainingArgs()}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		key := d.Val()
		args := d.RemainingArgs()
		var err error
		switch key {
		case "servers":
			if len(args) == 0 {
				return nil, d.Err("servers needs at least one server")
			}
			cfg.Servers = append(cfg.Servers, args...)
		case "trust_ad":
			var b bool
			b, err = parseBool(d, args)
			cfg.TrustAD = &b
		case "timeout":
			cfg.Timeout, err = parseDuration(d, args)
		case "attempts":
			cfg.Attempts, err = parseInt(d, args)
		case "try_tcp_on_error":
			var b bool
			b, err = parseBool(d, args)
			cfg.TryTCPOnError = &b
		case "max_in_flight":
			cfg.MaxInFlight, err = parseInt(d, args)
		case "cache":
			if len(args) > 0 {
				return nil, d.ArgErr()
			}
			cfg.Cache, err = parseResolverCache(d)
		default:
			return nil, d.Errf("unknown resolver option %q (known: servers, trust_ad, timeout, attempts, try_tcp_on_error, max_in_flight, cache)", key)
		}
		if err != nil {
			return nil, err
		}
	}
	return cfg, nil
}

func parseResolverCache(d *caddyfile.Dispenser) (*resolver.CacheConfig, error) {
	c := new(resolver.CacheConfig)
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		key := d.Val()
		args := d.RemainingArgs()
		var err error
		switch key {
		case "size":
			c.Size, err = parseInt(d, args)
		case "min_ttl":
			c.MinTTL, err = parseDuration(d, args)
		case "max_ttl":
			c.MaxTTL, err = parseDuration(d, args)
		case "max_negative_ttl":
			c.MaxNegativeTTL, err = parseDuration(d, args)
		default:
			return nil, d.Errf("unknown resolver cache option %q (known: size, min_ttl, max_ttl, max_negative_ttl)", key)
		}
		if err != nil {
			return nil, err
		}
	}
	return c, nil
}

func parsePool(d *caddyfile.Dispenser) (*Pool, error) {
	if d.NextArg() {
		return nil, d.ArgErr()
	}
	pool := new(Pool)
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		key := d.Val()
		args := d.RemainingArgs()
		var err error
		switch key {
		case "max_messages":
			pool.MaxMessages, err = parseInt(d, args)
		case "idle_timeout":
			pool.IdleTimeout, err = parseDuration(d, args)
		default:
			return nil, d.Errf("unknown pool option %q (known: max_messages, idle_timeout)", key)
		}
		if err != nil {
			return nil, err
		}
	}
	return pool, nil
}
