package dane

import (
	"crypto/tls"
	"crypto/x509"
	"slices"

	"github.com/seed7b014b84/caddy-smtp/resolver"
)

// Verifier checks the certificates an SMTP server presents against the
// TLSA records of its TLSA base domain (RFC 7672, section 3). It is safe
// for concurrent use: it holds only what NewVerifier gave it.
//
// A server is authenticated when one usable record matches:
//
//   - DANE-EE(3): the server's own certificate (the first one it sent)
//     matches the record's selector and digest. Nothing else is checked:
//     not the names, not the validity dates, not the chain (RFC 7672,
//     section 3.1.1). The record pins the key; the rest is decoration.
//   - DANE-TA(2): a certificate in the chain the server sent matches the
//     record, so it becomes the trust anchor; the server's certificate
//     must chain up to that anchor through the other certificates sent,
//     with the usual X.509 checks, validity dates included (RFC 7672,
//     section 3.1.2); and it must be issued to one of the reference
//     identifiers (RFC 7672, section 3.2.2). The server must include the
//     trust anchor's certificate in its chain, even when it is a
//     self-signed root (RFC 7672, section 3.1.2): a bare public key that
//     signs the top of the chain is not looked for. A DANE-TA record
//     that matches the server's own certificate makes it its own anchor:
//     its dates and names are still checked.
type Verifier struct {
	records []resolver.TLSA
	names   []string
}

// NewVerifier returns a verifier for records, which must come from a
// secure (DNSSEC-validated) TLSA answer: checking that is the caller's
// job, since insecure records must not be used at all (RFC 7672, section
// 2.2). Only the usable records count (see Usable), and among them, for
// each usage and selector, only those of the strongest digest (RFC 7671,
// section 9). With no usable record, it returns ErrNoUsableRecords (in an
// *Error).
//
// names are the reference identifiers a certificate that is validated
// through a DANE-TA(2) record must carry one of (RFC 7672, section 3.2.2):
// the TLSA base domain, which is the MX host name after CNAME expansion
// when that expansion is secure, and the MX host name itself; by local
// policy, the next-hop domain may be added. They are compared without
// case and without a final dot, in their A-label form. With no names,
// only DANE-EE(3) records can authenticate a server.
func NewVerifier(records []resolver.TLSA, names ...string) (*Verifier, error) {
	v := &Verifier{records: strongest(Usable(records))}
	if len(v.records) == 0 {
		return nil, &Error{Reason: ErrNoUsableRecords}
	}
	for _, n := range names {
		n = normalizeName(n)
		if n != "" && !slices.Contains(v.names, n) {
			v.names = append(v.names, n)
		}
	}
	return v, nil
}

// Records returns the records the verifier uses.
func (v *Verifier) Records() []resolver.TLSA { return slices.Clone(v.records) }

// Names returns the reference identifiers, normalized.
func (v *Verifier) Names() []string { return slices.Clone(v.names) }

// Verify checks a chain of certificates as a server sent it, its own
// certificate first. It returns nil when a record authenticates the
// server, else an *Error. When no record authenticates it, and a DANE-TA
// record did match a certificate of the chain, the error says what went
// wrong with that anchor (ErrChain or ErrNameMismatch) rather than
// ErrNoMatch.
func (v *Verifier) Verify(chain []*x509.Certificate) error {
	if len(chain) == 0 || chain[0] == nil {
		return &Error{Reason: ErrNoCertificate}
	}
	leaf := chain[0]
	for _, r := range v.records {
		if r.Usage == UsageDANEEE && Matches(r, leaf) {
			return nil
		}
	}
	roots, intermediates := x509.NewCertPool(), x509.NewCertPool()
	anchored := false
	for _, cert := range chain {
		if cert == nil {
			continue
		}
		if v.anchors(cert) {
			roots.AddCert(cert)
			anchored = true
		} else if cert != leaf {
			intermediates.AddCert(cert)
		}
	}
	if !anchored {
		return &Error{Reason: ErrNoMatch}
	}
	_, err := leaf.Verify(x509.VerifyOptions{
		Roots:         roots,
		Intermediates: intermediates,
		// What a certificate may be used for is not DANE's concern: mail
		// servers' certificates often carry no extended key usage, or one
		// meant for the Web.
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	})
	if err != nil {
		return &Error{Reason: ErrChain, Err: err}
	}
	if !matchesAny(leaf, v.names) {
		return &Error{Reason: ErrNameMismatch, Names: v.Names()}
	}
	return nil
}

// anchors reports whether a DANE-TA record matches cert.
func (v *Verifier) anchors(cert *x509.Certificate) bool {
	for _, r := range v.records {
		if r.Usage == UsageDANETA && Matches(r, cert) {
			return true
		}
	}
	return false
}

// VerifyConnection verifies the certificates of a TLS connection's peer
// (see Verify). It is a tls.Config.VerifyConnection hook: crypto/tls calls
// it on every handshake, resumed ones included, after its own
// verification, which must be turned off with InsecureSkipVerify (the Web
// PKI has no say under DANE). The handshake then fails with the *Error,
// which errors.As finds through crypto/tls's and transport's errors.
func (v *Verifier) VerifyConnection(cs tls.ConnectionState) error {
	return v.Verify(cs.PeerCertificates)
}

// TLSConfig returns a copy of base (nil: an empty configuration) that
// authenticates the server with DANE: ServerName is serverName, which
// must be the TLSA base domain, so that it is the SNI the server sees
// (RFC 7672, section 8.1); InsecureSkipVerify is true, turning off the
// Web PKI check; VerifyConnection is the verifier's, replacing any in
// base.
//
// With transport.Dial, which sets ServerName and InsecureSkipVerify from
// its own options, give the same settings there:
//
//	transport.Options{
//		ServerName:        tlsaBaseDomain,
//		StartTLS:          transport.TLSRequire,
//		AllowInvalidCerts: true, // the Web PKI check only: DANE's still runs
//		TLSConfig:         v.TLSConfig(nil, tlsaBaseDomain),
//	}
//
// Without AllowInvalidCerts, crypto/tls first verifies the chain against
// the system's CAs and fails for a certificate that only DANE vouches for.
func (v *Verifier) TLSConfig(base *tls.Config, serverName string) *tls.Config {
	cfg := &tls.Config{}
	if base != nil {
		cfg = base.Clone()
	}
	cfg.ServerName = normalizeName(serverName)
	cfg.InsecureSkipVerify = true
	cfg.VerifyConnection = v.VerifyConnection
	return cfg
}
