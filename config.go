package caddysmtp

import (
	"bytes"
	"encoding/json"
	"fmt"

	"github.com/caddyserver/caddy/v2"

	"github.com/seed7b014b84/caddy-smtp/rules"
	"github.com/seed7b014b84/caddy-smtp/strategy"
	"github.com/seed7b014b84/caddy-smtp/transport"
)

// NextHop is where a message goes next: the name of one of the app's
// remotes, or "" for delivery to the recipient domain's MX hosts. Its JSON
// form is the remote's name as a string, or false for MX.
type NextHop string

// MX is the next hop that delivers by the recipient domain's MX records.
const MX NextHop = ""

// UnmarshalJSON reads a remote's name or false.
func (n *NextHop) UnmarshalJSON(b []byte) error {
	b = bytes.TrimSpace(b)
	if bytes.Equal(b, []byte("false")) {
		*n = MX
		return nil
	}
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("want a remote's name or false, not %s", b)
	}
	if s == "" {
		return fmt.Errorf("empty remote name (use false for delivery by MX)")
	}
	*n = NextHop(s)
	return nil
}

// MarshalJSON writes false for MX, the remote's name otherwise.
func (n NextHop) MarshalJSON() ([]byte, error) {
	if n == MX {
		return []byte("false"), nil
	}
	return json.Marshal(string(n))
}

// Remote is a named server that next_hop can send mail to: a relay
// (smarthost) over SMTP, or a message store over LMTP.
type Remote struct {
	// Address is the remote's host name or IP address. A name is resolved
	// under the app's ip_strategy. Required.
	Address string `json:"address,omitempty"`

	// Port is the TCP port. Default: 25 for SMTP, 465 for SMTP with
	// implicit TLS, 24 for LMTP.
	Port int `json:"port,omitempty"`

	// Protocol is "smtp" or "lmtp". Default: "smtp".
	Protocol transport.Protocol `json:"protocol,omitempty"`

	// Concurrency is the most connections open to this remote at once.
	// Default: 10.
	Concurrency int `json:"concurrency,omitempty"`

	// Timeout caps each phase of a session with this remote (connect,
	// greeting, TLS, each command and the data transfer): the smaller of it
	// and the matching `timeouts` value applies. Default: unset, so the
	// app's `timeouts` apply as they are.
	Timeout caddy.Duration `json:"timeout,omitempty"`

	// TLS sets how TLS is used with this remote.
	TLS *RemoteTLS `json:"tls,omitempty"`

	// Auth is the account to authenticate as (SMTP AUTH), for relays that
	// require it. Default: no authentication.
	Auth *RemoteAuth `json:"auth,omitempty"`
}

// RemoteTLS is a remote's TLS settings.
type RemoteTLS struct {
	// Implicit makes the connection TLS from its first byte (SMTPS, RFC
	// 8314) instead of STARTTLS after the greeting. Default: false (STARTTLS
	// as the app's tls.starttls says).
	Implicit bool `json:"implicit,omitempty"`

	// AllowInvalidCerts accepts a certificate that does not verify (self
	// signed, expired, wrong name). Default: false. Use it only for a remote
	// on a network you trust, such as a local message store.
	AllowInvalidCerts bool `json:"allow_invalid_certs,omitempty"`
}

// RemoteAuth is the account a remote is logged into with (AUTH PLAIN or
// LOGIN). Both fields accept Caddy placeholders, so the secret can come from
// the environment ({env.SMTP_PASSWORD}) or a file ({file./run/secrets/smtp}).
type RemoteAuth struct {
	// Username is the account name. Required with auth.
	Username string `json:"username,omitempty"`

	// Secret is the password. Required with auth.
	Secret string `json:"secret,omitempty"`

	// AllowPlaintext allows sending the credentials over a connection
	// without TLS. Default: false: without TLS the session fails before
	// AUTH. Set it only for a relay on a network you control.
	AllowPlaintext bool `json:"allow_plaintext,omitempty"`
}

// Pool bounds how connections are kept for the next messages.
type Pool struct {
	// MaxMessages is the most messages one connection carries before it is
	// closed. Default: 100.
	MaxMessages int `json:"max_messages,omitempty"`

	// IdleTimeout is how long an unused connection is kept open. Default:
	// 10s: long enough for a burst of messages, short enough not to hold a
	// receiver's connection slot for nothing.
	IdleTimeout caddy.Duration `json:"idle_timeout,omitempty"`
}

