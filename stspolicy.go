package caddysmtp

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/seed7b014b84/caddy-smtp/dane"
	"github.com/seed7b014b84/caddy-smtp/mtasts"
	"github.com/seed7b014b84/caddy-smtp/rules"
	"github.com/seed7b014b84/caddy-smtp/strategy"
	"github.com/seed7b014b84/caddy-smtp/tlsrpt"
	"github.com/seed7b014b84/caddy-smtp/transport"
)

// PolicyMTASTS: the domain's MTA-STS policy is in enforce mode and names
// the host: TLS required, the certificate verified for the host's name.
const PolicyMTASTS = "mta-sts"

// stsState is the app's MTA-STS cache, made on first use (so that tests
// can point it at their CA and port first).
type stsState struct {
	once  sync.Once
	cache *mtasts.Cache
	port  int // the policy hosts' port: 443, or a test's
}

// stsCache returns the MTA-STS cache, kept in Caddy's storage so that
// policies survive restarts and are shared by instances on one storage.
func (a *App) stsCache() *mtasts.Cache {
	a.sts.once.Do(func() {
		timeout, _ := a.Timeouts.MTASTS.Eval(&rules.Vars{})
		f := &mtasts.Fetcher{DNS: a.dns, RootCAs: a.rootCAs, Timeout: time.Duration(timeout), Port: a.sts.port}
		var storage mtasts.Storage
		if s := a.ctx.Storage(); s != nil {
			storage = s
		}
		a.sts.cache = mtasts.NewCache(f, storage, a.logger.Named("mta_sts"))
	})
	return a.sts.cache
}

// refreshSTS refreshes the cached policies that are due, every hour, until
// the config is unloaded.
func (a *App) refreshSTS() {
	tick := time.NewTicker(time.Hour)
	defer tick.Stop()
	for {
		select {
		case <-a.ctx.Done():
			return
		case <-tick.C:
			if err := a.stsCache().Refresh(a.ctx); err != nil {
				a.logger.Warn("refreshing MTA-STS policies", zap.Error(err))
			}
		}
	}
}

// stsPolicy returns the MTA-STS policy to apply to a domain, or nil, and
// applies an enforce policy's MX list to the plan: hosts it does not name
// are not used (testing: they are, and it is logged). An error defers the
// route: MTA-STS required where the domain has none.
func (a *App) stsPolicy(ctx context.Context, plan *strategy.Plan, vars *rules.Vars) (*mtasts.Policy, error) {
	mode, err := a.TLS.MTASTS.Eval(vars)
	if err != nil {
		return nil, err
	}
	if mode == transport.TLSDisable {
		return nil, nil
	}
	p, _, err := a.stsCache().Get(ctx, plan.Domain)
	if err != nil && !errors.Is(err, mtasts.ErrNoRecord) {
		a.reports.Failure(plan.Domain, tlsrpt.PolicySTS, stsFailure(err))
	}
	if p != nil && p.Mode == mtasts.ModeNone {
		p = nil
	}
	if p == nil {
		if mode == transport.TLSRequire {
			return nil, fmt.Errorf("tls.mta_sts is require, and %s has no MTA-STS policy", plan.Domain)
		}
		return nil, nil
	}
	for i := range plan.Hosts {
		h := &plan.Hosts[i]
		if h.Err != nil || p.Matches(h.Name) {
			continue
		}
		if p.Mode == mtasts.ModeTesting {
			a.logger.Warn("MTA-STS testing: MX host not in the policy", zap.String("domain", plan.Domain), zap.String("host", h.Name))
			a.reports.Failure(plan.Domain, tlsrpt.PolicySTS, tlsrpt.ValidationFailure)
			continue
		}
		h.Err = fmt.Errorf("host %s: not an MX host of %s's MTA-STS policy (%s)", h.Name, plan.Domain, strings.Join(p.MX, ", "))
		h.Error = h.Err.Error()
		a.reports.Failure(plan.Domain, tlsrpt.PolicySTS, tlsrpt.ValidationFailure)
	}
	return p, nil
}

