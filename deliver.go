package caddysmtp

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/seed7b014b84/caddy-smtp/delivery"
	"github.com/seed7b014b84/caddy-smtp/mtasts"
	"github.com/seed7b014b84/caddy-smtp/resolver"
	"github.com/seed7b014b84/caddy-smtp/rules"
	"github.com/seed7b014b84/caddy-smtp/strategy"
	"github.com/seed7b014b84/caddy-smtp/tlsrpt"
	"github.com/seed7b014b84/caddy-smtp/transport"
)

// route is where a group of recipients goes: a remote, or the MX hosts of
// a domain.
type route struct {
	remote string
	domain string
}

func (r route) String() string {
	if r.remote != "" {
		return r.remote
	}
	return "mx"
}

// Deliver makes one delivery attempt of msg to all its recipients.
//
// Recipients are grouped by the route their next_hop gives (a remote, or
// MX for their domain), and the routes are tried at once. On a route, the
// hosts are tried in the plan's order: a host that cannot be connected to,
// or whose session fails before MAIL (greeting, 421, TLS, EHLO, AUTH),
// gives way to the next. Once a transaction is made, each recipient has
// the server's answer: delivered, deferred (4xx) or failed (5xx).
// Recipients that no host could take are deferred, or failed when the
// destination can never take mail (no such domain, null MX).
//
// The error is only for a message that cannot be attempted at all (no
// recipients, no body); every other outcome is in the report.
//
// Called on the app of a config that a reload replaced, it delivers with
// the running config's app: new deliveries follow the new config.
func (a *App) Deliver(ctx context.Context, msg *Message) (*Report, error) {
	if cur := a.successor(); cur != nil {
		// A caller still holding the app of a replaced config (a session
		// that began before a reload): the running config delivers.
		return cur.Deliver(ctx, msg)
	}
	if err := checkMessage(msg); err != nil {
		return nil, err
	}
	report := &Report{Recipients: make([]RecipientReport, len(msg.To))}
	for i, r := range msg.To {
		report.Recipients[i] = RecipientReport{Rcpt: r.Addr, Status: transport.Deferred}
	}
	routes := a.Routes(ctx, msg)
	a.eachRoute(len(routes), func(n int) {
		rt := routes[n]
		for k, rr := range a.DeliverRoute(ctx, msg, rt) {
			report.Recipients[rt.Rcpts[k]] = rr
		}
	})
	for _, rr := range report.Recipients {
		a.logOutcome(msg, rr)
		a.emit(msg, rr)
	}
	return report, nil
}

// successor returns the running config's app when a is the app of a
// config that a reload replaced, else nil.
func (a *App) successor() *App {
	if cur := running.Load(); cur != nil && cur != a && a.stopped != nil && a.stopped.Load() {
		return cur
	}
	return nil
}

// baseVars are the rule variables of msg before a recipient is chosen.
func baseVars(msg *Message) rules.Vars {
	v := msg.Vars
	v.Sender, v.SenderDomain, v.Size = msg.From, domainOf(msg.From), msg.Size
	v.Priority = int64(msg.Priority)
	if v.Source == "" {
		v.Source = msg.Source
	}
	return v
}

