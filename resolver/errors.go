package resolver

import (
	"errors"
	"fmt"

	"github.com/miekg/dns"
)

// Kind says what a lookup failure means for delivery.
type Kind int

// The kinds of lookup failure.
const (
	// Temporary failures (SERVFAIL, REFUSED, timeouts, network errors, a
	// bogus DNSSEC answer) are worth retrying later.
	Temporary Kind = iota
	// Permanent failures (NXDOMAIN, no data, a null MX) will not change by
	// retrying: the message bounces.
	Permanent
)

func (k Kind) String() string {
	if k == Permanent {
		return "permanent"
	}
	return "temporary"
}

// Reasons for a failure, for callers that need more than its kind.
var (
	// ErrNXDomain: the name does not exist (NXDOMAIN). Permanent.
	ErrNXDomain = errors.New("no such domain")
	// ErrNoData: the name exists but has no record of the type asked for.
	// Permanent.
	ErrNoData = errors.New("no records of that type")
	// ErrNullMX: the domain publishes "MX 0 ." (RFC 7505): it accepts no
	// mail. Permanent.
	ErrNullMX = errors.New("domain accepts no mail (null MX, RFC 7505)")
	// ErrServFail: the server could not answer (SERVFAIL). Temporary.
	ErrServFail = errors.New("server failure")
	// ErrRefused: the server refused the query (REFUSED). Temporary.
	ErrRefused = errors.New("query refused")
	// ErrBogus: a validating resolver found the answer's DNSSEC signatures
	// invalid. Temporary: it is an attack or a misconfiguration, and
	// neither should make mail bounce at once.
	ErrBogus = errors.New("DNSSEC validation failed (bogus)")
	// ErrTimeout: no server answered in time. Temporary.
	ErrTimeout = errors.New("timed out")
	// ErrCNAMELoop: a CNAME chain was too long or looped. Temporary.
	ErrCNAMELoop = errors.New("CNAME chain too long")
	// ErrNotCached: a lookup under CachedOnly found no cached answer.
	// Temporary.
	ErrNotCached = errors.New("not in the cache")
)

// Error is a failed lookup: which name and type, what it means (Kind),
// why (Reason, one of the Err values above, or a network error), and
// which server said so with which rcode.
type Error struct {
	Name   string
	Type   uint16
	Kind   Kind
	Reason error
	Server string
	Rcode  int // -1 when there was no answer
	// DNSSEC is the status of a negative answer (Secure: a validated
	// denial of existence), or Bogus for ErrBogus.
	DNSSEC Security
}

func (e *Error) Error() string {
	msg := fmt.Sprintf("lookup %s %s: %v", e.Name, dns.TypeToString[e.Type], e.Reason)
	if e.Server != "" {
		msg += " (server " + e.Server
		if e.Rcode >= 0 {
			msg += ", rcode " + dns.RcodeToString[e.Rcode]
		}
		msg += ")"
	}
	return msg + ", " + e.Kind.String()
}

// Unwrap returns the reason, so errors.Is(err, ErrNXDomain) works.
func (e *Error) Unwrap() error { return e.Reason }

// IsPermanent reports whether err is a lookup failure that retrying will
// not fix.
func IsPermanent(err error) bool {
	var e *Error
	return errors.As(err, &e) && e.Kind == Permanent
}

// IsTemporary reports whether err is a lookup failure worth retrying
// (every failure that is not permanent is).
func IsTemporary(err error) bool {
	return err != nil && !IsPermanent(err)
}

// Security returns the DNSSEC status of the failure: Bogus for a validation
// failure, Secure for a validated denial of existence, else Insecure.
func (e *Error) Security() Security { return e.DNSSEC }
