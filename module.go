// Package caddysmtp is the `smtp` Caddy app: an outbound SMTP and LMTP
// delivery engine configured as Stalwart's outbound transport is
// (queue.outbound), in Caddy JSON or the Caddyfile's `smtp` global option.
package caddysmtp

import (
	"crypto/x509"
	"encoding/json"
	"fmt"
	"os"
	"reflect"
	"sync/atomic"
	"text/template"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyevents"
	"go.uber.org/zap"

	"github.com/seed7b014b84/caddy-smtp/dkim"
	"github.com/seed7b014b84/caddy-smtp/internal/strictjson"
	"github.com/seed7b014b84/caddy-smtp/queue"
	"github.com/seed7b014b84/caddy-smtp/resolver"
	"github.com/seed7b014b84/caddy-smtp/rules"
	"github.com/seed7b014b84/caddy-smtp/strategy"
	"github.com/seed7b014b84/caddy-smtp/tlsrpt"
	"github.com/seed7b014b84/caddy-smtp/transport"
)

func init() {
	caddy.RegisterModule(App{})
}

// App is the `smtp` app: outbound mail delivery for Caddy.
//
// Every setting marked "rule list" may be given as a plain value or as a
// list of rules, [{"if": EXPR, "then": VALUE}, ..., {"else": VALUE}], where
// EXPR is a CEL expression over the variables documented in package rules
// (retry_num, sender, sender_domain, rcpt, rcpt_domain, mx, remote_ip,
// local_ip, last_error, last_status, size, priority, queue_age) and `lists`.
type App struct {
	// Hostname is the name the app greets servers with (EHLO or LHLO).
	// Caddy placeholders such as {env.SMTP_HOSTNAME} are replaced when the
	// config loads. Default: the machine's host name. Rule list.
	Hostname rules.Setting[string] `json:"hostname,omitzero"`

	// NextHop routes each recipient: the name of a remote in `remotes`, or
	// false to deliver to the recipient domain's MX hosts. Default: false.
	// Rule list, e.g. [{"if": "rcpt_domain in lists.local", "then":
	// "lmtp"}, {"else": false}].
	NextHop rules.Setting[NextHop] `json:"next_hop,omitzero"`

	// Remotes are the named servers next_hop can send to: relays over
	// SMTP, message stores over LMTP.
	Remotes map[string]*Remote `json:"remotes,omitempty"`

	// Lists are named lists of strings (domains, addresses, ...) that rule
	// conditions can test: `rcpt_domain in lists.domains`.
	Lists map[string][]string `json:"lists,omitempty"`

	// IPStrategy is which address families are tried, in which order:
	// "ipv4_only", "ipv6_only", "ipv6_then_ipv4" or "ipv4_then_ipv6" (the
	// spellings with `-` are read too). Default: "ipv4_then_ipv6", as
	// Stalwart: IPv4 is what receivers' reputation systems know best, and
	// IPv6 is still tried when IPv4 fails. Rule list.
	IPStrategy rules.Setting[strategy.IPStrategy] `json:"ip_strategy,omitzero"`

	// SourceIP lists the local addresses to send from, per family.
	SourceIP *SourceIP `json:"source_ip,omitempty"`

	// FallbackDelay is the happy-eyeballs delay (RFC 8305) of the _then_
	// strategies: when an address has not connected within it, the next
	// address (of the other family first) is tried beside it, and the
	// first to connect wins. "off" (or -1) tries addresses strictly one
	// after another, each for the whole connect timeout. Default: 250ms,
	// RFC 8305's Connection Attempt Delay. Rule list.
	FallbackDelay rules.Setting[strategy.Delay] `json:"fallback_delay,omitzero"`

	// Limits bound how many MX hosts and addresses an attempt tries.
	Limits *Limits `json:"limits,omitempty"`

	// Timeouts bound each phase of a session.
	Timeouts *Timeouts `json:"timeouts,omitempty"`

	// TLS is the TLS policy: STARTTLS, certificate checks, MTA-STS, DANE.
	TLS *TLS `json:"tls,omitempty"`

	// Pool bounds how connections are kept for reuse. Pools with the same
	// settings are shared across config reloads, warm connections
	// included.
	Pool *Pool `json:"pool,omitempty"`

	// Queue is the outbound queue: where messages wait between attempts,
	// the retry schedule, when they expire, and how many go at once.
	Queue *QueueConfig `json:"queue,omitempty"`

	// DKIM are the DKIM signers (RFC 6376, 8463): a domain, a selector,
	// an algorithm and a key each. A message is signed as it enters the
	// queue, by the signers of the domains dkim_sign chooses (by default,
	// the domain of its From header field, so that the signature aligns
	// with From for DMARC); delivery status notifications are signed too.
	// Keys without a file are made on first use and kept in Caddy's
	// storage; `caddy smtp-dkim` prints their DNS records.
	DKIM []dkim.Config `json:"dkim,omitempty"`

	// DKIMSign chooses the domains a message is signed as: a list of
	// domains, each signed with every signer it has in dkim (a domain
	// named here must have one). "from" stands for the domain of the
	// message's From header field when it has a signer, and for nothing
	// otherwise, so that mail from other domains passes unsigned.
	// Default: ["from"]. Rule list, e.g. [{"if":
	// "sender_domain == 'lists.example.org'", "then":
	// ["lists.example.org"]}, {"else": ["from"]}].
	DKIMSign rules.Setting[[]string] `json:"dkim_sign,omitzero"`

	// Resolver is the DNS resolver's settings: servers, timeouts, cache.
	// Default: the servers of /etc/resolv.conf, with a cache of 10000
	// answers. Resolvers with the same settings are shared across config
	// reloads, caches included.
	Resolver *resolver.Config `json:"resolver,omitempty"`

	ctx             caddy.Context
	logger          *zap.Logger
	env             *rules.Env
	dns             *resolver.Resolver
	releaseResolver func()
	pool            *transport.Pool
	releasePool     func()
	events          *caddyevents.App
	stopped         *atomic.Bool // set by Stop; a pointer, as App is copied by value
	sts             *stsState
	reports         *tlsrpt.Record
	releaseReports  func()
	// rootCAs verifies servers' certificates; nil is the system's roots
	// (which SSL_CERT_FILE and SSL_CERT_DIR can point elsewhere).
	rootCAs *x509.CertPool
	// queue is the running queue, from Start on; releaseQueue gives it
	// back to the pool.
	queue        *queue.Queue
	releaseQueue func()
	// store is the queue's store module.
	store queue.StoreModule
	// dsnTemplate is queue.dsn_template, parsed; nil: the default.
	dsnTemplate *template.Template
	// dkim signs messages; nil when no signer is configured.
	dkim *dkim.Signer
	// dkimDomains are the domains with a signer, lower case.
	dkimDomains map[string]bool
}