// Routes groups msg's recipients by the route their next_hop gives: a
// remote ("remote:NAME"), or the MX hosts of their domain ("mx:DOMAIN").
// A route's destination, which the queue caps and suspends, is the remote,
// or the set of the domain's MX hosts (from the resolver's cache, most of
// the time), so that domains served by the same hosts count as one.
func (a *App) Routes(ctx context.Context, msg *Message) []delivery.Route {
	if cur := a.successor(); cur != nil {
		return cur.Routes(ctx, msg)
	}
	base := baseVars(msg)
	var routes []delivery.Route
	byKey := map[string]int{}
	for i, r := range msg.To {
		v := base
		v.Rcpt, v.RcptDomain = r.Addr, domainOf(r.Addr)
		var key string
		hop, err := a.NextHop.Eval(&v)
		switch {
		case err != nil:
			key = "error:" + err.Error()
		case hop == MX:
			key = "mx:" + v.RcptDomain
		default:
			key = "remote:" + string(hop)
		}
		n, ok := byKey[key]
		if !ok {
			n = len(routes)
			byKey[key] = n
			rt := delivery.Route{Key: key, Err: err}
			switch {
			case err != nil:
				rt.Err = fmt.Errorf("next_hop: %w", err)
			case hop == MX:
				rt.Destination = a.mxDestination(ctx, v.RcptDomain)
			default:
				rt.Destination = key
				if r := a.Remotes[string(hop)]; r != nil {
					rt.Concurrency = r.Concurrency
				}
			}
			routes = append(routes, rt)
		}
		routes[n].Rcpts = append(routes[n].Rcpts, i)
	}
	return routes
}

// mxDestination names the destination of a domain delivered by MX: its MX
// hosts, sorted, when the resolver has them cached (the first delivery
// caches them), or the domain itself: naming a destination never waits
// for DNS, so that a message to many domains is routed at once.
func (a *App) mxDestination(ctx context.Context, domain string) string {
	res, err := a.dns.LookupMX(resolver.CachedOnly(ctx), domain)
	if err != nil || len(res.Hosts) == 0 {
		return "mx:" + domain
	}
	hosts := make([]string, 0, len(res.Hosts))
	for _, h := range res.Hosts {
		hosts = append(hosts, h.Host)
	}
	slices.Sort(hosts)
	return "mx:" + strings.Join(slices.Compact(hosts), ",")
}

// DeliverRoute makes one attempt to deliver msg to the recipients of one
// route (see Deliver), and returns their reports in route.Rcpts's order.
func (a *App) DeliverRoute(ctx context.Context, msg *Message, rt delivery.Route) []RecipientReport {
	if cur := a.successor(); cur != nil {
		return cur.DeliverRoute(ctx, msg, rt)
	}
	out := make([]RecipientReport, len(rt.Rcpts))
	for k, i := range rt.Rcpts {
		out[k] = RecipientReport{Rcpt: msg.To[i].Addr, Status: transport.Deferred}
	}
	switch {
	case rt.Err != nil:
		for k := range out {
			rr := &out[k]
			rr.Error, rr.ErrorClass = rt.Err.Error(), "config"
			rr.Reply = localReply(451, "4.3.5", rt.Err.Error())
		}
	case strings.HasPrefix(rt.Key, "remote:"):
		a.deliverRoute(ctx, msg, baseVars(msg), route{remote: strings.TrimPrefix(rt.Key, "remote:")}, rt.Rcpts, out)
	default:
		a.deliverRoute(ctx, msg, baseVars(msg), route{domain: strings.TrimPrefix(rt.Key, "mx:")}, rt.Rcpts, out)
	}
	return out
}

// maxRoutesInFlight bounds the routes of one message delivered at once, so
// that a message with many recipient domains costs memory in proportion to
// its recipients, not a goroutine (and a connection attempt) per domain.
const maxRoutesInFlight = 32

// eachRoute calls deliver for routes 0 to n-1, at most maxRoutesInFlight
// at once, and returns when all are done. A goroutine is started only when
// a slot is free, so at most maxRoutesInFlight exist at a time.
func (a *App) eachRoute(n int, deliver func(int)) {
	if n == 1 {
		deliver(0)
		return
	}
	slots := make(chan struct{}, maxRoutesInFlight)
	var wg sync.WaitGroup
	for i := range n {
		slots <- struct{}{}
		wg.Go(func() {
			defer func() { <-slots }()
			deliver(i)
		})
	}
	wg.Wait()
}

func checkMessage(msg *Message) error {
	if msg == nil || msg.Body == nil {
		return errors.New("deliver: message has no body")
	}
	if len(msg.To) == 0 {
		return errors.New("deliver: message has no recipients")
	}
	if strings.ContainsAny(msg.From, "<>\r\n ") {
		return fmt.Errorf("deliver: malformed sender %q", msg.From)
	}
	return nil
}

