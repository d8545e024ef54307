// Package resolver is the smtp app's DNS resolver, built on
// github.com/miekg/dns: MX, A, AAAA, TXT and TLSA lookups with mail
// semantics (implicit MX, null MX, permanent and temporary failures), the
// DNSSEC status of every answer, and a cache shared across config reloads.
//
// The system resolver (net.Resolver) can do none of what mail delivery
// needs here: it cannot say whether an answer was DNSSEC-validated (DANE
// depends on that), cannot be pointed at a chosen server per app, and keeps
// no cache.
package resolver