// The defaults Provision sets; the field comments explain each choice.
const (
	defaultIPStrategy  = strategy.IPv4ThenIPv6
	defaultMX          = 7
	defaultMultihomed  = 2
	defaultConcurrency = 10
)

var defaultTimeouts = map[string]time.Duration{
	"connect":   30 * time.Second,
	"greeting":  5 * time.Minute,
	"tls":       time.Minute,
	"ehlo":      5 * time.Minute,
	"mail_from": 5 * time.Minute,
	"rcpt_to":   5 * time.Minute,
	"data":      10 * time.Minute,
	"mta_sts":   time.Minute,
}

// CaddyModule returns the Caddy module information.
func (App) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "smtp",
		New: func() caddy.Module { return new(App) },
	}
}

// UnmarshalJSON decodes the app's config strictly: an unknown key, a value
// of the wrong type or a value out of its set (an unknown ip_strategy, say)
// is an error that names the key path.
func (a *App) UnmarshalJSON(b []byte) error {
	if err := strictjson.Check(b, reflect.TypeFor[App]()); err != nil {
		return err
	}
	type plain App
	var p plain
	if err := json.Unmarshal(b, &p); err != nil {
		return err
	}
	*a = App(p)
	return nil
}

// Provision sets every default, resolves placeholders and compiles the rule
// lists.
func (a *App) Provision(ctx caddy.Context) error {
	a.ctx = ctx
	a.stopped = new(atomic.Bool)
	a.logger = ctx.Logger()

	if err := a.setDefaults(); err != nil {
		return err
	}
	if err := a.replacePlaceholders(); err != nil {
		return err
	}
	env, err := rules.NewEnv(a.Lists)
	if err != nil {
		return err
	}
	a.env = env
	if err := a.compileRules(); err != nil {
		return err
	}
	if err := a.Queue.compile(a.env); err != nil {
		return err
	}
	if err := a.provisionStore(); err != nil {
		return err
	}
	if err := a.provisionDSN(); err != nil {
		return err
	}
	if err := a.provisionResolver(); err != nil {
		return err
	}
	if err := a.provisionDKIM(); err != nil {
		return err
	}
	if err := queue.RegisterMetrics(ctx.GetMetricsRegistry()); err != nil {
		return err
	}
	a.provisionEvents()
	a.sts = &stsState{}
	rec, _, err := reportsPool.LoadOrNew("tlsrpt", func() (caddy.Destructor, error) { return tlsrpt.NewRecord(), nil })
	if err != nil {
		return err
	}
	a.reports, a.releaseReports = rec.(*tlsrpt.Record), func() { _, _ = reportsPool.Delete("tlsrpt") }
	return a.provisionPool()
}