// domainOf returns the lowercased domain of an address.
func domainOf(addr string) string {
	if i := strings.LastIndexByte(addr, '@'); i >= 0 {
		return strings.ToLower(addr[i+1:])
	}
	return ""
}

// deliverRoute delivers to the recipients idx of one route, writing their
// reports into out, in idx's order.
func (a *App) deliverRoute(ctx context.Context, msg *Message, base rules.Vars, key route, idx []int, out []RecipientReport) {
	start := time.Now()
	vars := base
	vars.Rcpt = msg.To[idx[0]].Addr
	vars.RcptDomain = domainOf(vars.Rcpt)
	// finish gives every recipient of the route the same outcome: a
	// status and why, and the reply when one decided it.
	finish := func(status transport.Status, class string, err error, rep *transport.Reply) {
		for k := range idx {
			rr := &out[k]
			rr.Route, rr.Status, rr.Duration, rr.Reply, rr.ErrorClass = key.String(), status, time.Since(start), rep, class
			if err != nil {
				rr.Error = err.Error()
			}
		}
	}
	// refuse fails the route with a made-up reply (REQUIRETLS).
	refuse := func(rep *transport.Reply) { finish(transport.Failed, "tls", errors.New(rep.Text()), rep) }

	dest := strategy.Destination{Domain: key.domain}
	var remote *Remote
	if key.remote != "" {
		remote = a.Remotes[key.remote]
		dest.Remote = &strategy.Remote{Name: key.remote, Address: remote.Address, Port: uint16(remote.Port)}
	}
	plan, err := a.Planner().Plan(ctx, dest, vars)
	if err != nil {
		status, rep := dnsOutcome(err)
		finish(status, "dns", err, rep)
		return
	}
	var sts *mtasts.Policy
	if remote == nil {
		if sts, err = a.stsPolicy(ctx, plan, &vars); err != nil {
			finish(transport.Deferred, "mta_sts", err, localReply(451, "4.7.5", "MTA-STS: "+err.Error()))
			return
		}
	}
	if msg.RequireTLS && remote == nil && plan.MXSecurity != resolver.Secure && (sts == nil || sts.Mode != mtasts.ModeEnforce) {
		// RFC 8689, section 4.2.1: the MX must be looked up securely,
		// with DNSSEC or under an MTA-STS policy.
		refuse(requireTLSReply("the MX records of " + plan.Domain + " are not DNSSEC-secure, and it has no MTA-STS policy in enforce mode"))
		return
	}

	var lastErr error
	lastClass := "connection"
	for hi := 0; hi < len(plan.Hosts); hi++ {
		h := &plan.Hosts[hi]
		if h.Err != nil {
			lastErr, lastClass = h.Err, "dns"
			continue
		}
		hv := vars
		hv.MX = h.Name
		opts, err := a.sessionOptions(h, remote, &hv)
		if err != nil {
			lastErr, lastClass = err, "config"
			continue
		}
		policy := basePolicy(opts)
		if remote == nil {
			if policy, err = a.applyDANE(ctx, plan, h, &hv, &opts); err != nil {
				lastErr, lastClass = err, "dane"
				continue
			}
			policy = applySTS(sts, h, &opts, policy, func(err error) {
				a.logger.Warn("MTA-STS testing: certificate would fail the policy", zap.String("domain", plan.Domain),
					zap.String("host", h.Name), zap.Error(err))
				a.reports.Failure(plan.Domain, tlsrpt.PolicySTS, tlsFailure(err))
			})
		}
		if msg.RequireTLS {
			if why := requireTLSOptions(&opts, policy); why != "" {
				refuse(requireTLSReply(why))
				return
			}
		}
		group, limit := "mx:"+h.Name, 0
		if remote != nil {
			group, limit = "remote:"+key.remote, remote.Concurrency
		}
		for attempt := 0; attempt < 2; attempt++ {
			c, err := a.pool.Session(ctx, poolKeys(h, opts, policy), group, limit, func(ctx context.Context) (*transport.Client, error) {
				conn, err := (&strategy.Dialer{}).DialHost(ctx, h)
				if err != nil {
					return nil, err
				}
				o := opts
				o.Hostname, o.Source = conn.EHLO, conn.Source
				return transport.Dial(ctx, conn, o)
			})
			if remote == nil {
				a.reportSession(plan.Domain, policy, err)
			}
			if err != nil {
				lastErr, lastClass = err, errorClass(err)
				break // next host
			}
			reused := c.Messages() > 0
			env := &transport.Envelope{From: msg.From, Size: msg.Size, EightBit: msg.EightBit, SMTPUTF8: msg.SMTPUTF8,
				Ret: msg.Ret, EnvID: msg.EnvID, RequireTLS: msg.RequireTLS}
			for _, i := range idx {
				env.To = append(env.To, msg.To[i])
			}
			results, derr := c.Deliver(ctx, env, io.NewSectionReader(msg.Body, 0, msg.Size))
			info := sessionInfo(h, c)
			dsnOffered := c.Capabilities().Has("DSN")
			a.pool.Release(poolKeyOf(c, opts, policy), c)
			if derr != nil && reused && noReply(results) && attempt == 0 {
				// A kept connection that the server had given up on:
				// once more on a new one.
				continue
			}
			for j := range idx {
				rr := &out[j]
				rr.Route, rr.Duration = key.String(), time.Since(start)
				rr.Host, rr.Address, rr.Source, rr.TLSVersion, rr.TLSCipher = info.host, info.addr, info.source, info.tlsVersion, info.tlsCipher
				rr.TLSPolicy = policy
				rr.Protocol = string(opts.Protocol)
				res := results[j]
				rr.Status = res.Status
				if res.Reply.Code != 0 {
					rep := res.Reply
					rr.Reply = &rep
				}
				switch {
				case res.Err != nil:
					rr.Error, rr.ErrorClass = res.Err.Error(), errorClass(res.Err)
				case res.Status != transport.Delivered:
					rr.ErrorClass = "rejected"
				default:
					rr.DSNPassed = dsnOffered
				}
			}
			return
		}
	}
	if lastErr == nil {
		lastErr = errors.New("no host to deliver to")
	}
	finish(transport.Deferred, lastClass, lastErr, unreachableReply(lastErr))
}

