package caddysmtp

import (
	"context"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"go.uber.org/zap"

	"github.com/seed7b014b84/caddy-smtp/dkim"
	"github.com/seed7b014b84/caddy-smtp/queue"
	"github.com/seed7b014b84/caddy-smtp/rules"
)

// signFrom is the value of dkim_sign that stands for the domain of the
// message's From header field.
const signFrom = "from"

// provisionDKIM sets up the DKIM signers: their DNS providers, their keys
// in Caddy's storage, and the dkim_sign rule list.
func (a *App) provisionDKIM() error {
	defaultSetting(&a.DKIMSign, []string{signFrom})
	if err := a.DKIMSign.Compile("dkim_sign", a.env); err != nil {
		return err
	}
	for i := range a.DKIM {
		if err := a.DKIM[i].Provision(a.ctx); err != nil {
			return fmt.Errorf("dkim[%d]: %w", i, err)
		}
	}
	a.dkimDomains = map[string]bool{}
	for _, c := range a.DKIM {
		a.dkimDomains[strings.TrimSuffix(strings.ToLower(c.Domain), ".")] = true
	}
	if err := a.DKIMSign.Each("dkim_sign", func(path string, v *[]string) error {
		for i, d := range *v {
			switch {
			case d == signFrom:
			case !hostnamePattern.MatchString(d):
				return fmt.Errorf("%s[%d]: %q is neither a domain nor %q", path, i, d, signFrom)
			case !a.dkimDomains[strings.TrimSuffix(strings.ToLower(d), ".")]:
				return fmt.Errorf("%s[%d]: no dkim signer for domain %s (add one to dkim)", path, i, d)
			}
		}
		return nil
	}); err != nil {
		return err
	}
	if len(a.DKIM) == 0 {
		return nil
	}
	logger := a.logger.Named("dkim")
	signer, err := dkim.NewSigner(a.DKIM, dkim.NewKeys(a.ctx.Storage(), logger), dkim.Options{
		Choose: a.chooseDKIM,
		Resolver: dkim.TXTResolverFunc(func(ctx context.Context, name string) ([]string, error) {
			r, err := a.dns.LookupTXT(ctx, name)
			if err != nil {
				return nil, err
			}
			return r.Records, nil
		}),
		Nameservers: a.dns.Servers(),
		Logger:      logger,
	})
	if err != nil {
		return err
	}
	a.dkim = signer
	return nil
}

// chooseDKIM is dkim_sign: the domains a message is signed as. "from" is
// the From header's domain when a signer exists for it (so that the
// signature aligns for DMARC), and nothing otherwise: a relay for many
// domains signs those it has keys for and passes the rest on unsigned.
func (a *App) chooseDKIM(fromDomain, mailFrom string) []string {
	v := rules.Vars{Sender: mailFrom, SenderDomain: domainOf(mailFrom)}
	list, err := a.DKIMSign.Eval(&v)
	if err != nil {
		a.logger.Error("dkim_sign", zap.Error(err))
		list = []string{signFrom}
	}
	out := make([]string, 0, len(list))
	for _, d := range list {
		if d == signFrom {
			d = fromDomain
			if !a.dkimDomains[strings.TrimSuffix(strings.ToLower(d), ".")] {
				continue
			}
		}
		if d != "" && !slices.Contains(out, d) {
			out = append(out, strings.ToLower(d))
		}
	}
	return out
}

// startDKIM starts the signers' background work (making, publishing and
// rotating keys).
func (a *App) startDKIM() error {
	if a.dkim == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(a.ctx, time.Minute)
	defer cancel()
	return a.dkim.Start(ctx)
}

// dkimSigner is the app's signer as the queue's.
type dkimSigner struct {
	s   *dkim.Signer
	log *zap.Logger
}

// Sign signs a message as it enters the queue.
func (d dkimSigner) Sign(m *queue.Message, body io.Reader) (io.Reader, func() []byte) {
	g := d.s.Sign(dkim.Envelope{MailFrom: m.From}, body)
	return g, func() []byte {
		if err := g.Err(); err != nil {
			d.log.Warn("message not signed", zap.String("id", m.ID), zap.Error(err))
		}
		return g.Header()
	}
}

// parseDKIM reads a signer:
//
//	dkim <domain> {
//		selector <name>
//		algorithm rsa-sha256|ed25519-sha256
//		key <pem file>
//		headers <field>...
//		publish <dns provider> [...] {
//			...                  # the provider's own options
//		}
//		publish_zone <zone>
//		publish_ttl <duration>
//	}
func parseDKIM(d *caddyfile.Dispenser) (dkim.Config, error) {
	var c dkim.Config
	if !d.AllArgs(&c.Domain) {
		if !d.NextArg() {
			return c, d.Err("dkim needs a domain: dkim <domain> { ... }")
		}
		return c, d.ArgErr()
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		var err error
		switch key := d.Val(); key {
		case "selector":
			c.Selector, err = oneArg(d)
		case "algorithm":
			var s string
			s, err = oneArg(d)
			c.Algorithm = dkim.Algorithm(s)
		case "key":
			c.Key, err = oneArg(d)
		case "headers":
			c.Headers = d.RemainingArgs()
			if len(c.Headers) == 0 {
				return c, d.ArgErr()
			}
		case "publish":
			if !d.NextArg() {
				return c, d.ArgErr()
			}
			name := d.Val()
			um, uerr := caddyfile.UnmarshalModule(d, "dns.providers."+name)
			if uerr != nil {
				return c, uerr
			}
			if c.Publish == nil {
				c.Publish = new(dkim.PublishConfig)
			}
			c.Publish.DNSRaw = caddyconfig.JSONModuleObject(um, "name", name, nil)
		case "publish_zone", "publish_ttl":
			if c.Publish == nil {
				c.Publish = new(dkim.PublishConfig)
			}
			if key == "publish_zone" {
				c.Publish.Zone, err = oneArg(d)
			} else {
				c.Publish.TTL, err = parseDuration(d, d.RemainingArgs())
			}
		default:
			return c, d.Errf("unknown dkim option %q (known: selector, algorithm, key, headers, publish, publish_zone, publish_ttl)", key)
		}
		if err != nil {
			return c, err
		}
	}
	return c, nil
}

// Interface guards
var _ queue.Signer = dkimSigner{}