// provisionPool takes the shared connection pool for the configured
// settings, so that a reload keeps warm connections.
func (a *App) provisionPool() error {
	if a.Pool == nil {
		a.Pool = new(Pool)
	}
	if a.Pool.MaxMessages == 0 {
		a.Pool.MaxMessages = 100
	}
	if a.Pool.IdleTimeout == 0 {
		a.Pool.IdleTimeout = caddy.Duration(10 * time.Second)
	}
	pool, release, err := transport.GetPool(transport.PoolConfig{
		MaxMessages: a.Pool.MaxMessages,
		IdleTimeout: time.Duration(a.Pool.IdleTimeout),
	})
	if err != nil {
		return fmt.Errorf("pool: %w", err)
	}
	a.pool, a.releasePool = pool, release
	return transport.RegisterMetrics(a.ctx.GetMetricsRegistry())
}

// ConnPool returns the app's connection pool.
func (a *App) ConnPool() *transport.Pool { return a.pool }

// provisionResolver takes the shared resolver for the configured settings
// (a new one only when no running config has the same settings).
func (a *App) provisionResolver() error {
	if a.Resolver == nil {
		a.Resolver = new(resolver.Config)
	}
	r, release, err := resolver.Get(*a.Resolver, "resolver")
	if err != nil {
		return err
	}
	r.SetLogger(a.logger.Named("resolver"))
	a.dns, a.releaseResolver = r, release
	return resolver.RegisterMetrics(a.ctx.GetMetricsRegistry())
}

// DefaultHostname returns the app's EHLO name when no rule picks another:
// its plain value, or the else of its rule list. Other modules use it to
// name themselves (in a Message-ID, a greeting).
func (a *App) DefaultHostname() string {
	vals := a.Hostname.Values()
	if len(vals) > 0 {
		return vals[len(vals)-1]
	}
	return "localhost"
}

// DNS returns the app's resolver.
func (a *App) DNS() *resolver.Resolver { return a.dns }

// Planner returns a connection planner that follows the app's settings
// and resolves with its resolver.
func (a *App) Planner() *strategy.Planner {
	return &strategy.Planner{
		DNS: a.dns,
		Settings: strategy.Settings{
			Hostname:      &a.Hostname,
			IPStrategy:    &a.IPStrategy,
			MX:            &a.Limits.MX,
			Multihomed:    &a.Limits.Multihomed,
			SourcesV4:     &a.SourceIP.V4,
			SourcesV6:     &a.SourceIP.V6,
			Connect:       &a.Timeouts.Connect,
			FallbackDelay: &a.FallbackDelay,
		},
	}
}

// Cleanup releases what the app shares with other configs (the resolver
// and the connection pool),
// when Caddy unloads this config.
func (a *App) Cleanup() error {
	if a.releaseResolver != nil {
		a.releaseResolver()
	}
	if a.releasePool != nil {
		a.releasePool()
	}
	if a.releaseReports != nil {
		a.releaseReports()
	}
	if a.releaseQueue != nil {
		a.releaseQueue()
	}
	if a.dkim != nil {
		a.dkim.Stop()
	}
	return nil
}

func (a *App) setDefaults() error {
	if a.Hostname.IsZero() {
		host, err := os.Hostname()
		if err != nil {
			return fmt.Errorf("hostname: not set, and the machine's host name is unknown: %w", err)
		}
		a.Hostname = rules.Plain(host)
	}
	if a.NextHop.IsZero() {
		a.NextHop = rules.Plain(MX)
	}
	if a.IPStrategy.IsZero() {
		a.IPStrategy = rules.Plain(defaultIPStrategy)
	}
	defaultSetting(&a.FallbackDelay, strategy.Delay(strategy.DefaultFallbackDelay))
	if a.SourceIP == nil {
		a.SourceIP = new(SourceIP)
	}
	if a.SourceIP.V4.IsZero() {
		a.SourceIP.V4 = rules.Plain([]strategy.Source{})
	}
	if a.SourceIP.V6.IsZero() {
		a.SourceIP.V6 = rules.Plain([]strategy.Source{})
	}
	if a.Limits == nil {
		a.Limits = new(Limits)
	}
	defaultSetting(&a.Limits.MX, defaultMX)
	defaultSetting(&a.Limits.Multihomed, defaultMultihomed)
	if a.Timeouts == nil {
		a.Timeouts = new(Timeouts)
	}
	for _, t := range a.timeoutSettings() {
		defaultSetting(t.setting, caddy.Duration(defaultTimeouts[t.key]))
	}
	if a.TLS == nil {
		a.TLS = new(TLS)
	}
	defaultSetting(&a.TLS.StartTLS, transport.TLSOptional)
	defaultSetting(&a.TLS.AllowInvalidCerts, false)
	defaultSetting(&a.TLS.MTASTS, transport.TLSOptional)
	defaultSetting(&a.TLS.DANE, transport.TLSOptional)
	if a.Queue == nil {
		a.Queue = new(QueueConfig)
	}
	a.Queue.setDefaults()
	for _, r := range a.Remotes {
		if r == nil {
			continue // Validate reports it
		}
		if r.Protocol == "" {
			r.Protocol = transport.SMTP
		}
		if r.TLS == nil {
			r.TLS = new(RemoteTLS)
		}
		if r.Port == 0 {
			r.Port = r.Protocol.DefaultPort(r.TLS.Implicit)
		}
		if r.Concurrency == 0 {
			r.Concurrency = defaultConcurrency
		}
	}
	return nil
}

