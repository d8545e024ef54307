// Package mtasts is the sending side of SMTP MTA Strict Transport Security
// (MTA-STS, RFC 8461): it discovers a recipient domain's policy (the
// _mta-sts TXT record, then the policy file over HTTPS), parses it, tells
// which MX hosts it allows, and keeps policies for their max_age in
// Caddy's storage, so that they survive restarts and are shared by the
// instances of a cluster.
//
// It is a package of its own because none of it is SMTP: it is DNS, HTTPS
// and a cache, with rules of its own (no redirects, a bounded body, a
// PKIX-verified policy host, stale use of a cached policy when discovery
// fails). Delivery asks a Cache for the policy of a domain and applies it;
// this package never delivers mail.
package mtasts