// SourceIP lists the local addresses deliveries are sent from.
type SourceIP struct {
	// V4 lists the IPv4 source addresses; each new IPv4 connection uses one
	// of them at random. Default: none (the kernel chooses).
	V4 rules.Setting[[]strategy.Source] `json:"v4,omitzero"`

	// V6 lists the IPv6 source addresses; each new IPv6 connection uses one
	// of them at random. Default: none (the kernel chooses).
	V6 rules.Setting[[]strategy.Source] `json:"v6,omitzero"`
}

// Limits bound how much of a destination one delivery attempt tries.
type Limits struct {
	// MX is the most MX hosts tried in one delivery attempt. Default: 7, as
	// Stalwart: enough for any real domain's primary and backups, while a
	// domain that publishes dozens of dead MX hosts cannot hold an attempt
	// for dozens of connect timeouts.
	MX rules.Setting[int] `json:"mx,omitzero"`

	// Multihomed is the most addresses tried for one host in one attempt.
	// Default: 2, as Stalwart and near Postfix's smtp_mx_address_limit
	// spread: one more address after the first covers a dead interface
	// without hammering every address of a host that refuses.
	Multihomed rules.Setting[int] `json:"multihomed,omitzero"`
}

// Timeouts bound each phase of an SMTP session. Each is a duration such as
// "30s" or "5m"; the defaults for the SMTP commands are RFC 5321's (section
// 4.5.3.2).
type Timeouts struct {
	// Connect is the time allowed for the TCP handshake with one address.
	// Default: 30s, Postfix's smtp_connect_timeout: a host that has not
	// answered a SYN and its retransmissions in 30 seconds is not there, and
	// the next address or host is a better use of the attempt.
	Connect rules.Setting[caddy.Duration] `json:"connect,omitzero"`

	// Greeting is the time allowed for the server's 220 greeting. Default:
	// 5m (RFC 5321's initial 220 message timeout).
	Greeting rules.Setting[caddy.Duration] `json:"greeting,omitzero"`

	// TLS is the time allowed for a TLS handshake (STARTTLS or implicit).
	// Default: 1m: a handshake is two round trips and a certificate check,
	// and a minute covers a slow link many times over.
	TLS rules.Setting[caddy.Duration] `json:"tls,omitzero"`

	// EHLO is the time allowed for the reply to EHLO (or LHLO, or HELO).
	// Default: 5m, as RFC 5321 allows for the other commands; some
	// receivers do their slow checks (DNS, reputation) here.
	EHLO rules.Setting[caddy.Duration] `json:"ehlo,omitzero"`

	// MailFrom is the time allowed for the reply to MAIL FROM. Default: 5m
	// (RFC 5321).
	MailFrom rules.Setting[caddy.Duration] `json:"mail_from,omitzero"`

	// RcptTo is the time allowed for the reply to each RCPT TO. Default: 5m
	// (RFC 5321).
	RcptTo rules.Setting[caddy.Duration] `json:"rcpt_to,omitzero"`

	// Data is the time allowed for the whole message transfer and the final
	// reply to it. Default: 10m (RFC 5321's DATA termination timeout).
	Data rules.Setting[caddy.Duration] `json:"data,omitzero"`

	// MTASTS is the time allowed to fetch a domain's MTA-STS policy over
	// HTTPS. Default: 1m, the timeout RFC 8461 (section 3.3) suggests for
	// the policy fetch; the policy is a small file (at most 64 KiB).
	MTASTS rules.Setting[caddy.Duration] `json:"mta_sts,omitzero"`
}

// TLS sets the TLS policy of deliveries.
type TLS struct {
	// StartTLS is whether STARTTLS is used: "disable", "optional" (used
	// when the server offers it; without it, plain text) or "require" (no
	// delivery without it). Default: "optional", the opportunistic TLS of
	// RFC 3207 that every MTA uses towards MX hosts.
	StartTLS rules.Setting[transport.TLSMode] `json:"starttls,omitzero"`

	// AllowInvalidCerts accepts server certificates that do not verify.
	// Default: false.
	AllowInvalidCerts rules.Setting[bool] `json:"allow_invalid_certs,omitzero"`

	// MTASTS is whether MTA-STS (RFC 8461) policies are looked up and
	// applied: "disable", "optional" (applied when the domain publishes
	// one) or "require" (no delivery to a domain without one). Default:
	// "optional".
	MTASTS rules.Setting[transport.TLSMode] `json:"mta_sts,omitzero"`

	// DANE is whether DANE (RFC 7672) TLSA records are looked up and
	// applied: "disable", "optional" (applied when the MX host publishes
	// DNSSEC-signed records) or "require". Default: "optional".
	DANE rules.Setting[transport.TLSMode] `json:"dane,omitzero"`
}