func defaultSetting[T any](s *rules.Setting[T], v T) {
	if s.IsZero() {
		*s = rules.Plain(v)
	}
}

// namedTimeout is a timeout setting with its JSON key.
type namedTimeout struct {
	key     string
	setting *rules.Setting[caddy.Duration]
}

// timeoutSettings lists the timeouts in their documented order.
func (a *App) timeoutSettings() []namedTimeout {
	t := a.Timeouts
	return []namedTimeout{
		{"connect", &t.Connect},
		{"greeting", &t.Greeting},
		{"tls", &t.TLS},
		{"ehlo", &t.EHLO},
		{"mail_from", &t.MailFrom},
		{"rcpt_to", &t.RcptTo},
		{"data", &t.Data},
		{"mta_sts", &t.MTASTS},
	}
}

// replacePlaceholders resolves Caddy's global placeholders ({env.*},
// {file.*}, {system.*}) in the hostname and in remotes' credentials; an
// unknown or empty placeholder is an error, not a silently empty secret.
func (a *App) replacePlaceholders() error {
	repl := caddy.NewReplacer()
	replace := func(path string, s *string) error {
		out, err := repl.ReplaceOrErr(*s, true, true)
		if err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		*s = out
		return nil
	}
	if err := a.Hostname.Each("hostname", replace); err != nil {
		return err
	}
	for _, name := range sortedNames(a.Remotes) {
		r := a.Remotes[name]
		if r == nil || r.Auth == nil {
			continue
		}
		at := "remotes." + name + ".auth."
		if err := replace(at+"username", &r.Auth.Username); err != nil {
			return err
		}
		if err := replace(at+"secret", &r.Auth.Secret); err != nil {
			return err
		}
	}
	return nil
}

// compileRules compiles every rule list with its key path.
func (a *App) compileRules() error {
	compilers := []struct {
		path    string
		compile func(string, *rules.Env) error
	}{
		{"hostname", a.Hostname.Compile},
		{"next_hop", a.NextHop.Compile},
		{"ip_strategy", a.IPStrategy.Compile},
		{"fallback_delay", a.FallbackDelay.Compile},
		{"source_ip.v4", a.SourceIP.V4.Compile},
		{"source_ip.v6", a.SourceIP.V6.Compile},
		{"limits.mx", a.Limits.MX.Compile},
		{"limits.multihomed", a.Limits.Multihomed.Compile},
		{"tls.starttls", a.TLS.StartTLS.Compile},
		{"tls.allow_invalid_certs", a.TLS.AllowInvalidCerts.Compile},
		{"tls.mta_sts", a.TLS.MTASTS.Compile},
		{"tls.dane", a.TLS.DANE.Compile},
	}
	for _, t := range a.timeoutSettings() {
		compilers = append(compilers, struct {
			path    string
			compile func(string, *rules.Env) error
		}{"timeouts." + t.key, t.setting.Compile})
	}
	for _, c := range compilers {
		if err := c.compile(c.path, a.env); err != nil {
			return err
		}
	}
	return nil
}

// Start starts the app: from now on it is the one deliveries log and emit
// events through, and the queue (opened the first time, kept across
// reloads) delivers with this config's settings.
func (a *App) Start() error {
	if err := a.startDKIM(); err != nil {
		return err
	}
	if err := a.startQueue(); err != nil {
		return err
	}
	running.Store(a)
	go a.refreshSTS()
	go a.updateQueueGauges()
	a.logger.Info("smtp app started",
		zap.Int("remotes", len(a.Remotes)),
		zap.Int("lists", len(a.Lists)))
	return nil
}

// Stop stops the app. It returns at once and never blocks the admin API:
// deliveries in flight finish on their connections (the pool and the
// queue are shared with the next config and released in Cleanup).
func (a *App) Stop() error {
	if a.stopped != nil {
		a.stopped.Store(true)
	}
	running.CompareAndSwap(a, nil)
	return nil
}

// Interface guards
var (
	_ caddy.App          = (*App)(nil)
	_ caddy.Provisioner  = (*App)(nil)
	_ caddy.Validator    = (*App)(nil)
	_ caddy.CleanerUpper = (*App)(nil)
	_ json.Unmarshaler   = (*App)(nil)
)