func stsFailure(err error) string {
	switch {
	case errors.Is(err, mtasts.ErrRecordSyntax), errors.Is(err, mtasts.ErrMultipleRecords):
		return tlsrpt.STSPolicyInvalid
	}
	var ue x509.UnknownAuthorityError
	var he x509.HostnameError
	if errors.As(err, &ue) || errors.As(err, &he) {
		return tlsrpt.STSWebPKIInvalid
	}
	if strings.Contains(err.Error(), "policy") && strings.Contains(err.Error(), "line") {
		return tlsrpt.STSPolicyInvalid
	}
	return tlsrpt.STSPolicyFetchError
}

// applySTS makes a session with host h follow an enforce policy that names
// it: TLS required, the certificate verified for the host's name. Under a
// testing policy the certificate is checked the same way, but a failure is
// only counted and logged (onFail): the message goes all the same, as RFC
// 8461 (section 5) has it.
func applySTS(p *mtasts.Policy, h *strategy.Host, opts *transport.Options, policy string, onFail func(error)) string {
	if p == nil || policy == PolicyDANE || !p.Matches(h.Name) {
		return policy
	}
	switch p.Mode {
	case mtasts.ModeEnforce:
		opts.StartTLS = transport.TLSRequire
		opts.AllowInvalidCerts = false
		opts.ServerName = h.Name
		return PolicyMTASTS
	case mtasts.ModeTesting:
		if opts.StartTLS == transport.TLSDisable || opts.AllowInvalidCerts || onFail == nil {
			return policy
		}
		cfg := &tls.Config{}
		if opts.TLSConfig != nil {
			cfg = opts.TLSConfig.Clone()
		}
		roots, name := cfg.RootCAs, h.Name
		cfg.VerifyConnection = func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return nil
			}
			inter := x509.NewCertPool()
			for _, c := range cs.PeerCertificates[1:] {
				inter.AddCert(c)
			}
			if _, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, DNSName: name}); err != nil {
				onFail(err)
			}
			return nil
		}
		opts.TLSConfig = cfg
		opts.AllowInvalidCerts = true // checked above, without failing
	}
	return policy
}

// reportSession counts a session under its policy for TLS reporting: err
// is why it could not be made (nil: it was).
func (a *App) reportSession(domain, policy string, err error) {
	kind := tlsrpt.PolicyNoPolicy
	switch policy {
	case PolicyDANE:
		kind = tlsrpt.PolicyTLSA
	case PolicyMTASTS:
		kind = tlsrpt.PolicySTS
	}
	if err == nil {
		a.reports.Success(domain, kind)
		return
	}
	var te *transport.Error
	if !errors.As(err, &te) || te.Phase != transport.PhaseTLS {
		return // not a TLS failure
	}
	a.reports.Failure(domain, kind, tlsFailure(err))
}

// tlsFailure is the RFC 8460 result type of a failed TLS phase.
func tlsFailure(err error) string {
	var (
		he x509.HostnameError
		ce x509.CertificateInvalidError
		ue x509.UnknownAuthorityError
		de *dane.Error
	)
	switch {
	case errors.As(err, &de):
		return tlsrpt.ValidationFailure
	case errors.As(err, &he):
		return tlsrpt.CertificateHostMismatch
	case errors.As(err, &ce) && ce.Reason == x509.Expired:
		return tlsrpt.CertificateExpired
	case errors.As(err, &ue):
		return tlsrpt.CertificateNotTrusted
	case strings.Contains(err.Error(), "does not offer it"):
		return tlsrpt.StartTLSNotSupported
	}
	return tlsrpt.ValidationFailure
}

// reportsPool keeps the TLS reporting record across config reloads.
var reportsPool = caddy.NewUsagePool()

// TLSReports returns what TLS reporting has counted so far, per policy
// domain and policy type.
func (a *App) TLSReports() []tlsrpt.Summary { return a.reports.Summaries() }
