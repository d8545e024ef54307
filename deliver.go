package caddysmtp

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

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
	if cur := running.Load(); cur != nil && cur != a && a.stopped != nil && a.stopped.Load() {
		// A caller still holding the app of a replaced config (a session
		// that began before a reload): the running config delivers.
		return cur.Deliver(ctx, msg)
	}
	if err := checkMessage(msg); err != nil {
		return nil, err
	}
	report := &Report{Recipients: make([]RecipientReport, len(msg.To))}
	base := msg.Vars
	base.Sender, base.SenderDomain, base.Size = msg.From, domainOf(msg.From), msg.Size

	routes := map[route][]int{}
	var order []route
	for i, r := range msg.To {
		report.Recipients[i] = RecipientReport{Rcpt: r.Addr, Status: transport.Deferred}
		v := base
		v.Rcpt, v.RcptDomain = r.Addr, domainOf(r.Addr)
		hop, err := a.NextHop.Eval(&v)
		if err != nil {
			report.Recipients[i].Error = err.Error()
			continue
		}
		key := route{remote: string(hop)}
		if hop == MX {
			key.domain = v.RcptDomain
		}
		if _, seen := routes[key]; !seen {
			order = append(order, key)
		}
		routes[key] = append(routes[key], i)
	}
	var wg sync.WaitGroup
	for _, key := range order {
		wg.Go(func() { a.deliverRoute(ctx, msg, base, key, routes[key], report) })
	}
	wg.Wait()
	for _, rr := range report.Recipients {
		a.logOutcome(msg, rr)
		a.emit(msg, rr)
	}
	return report, nil
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

// deliverRoute delivers to the recipients idx of one route.
func (a *App) deliverRoute(ctx context.Context, msg *Message, base rules.Vars, key route, idx []int, report *Report) {
	start := time.Now()
	vars := base
	vars.Rcpt = msg.To[idx[0]].Addr
	vars.RcptDomain = domainOf(vars.Rcpt)
	// finish gives every recipient of the route the same outcome: a
	// status and why, and the reply when one decided it.
	finish := func(status transport.Status, err error, rep *transport.Reply) {
		for _, i := range idx {
			rr := &report.Recipients[i]
			rr.Route, rr.Status, rr.Duration, rr.Reply = key.String(), status, time.Since(start), rep
			if err != nil {
				rr.Error = err.Error()
			}
		}
	}
	// refuse fails the route with a made-up reply (REQUIRETLS).
	refuse := func(rep *transport.Reply) { finish(transport.Failed, errors.New(rep.Text()), rep) }

	dest := strategy.Destination{Domain: key.domain}
	var remote *Remote
	if key.remote != "" {
		remote = a.Remotes[key.remote]
		dest.Remote = &strategy.Remote{Name: key.remote, Address: remote.Address, Port: uint16(remote.Port)}
	}
	plan, err := a.Planner().Plan(ctx, dest, vars)
	if err != nil {
		status := transport.Deferred
		if resolver.IsPermanent(err) {
			status = transport.Failed
		}
		finish(status, err, nil)
		return
	}
	var sts *mtasts.Policy
	if remote == nil {
		if sts, err = a.stsPolicy(ctx, plan, &vars); err != nil {
			finish(transport.Deferred, err, nil)
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
	for hi := 0; hi < len(plan.Hosts); hi++ {
		h := &plan.Hosts[hi]
		if h.Err != nil {
			lastErr = h.Err
			continue
		}
		hv := vars
		hv.MX = h.Name
		opts, err := a.sessionOptions(h, remote, &hv)
		if err != nil {
			lastErr = err
			continue
		}
		policy := basePolicy(opts)
		if remote == nil {
			if policy, err = a.applyDANE(ctx, plan, h, &hv, &opts); err != nil {
				lastErr = err
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
				lastErr = err
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
			a.pool.Release(poolKeyOf(c, opts, policy), c)
			if derr != nil && reused && noReply(results) && attempt == 0 {
				// A kept connection that the server had given up on:
				// once more on a new one.
				continue
			}
			for j, i := range idx {
				rr := &report.Recipients[i]
				rr.Route, rr.Duration = key.String(), time.Since(start)
				rr.Host, rr.Address, rr.Source, rr.TLSVersion, rr.TLSCipher = info.host, info.addr, info.source, info.tlsVersion, info.tlsCipher
				rr.TLSPolicy = policy
				res := results[j]
				rr.Status = res.Status
				if res.Reply.Code != 0 {
					rep := res.Reply
					rr.Reply = &rep
				}
				if res.Err != nil {
					rr.Error = res.Err.Error()
				}
			}
			return
		}
	}
	if lastErr == nil {
		lastErr = errors.New("no host to deliver to")
	}
	finish(transport.Deferred, lastErr, nil)
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
	return &transport.Reply{Code: 550, Enhanced: "5.7.30", Lines: []string{"REQUIRETLS: " + why}}
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
