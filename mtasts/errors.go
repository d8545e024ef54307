package mtasts

import (
	"errors"
	"fmt"

	"github.com/seed7b014b84/caddy-smtp/resolver"
)

// Reasons a policy could not be discovered or fetched, for errors.Is.
var (
	// ErrNoRecord: the domain publishes no _mta-sts TXT record starting
	// with "v=STSv1" (RFC 8461, section 3.1): it has no policy.
	ErrNoRecord = errors.New("no MTA-STS TXT record")
	// ErrMultipleRecords: the domain publishes more than one STSv1 TXT
	// record, which RFC 8461, section 3.1 treats as no policy.
	ErrMultipleRecords = errors.New("more than one MTA-STS TXT record")
	// ErrRecordSyntax: the STSv1 TXT record is malformed, which RFC 8461,
	// section 3.1 treats as no policy.
	ErrRecordSyntax = errors.New("malformed MTA-STS TXT record")
	// ErrStatus: the policy host answered with a status other than 200
	// (a redirect included: RFC 8461, section 3.3 forbids following one).
	ErrStatus = errors.New("unexpected HTTP status")
	// ErrTooLarge: the policy body is larger than MaxPolicySize.
	ErrTooLarge = errors.New("policy larger than 64 KiB")
	// ErrMediaType: the policy is not served as text/plain.
	ErrMediaType = errors.New("policy media type is not text/plain")
	// ErrDomain: the domain is not a syntactically valid host name (so it
	// can name neither a DNS record nor a storage key).
	ErrDomain = errors.New("invalid domain name")
)

// Error is a failed policy discovery or fetch for a domain: what went
// wrong (Err) and whether trying again later may help (Kind, in the
// resolver's terms). RFC 8461, section 5 has a sender deliver as if the
// domain had no policy when discovery fails and nothing usable is cached;
// Kind lets delivery prefer to defer on a temporary failure instead.
type Error struct {
	// Domain is the recipient domain.
	Domain string
	// Kind is resolver.Temporary for failures that may go away (DNS
	// server failures, timeouts, refused connections, 5xx and 429
	// statuses) and resolver.Permanent for what the domain publishes
	// wrongly (a malformed record or policy, a redirect, a certificate
	// that does not verify, an oversized body).
	Kind resolver.Kind
	// Err is the cause.
	Err error
}

func (e *Error) Error() string {
	return fmt.Sprintf("mta-sts %s: %v, %s", e.Domain, e.Err, e.Kind)
}

// Unwrap returns the cause, so that errors.Is(err, ErrTooLarge) works.
func (e *Error) Unwrap() error { return e.Err }

// IsTemporary reports whether err is a failure worth retrying later. An
// *Error answers by its Kind; any other error answers as resolver's
// IsTemporary does (every error not known to be permanent is temporary).
func IsTemporary(err error) bool {
	var e *Error
	if errors.As(err, &e) {
		return e.Kind == resolver.Temporary
	}
	return resolver.IsTemporary(err)
}

// IsPermanent reports whether err is a failure that retrying will not fix.
func IsPermanent(err error) bool {
	return err != nil && !IsTemporary(err)
}

func permanent(domain string, err error) *Error {
	return &Error{Domain: domain, Kind: resolver.Permanent, Err: err}
}

func temporary(domain string, err error) *Error {
	return &Error{Domain: domain, Kind: resolver.Temporary, Err: err}
}