// errorClass names the kind of a session's failure, as the rule variable
// last_error does: "tls" for a failed handshake or STARTTLS that was
// required, "rejected" for a server's refusal (a 421 greeting, a 5xx to
// EHLO), "unexpected_reply" for a reply that is not SMTP or not the one
// expected, "connection" for the rest (no connection, a dropped one, a
// timeout).
func errorClass(err error) string {
	var te *transport.Error
	switch {
	case errors.Is(err, transport.ErrMalformedReply), errors.Is(err, transport.ErrProtocol):
		return "unexpected_reply"
	case errors.As(err, &te) && te.Phase == transport.PhaseTLS && !te.Timeout:
		return "tls"
	case errors.As(err, &te) && te.Reply != nil:
		return "rejected"
	}
	return "connection"
}

// localReply is a reply this app makes up for an outcome no server
// replied to (a DNS failure, no host reachable), so that every recipient's
// report, log line, event and notice carries a code that says what
// happened. Local marks it as not a server's.
func localReply(code int, enhanced, text string) *transport.Reply {
	return &transport.Reply{Code: code, Enhanced: enhanced, Lines: []string{text}, Local: true}
}

// dnsOutcome is the status and reply of a route whose plan failed on DNS:
// a domain that publishes a null MX takes no mail (556 5.1.10, RFC 7505),
// a domain that does not exist is a bad destination (550 5.1.2, RFC 3463),
// and any other lookup failure is temporary (451 4.4.3, directory server
// failure).
func dnsOutcome(err error) (transport.Status, *transport.Reply) {
	switch {
	case errors.Is(err, resolver.ErrNullMX):
		return transport.Failed, localReply(556, "5.1.10", "the recipient's domain accepts no mail (null MX, RFC 7505)")
	case errors.Is(err, resolver.ErrNXDomain):
		return transport.Failed, localReply(550, "5.1.2", "the recipient's domain does not exist")
	case resolver.IsPermanent(err):
		return transport.Failed, localReply(550, "5.1.2", "the recipient's domain has no mail server: "+err.Error())
	}
	return transport.Deferred, localReply(451, "4.4.3", "DNS lookup failed, will try again: "+err.Error())
}

