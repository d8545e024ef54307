package dkim

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/libdns/libdns"
	"golang.org/x/net/idna"
)

// Algorithm is a DKIM signing algorithm, as the a= tag names it.
type Algorithm string

// The signing algorithms.
const (
	// RSASHA256 is rsa-sha256 (RFC 6376, section 3.3.1), with 2048-bit keys
	// when this package makes them.
	RSASHA256 Algorithm = "rsa-sha256"
	// Ed25519SHA256 is ed25519-sha256 (RFC 8463).
	Ed25519SHA256 Algorithm = "ed25519-sha256"
)

// keyType is the k= tag of the key record (RFC 6376, section 3.6.1; RFC
// 8463, section 4.2).
func (a Algorithm) keyType() string {
	if a == Ed25519SHA256 {
		return "ed25519"
	}
	return "rsa"
}

// Config is one signer: a key of a domain. The smtp app's "dkim" list
// holds these; a domain may have two, one RSA and one Ed25519, which then
// both sign (RFC 8463, section 5, advises both while verifiers without
// Ed25519 remain).
type Config struct {
	// Domain is the signing domain (the d= tag): messages whose From
	// header field has this domain are signed with this key by default,
	// so that the signature aligns with the From domain for DMARC.
	// Required.
	Domain string `json:"domain"`

	// Selector names the key under the domain (the s= tag): its record is
	// published at SELECTOR._domainkey.DOMAIN. It must be unique among the
	// domain's signers. A rotation makes keys under new selectors named
	// after this one, SELECTOR-YYYYMMDD. Default: "s1" for rsa-sha256,
	// "e1" for ed25519-sha256.
	Selector string `json:"selector,omitempty"`

	// Algorithm is "rsa-sha256" or "ed25519-sha256". Default: rsa-sha256,
	// or the algorithm of the key file when Key is set.
	Algorithm Algorithm `json:"algorithm,omitempty"`

	// Key is a PEM file holding the private key (PKCS #8 "PRIVATE KEY",
	// or PKCS #1 "RSA PRIVATE KEY" as opendkim-genkey writes). Without it
	// the key is made on first use (RSA 2048 or Ed25519) and kept in
	// Caddy's storage under smtp/dkim/DOMAIN/SELECTOR. A key from a file is
	// never rotated by Caddy.
	Key string `json:"key,omitempty"`

	// Headers are more header fields to sign, beyond the default list:
	// From (signed once more than the message has From fields, so that
	// none can be added), Reply-To, To, Cc, Subject, Date, Message-ID,
	// In-Reply-To, References, MIME-Version, Content-Type,
	// Content-Transfer-Encoding, List-Unsubscribe and
	// List-Unsubscribe-Post. Only the fields a message has are signed.
	Headers []string `json:"headers,omitempty"`

	// Publish makes Caddy set the key's TXT record itself, through a DNS
	// provider, and wait until it resolves before signing with the key.
	// Without it, the record must be published by hand (caddy smtp-dkim
	// prints it); the first key signs at once, a rotated key once its
	// record resolves.
	Publish *PublishConfig `json:"publish,omitempty"`
}

// PublishConfig publishes a signer's key records through a DNS provider,
// as Caddy's tls app publishes ECH configurations.
type PublishConfig struct {
	// DNSRaw is the DNS provider module (namespace dns.providers) that sets
	// the records. It must be able to read and set records; it removes a
	// retired key's record only if it can delete records.
	DNSRaw json.RawMessage `json:"dns,omitempty" caddy:"namespace=dns.providers inline_key=name"`

	// Zone is the DNS zone the records go into, such as "example.org".
	// Default: found by looking up the SOA of the record's name.
	Zone string `json:"zone,omitempty"`

	// TTL is the records' TTL, in whole seconds (a fraction is dropped);
	// at least 1s. In JSON write a duration string such as "1h": a bare
	// number is nanoseconds. Default: 1h.
	TTL caddy.Duration `json:"ttl,omitempty"`

	// Provider is the loaded DNS provider: set by Provision from DNSRaw,
	// or directly by Go code.
	Provider Provider `json:"-"`
}

// Provider sets DNS records: Caddy's dns.providers modules implement it.
// A provider that also implements libdns.RecordDeleter removes the
// records of retired keys.
type Provider interface {
	libdns.RecordGetter
	libdns.RecordSetter
}

// Provision loads the DNS provider module of c.Publish, if any.
func (c *Config) Provision(ctx caddy.Context) error {
	if c.Publish == nil || c.Publish.Provider != nil {
		return nil
	}
	if c.Publish.DNSRaw == nil {
		return fmt.Errorf("dkim %s: publish: dns: a DNS provider module is required", c.Domain)
	}
	mod, err := ctx.LoadModule(c.Publish, "DNSRaw")
	if err != nil {
		return fmt.Errorf("dkim %s: publish: loading DNS provider: %w", c.Domain, err)
	}
	p, ok := mod.(Provider)
	if !ok {
		return fmt.Errorf("dkim %s: publish: DNS provider %T cannot get and set records", c.Domain, mod)
	}
	c.Publish.Provider = p
	return nil
}

// signerConf is a Config checked and with its defaults.
type signerConf struct {
	domain    string // A-labels, lowercase, no final dot
	selector  string // the configured (base) selector
	algorithm Algorithm
	file      string
	headers   []string // lowercase names to sign, From first
	publish   *PublishConfig
	ttl       time.Duration
}

