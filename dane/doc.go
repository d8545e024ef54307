// Package dane authenticates SMTP servers with DANE: TLSA records, published
// under DNSSEC, that say which certificate or which trust anchor a mail
// exchanger's TLS handshake must present (RFC 7672, with the matching rules
// of RFC 6698 and RFC 7671).
//
// It is the verification side only. Looking the records up is the
// resolver's job (resolver.Resolver.LookupTLSA, whose answer is usable for
// DANE only when its Security is resolver.Secure), and deciding what a
// delivery does with the outcome is the delivery engine's. What is here is
// pure: which records are usable (Usable), and whether the certificates a
// server presented satisfy them (Verifier), as a tls.Config hook
// (Verifier.VerifyConnection, Verifier.TLSConfig) that plugs into
// transport.Options.TLSConfig.
//
// It is a package of its own because DANE replaces, rather than adds to,
// the usual Web PKI check: it has its own notion of which names count
// (reference identifiers from DNS, not the name dialled), when expiry
// counts (never for DANE-EE), and what a failure means (the message is
// deferred; RFC 7672 forbids falling back to plaintext or to unauthenticated
// TLS). Keeping those rules together, with no dependency on the session
// code, lets them be tested against certificates and records alone.
package dane
