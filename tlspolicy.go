package caddysmtp

import (
	"context"
	"errors"
	"fmt"

	"github.com/seed7b014b84/caddy-smtp/dane"
	"github.com/seed7b014b84/caddy-smtp/resolver"
	"github.com/seed7b014b84/caddy-smtp/rules"
	"github.com/seed7b014b84/caddy-smtp/strategy"
	"github.com/seed7b014b84/caddy-smtp/transport"
)

// The TLS policies a session can be under, as the report names them.
const (
	// PolicyNone: no TLS (tls.starttls disable).
	PolicyNone = "none"
	// PolicyOpportunistic: STARTTLS when offered (tls.starttls optional).
	PolicyOpportunistic = "opportunistic"
	// PolicyRequired: TLS required by the config (tls.starttls require, or
	// a remote's implicit TLS).
	PolicyRequired = "required"
	// PolicyDANE: TLS required and the certificate checked against the
	// host's DNSSEC-signed TLSA records (RFC 7672).
	PolicyDANE = "dane"
)

// basePolicy names the policy the plain settings give.
func basePolicy(o transport.Options) string {
	switch {
	case o.ImplicitTLS || o.StartTLS == transport.TLSRequire:
		return PolicyRequired
	case o.StartTLS == transport.TLSDisable:
		return PolicyNone
	}
	return PolicyOpportunistic
}

// applyDANE looks up the TLSA records of an MX host, when tls.dane allows
// it and the MX and address answers are DNSSEC-secure, and makes the
// session's TLS follow them. It returns the policy that applies. An error
// leaves the host unusable for this attempt (a temporary failure): a TLSA
// lookup that failed, or was bogus, or DANE required where there is none.
func (a *App) applyDANE(ctx context.Context, plan *strategy.Plan, h *strategy.Host, vars *rules.Vars, opts *transport.Options) (string, error) {
	mode, err := a.TLS.DANE.Eval(vars)
	if err != nil {
		return "", err
	}
	policy := basePolicy(*opts)
	if mode == transport.TLSDisable {
		return policy, nil
	}
	none := func(why string) (string, error) {
		if mode == transport.TLSRequire {
			return "", fmt.Errorf("host %s: tls.dane is require, and %s", h.Name, why)
		}
		return policy, nil
	}
	if plan.MXSecurity != resolver.Secure || h.AddrSecurity != resolver.Secure {
		return none("its MX or address records are not DNSSEC-secure")
	}
	base := h.AddrName
	if base == "" {
		base = h.Name
	}
	port := uint16(25)
	if len(h.Candidates) > 0 {
		port = h.Candidates[0].Addr.Port()
	}
	res, err := a.dns.LookupTLSA(ctx, port, base)
	switch {
	case errors.Is(err, resolver.ErrNXDomain), errors.Is(err, resolver.ErrNoData):
		return none("it publishes no TLSA records")
	case err != nil:
		// Bogus, or the lookup failed: the host is not to be used now, in
		// plain text or otherwise (RFC 7672, section 2.2).
		return "", fmt.Errorf("host %s: DANE: %w", h.Name, err)
	case res.Security != resolver.Secure:
		return none("its TLSA records are not DNSSEC-secure")
	}
	v, err := dane.NewVerifier(res.Records, base, h.Name)
	if errors.Is(err, dane.ErrNoUsableRecords) {
		// No record usable for SMTP: the other policies apply.
		return none("none of its TLSA records is usable for SMTP")
	}
	if err != nil {
		return "", fmt.Errorf("host %s: DANE: %w", h.Name, err)
	}
	opts.StartTLS = transport.TLSRequire
	opts.ServerName = base
	// The certificate is checked by the DANE verifier, not against the
	// system's roots.
	opts.AllowInvalidCerts = true
	opts.TLSConfig = v.TLSConfig(opts.TLSConfig, base)
	return PolicyDANE, nil
}