// unreachableReply is the reply of a route no host of which took the
// message: the last server's own reply when it refused the session for now
// (a 421 greeting), else 451 4.4.1 (no answer from host), whose text says
// why (a refused connection, a timeout, a TLS failure, a 5xx to EHLO).
func unreachableReply(err error) *transport.Reply {
	var te *transport.Error
	if errors.As(err, &te) && te.Reply != nil && te.Reply.Class() == transport.TransientNegative {
		rep := *te.Reply
		return &rep
	}
	return localReply(451, "4.4.1", "no host could be reached: "+err.Error())
}

func noReply(results []transport.RcptResult) bool {
	for _, r := range results {
		if r.Reply.Code != 0 {
			return false
		}
	}
	return true
}

// sessionOptions evaluates the settings for a session with host h.
func (a *App) sessionOptions(h *strategy.Host, remote *Remote, vars *rules.Vars) (transport.Options, error) {
	var opts transport.Options
	var err error
	if opts.StartTLS, err = a.TLS.StartTLS.Eval(vars); err != nil {
		return opts, err
	}
	if opts.AllowInvalidCerts, err = a.TLS.AllowInvalidCerts.Eval(vars); err != nil {
		return opts, err
	}
	timeout := func(s *rules.Setting[caddy.Duration]) (time.Duration, error) {
		d, err := s.Eval(vars)
		if err != nil {
			return 0, err
		}
		if remote != nil && remote.Timeout > 0 && time.Duration(remote.Timeout) < time.Duration(d) {
			return time.Duration(remote.Timeout), nil
		}
		return time.Duration(d), nil
	}
	t := &opts.Timeouts
	for _, f := range []struct {
		dst *time.Duration
		src *rules.Setting[caddy.Duration]
	}{{&t.Greeting, &a.Timeouts.Greeting}, {&t.TLS, &a.Timeouts.TLS}, {&t.EHLO, &a.Timeouts.EHLO},
		{&t.MailFrom, &a.Timeouts.MailFrom}, {&t.RcptTo, &a.Timeouts.RcptTo}, {&t.Data, &a.Timeouts.Data}} {
		if *f.dst, err = timeout(f.src); err != nil {
			return opts, err
		}
	}
	opts.Protocol = transport.SMTP
	opts.ServerName = h.Name
	opts.TLSConfig = &tls.Config{RootCAs: a.rootCAs}
	if remote != nil {
		opts.Protocol = remote.Protocol
		opts.ImplicitTLS = remote.TLS.Implicit
		opts.AllowInvalidCerts = opts.AllowInvalidCerts || remote.TLS.AllowInvalidCerts
		if remote.Auth != nil {
			opts.Auth = &transport.Auth{Username: remote.Auth.Username, Password: remote.Auth.Secret, AllowPlaintext: remote.Auth.AllowPlaintext}
		}
	}
	return opts, nil
}

// tlsPolicy names the TLS settings a session was made under, for its pool
// key: a session made under one policy never carries a message of another
// (a session whose certificate was not checked never carries a DANE one).
func tlsPolicy(o transport.Options, policy string) string {
	p := policy + "/" + string(o.StartTLS)
	if o.ImplicitTLS {
		p = "implicit"
	}
	if o.AllowInvalidCerts {
		p += "+invalid"
	}
	return p
}