// defaultHeaders are the header fields signed when present (RFC 6376,
// section 5.4.1, and RFC 8058, section 4, for List-Unsubscribe-Post).
// From comes first and is oversigned.
var defaultHeaders = []string{
	"from", "reply-to", "to", "cc", "subject", "date", "message-id",
	"in-reply-to", "references", "mime-version", "content-type",
	"content-transfer-encoding", "list-unsubscribe", "list-unsubscribe-post",
}

// check validates c and applies the defaults. i is c's index in the list,
// for errors.
func (c Config) check(i int) (*signerConf, error) {
	where := fmt.Sprintf("dkim[%d]", i)
	if strings.TrimSpace(c.Domain) == "" {
		return nil, fmt.Errorf("%s: domain: required", where)
	}
	domain, err := normalizeDomain(c.Domain)
	if err != nil {
		return nil, fmt.Errorf("%s: domain %q: %w", where, c.Domain, err)
	}
	sc := &signerConf{domain: domain, file: c.Key, algorithm: c.Algorithm}
	switch c.Algorithm {
	case "":
		sc.algorithm = RSASHA256
		if c.Key != "" {
			sc.algorithm = "" // the file's
		}
	case RSASHA256, Ed25519SHA256:
	default:
		return nil, fmt.Errorf("%s: algorithm %q: want rsa-sha256 or ed25519-sha256", where, c.Algorithm)
	}
	sc.selector = strings.ToLower(strings.TrimSpace(c.Selector))
	if sc.selector == "" {
		sc.selector = "s1"
		if c.Algorithm == Ed25519SHA256 {
			sc.selector = "e1"
		}
	}
	if err := checkSelector(sc.selector); err != nil {
		return nil, fmt.Errorf("%s: selector %q: %w", where, c.Selector, err)
	}
	if last := sc.selector[strings.LastIndexByte(sc.selector, '.')+1:]; len(last)+len("-20060102-99") > 63 {
		return nil, fmt.Errorf("%s: selector %q: too long to rotate (its last label at most %d characters)", where, c.Selector, 63-len("-20060102-99"))
	}
	sc.headers = append(sc.headers, defaultHeaders...)
	for j, h := range c.Headers {
		name := strings.ToLower(strings.TrimSpace(h))
		if !validFieldName(name) {
			return nil, fmt.Errorf("%s: headers[%d] %q: not a header field name", where, j, h)
		}
		if !contains(sc.headers, name) {
			sc.headers = append(sc.headers, name)
		}
	}
	if c.Publish != nil {
		if c.Publish.Provider == nil {
			return nil, fmt.Errorf("%s: publish: no DNS provider (was the config provisioned?)", where)
		}
		if c.Key != "" {
			return nil, fmt.Errorf("%s: publish: a key from a file is published by hand", where)
		}
		sc.publish = c.Publish
		sc.ttl = time.Duration(c.Publish.TTL)
		switch {
		case sc.ttl <= 0:
			sc.ttl = time.Hour
		case sc.ttl < time.Second:
			// A DNS TTL counts seconds: this would be a TTL of 0, an
			// answer resolvers do not cache (so it never replaces an
			// NXDOMAIN they cached before the record was set). Most
			// likely a bare JSON number, which is nanoseconds.
			return nil, fmt.Errorf("%s: publish: ttl: %s is less than a second (a DNS TTL counts whole seconds; in JSON write a duration such as \"1h\": a bare number is nanoseconds)", where, sc.ttl)
		}
	}
	return sc, nil
}

// normalizeDomain returns a domain in lowercase A-labels without the
// final dot.
func normalizeDomain(d string) (string, error) {
	d = strings.TrimSuffix(strings.TrimSpace(d), ".")
	a, err := idna.Lookup.ToASCII(d)
	if err != nil {
		return "", fmt.Errorf("not a domain name: %w", err)
	}
	a = strings.ToLower(a)
	if a == "" || len(a) > 253 {
		return "", fmt.Errorf("not a domain name")
	}
	for _, l := range strings.Split(a, ".") {
		if !validLabel(l) {
			return "", fmt.Errorf("not a domain name: label %q", l)
		}
	}
	return a, nil
}

// checkSelector checks a selector: dot-separated labels of letters,
// digits and hyphens (RFC 6376, section 3.1), so that it is also a safe
// storage key.
func checkSelector(s string) error {
	if s == "" {
		return fmt.Errorf("empty")
	}
	for _, l := range strings.Split(s, ".") {
		if !validLabel(l) {
			return fmt.Errorf("label %q: want letters, digits and hyphens", l)
		}
	}
	return nil
}

func validLabel(l string) bool {
	if l == "" || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
		return false
	}
	for i := 0; i < len(l); i++ {
		c := l[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

// validFieldName reports whether s is a header field name (RFC 5322,
// section 3.6.8: printable ASCII but the colon).
func validFieldName(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] <= ' ' || s[i] >= 0x7f || s[i] == ':' {
			return false
		}
	}
	return true
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// Interface guards.
var (
	_ caddy.Provisioner = (*Config)(nil)
	_ TXTResolver       = TXTResolverFunc(nil)
)