func authName(o transport.Options) string {
	if o.Auth == nil {
		return ""
	}
	return o.Auth.Username
}

// poolKeys are the keys of the sessions that could carry a message to h:
// one per candidate address, with its first source.
func poolKeys(h *strategy.Host, o transport.Options, policy string) []transport.Key {
	keys := make([]transport.Key, 0, len(h.Candidates))
	for _, c := range h.Candidates {
		k := transport.Key{Addr: c.Addr, ServerName: o.ServerName, TLS: tlsPolicy(o, policy), EHLO: c.EHLO, Auth: authName(o), Protocol: o.Protocol}
		if len(c.Sources) > 0 {
			k.Source = c.Sources[0].Addr
		}
		keys = append(keys, k)
	}
	return keys
}

// poolKeyOf is the key of a session, from its connection.
func poolKeyOf(c *transport.Client, o transport.Options, policy string) transport.Key {
	k := transport.Key{ServerName: o.ServerName, TLS: tlsPolicy(o, policy), EHLO: c.Hostname(), Auth: authName(o), Protocol: o.Protocol}
	if ra, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		k.Addr = ra.AddrPort()
		k.Addr = netip.AddrPortFrom(k.Addr.Addr().Unmap(), k.Addr.Port())
	}
	if c.BoundSource().IsValid() {
		k.Source = c.BoundSource()
	}
	return k
}

type session struct {
	host, addr, source, tlsVersion, tlsCipher string
}

func sessionInfo(h *strategy.Host, c *transport.Client) session {
	s := session{host: h.Name, addr: c.RemoteAddr().String()}
	if la, ok := c.LocalAddr().(*net.TCPAddr); ok {
		s.source = la.AddrPort().Addr().Unmap().String()
	}
	if st := c.TLS(); st != nil {
		s.tlsVersion, s.tlsCipher = tls.VersionName(st.Version), tls.CipherSuiteName(st.CipherSuite)
	}
	return s
}

// logOutcome logs one recipient's outcome, through the running app's
// logger.
func (a *App) logOutcome(msg *Message, rr RecipientReport) {
	logger := a.current().logger
	fields := []zap.Field{
		zap.String("from", msg.From), zap.String("rcpt", rr.Rcpt), zap.String("route", rr.Route),
		zap.String("host", rr.Host), zap.String("address", rr.Address), zap.String("source", rr.Source),
		zap.String("tls", rr.TLSVersion), zap.String("tls_policy", rr.TLSPolicy), zap.Duration("duration", rr.Duration),
	}
	if rr.Reply != nil {
		fields = append(fields, zap.String("reply", rr.Reply.String()))
	}
	if rr.Error != "" {
		fields = append(fields, zap.String("error", rr.Error))
	}
	switch rr.Status {
	case transport.Delivered:
		logger.Info("delivered", fields...)
	case transport.Failed:
		logger.Warn("failed", fields...)
	default:
		logger.Warn("deferred", fields...)
	}
}

// requireTLSReply is the reply a REQUIRETLS message gets when it cannot be
// sent as RFC 8689 asks.
func requireTLSReply(why string) *transport.Reply {
	return &transport.Reply{Code: 550, Enhanced: "5.7.30", Lines: []string{"REQUIRETLS: " + why}, Local: true}
}

// requireTLSOptions makes a session fit for a REQUIRETLS message: TLS
// required, with a certificate verified (by PKIX, or by DANE). It returns
// why the session cannot be, or "".
func requireTLSOptions(opts *transport.Options, policy string) string {
	switch {
	case policy != PolicyDANE && opts.AllowInvalidCerts:
		return "certificate verification is turned off (allow_invalid_certs)"
	case opts.StartTLS == transport.TLSDisable && !opts.ImplicitTLS:
		return "STARTTLS is disabled (tls.starttls)"
	}
	if !opts.ImplicitTLS {
		opts.StartTLS = transport.TLSRequire
	}
	return ""
}
