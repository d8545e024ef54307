package dane

import (
	"errors"
	"fmt"
	"strings"
)

// The reasons a DANE verification fails. Match them with errors.Is on the
// error a handshake returns (an *Error, possibly wrapped by crypto/tls and
// transport.Error).
var (
	// ErrNoUsableRecords: the verifier was given no usable TLSA record.
	// RFC 7672 (section 2.2) still requires TLS in that case, but TLS that
	// cannot be authenticated; NewVerifier returns it so the caller can
	// choose that path instead of handshaking with a verifier that can
	// only fail.
	ErrNoUsableRecords = errors.New("no usable TLSA record")
	// ErrNoCertificate: the server presented no certificate.
	ErrNoCertificate = errors.New("the server presented no certificate")
	// ErrNoMatch: no usable TLSA record matches the server's certificate
	// (DANE-EE) or any certificate in the chain it sent (DANE-TA).
	ErrNoMatch = errors.New("no TLSA record matches the server's certificates")
	// ErrChain: a certificate the server sent matches a DANE-TA record,
	// but the server's certificate does not chain up to it (a bad
	// signature, an expired or not yet valid certificate, a missing
	// intermediate, a CA without the right to sign).
	ErrChain = errors.New("the server's certificate does not chain to the DANE trust anchor")
	// ErrNameMismatch: the server's certificate chains to a DANE-TA
	// trust anchor, but carries none of the reference identifiers.
	ErrNameMismatch = errors.New("the server's certificate matches none of the names")
)

// Error is a failed DANE verification. Every one is a reason to defer the
// message, never to send it in plaintext or over unauthenticated TLS
// (RFC 7672, section 2.2): the server may be misconfigured for a moment
// (a certificate rolled over before its TLSA record), or someone may be in
// the middle.
type Error struct {
	// Reason is one of ErrNoUsableRecords, ErrNoCertificate, ErrNoMatch,
	// ErrChain and ErrNameMismatch.
	Reason error
	// Names are the reference identifiers, for ErrNameMismatch.
	Names []string
	// Err is the underlying error, such as the x509 error for ErrChain.
	Err error
}

// Error says why verification failed, prefixed with "dane: ".
func (e *Error) Error() string {
	msg := "dane: verification failed"
	if e.Reason != nil {
		msg = "dane: " + e.Reason.Error()
	}
	if len(e.Names) > 0 {
		msg += fmt.Sprintf(" (%s)", strings.Join(e.Names, ", "))
	}
	if e.Err != nil {
		msg += ": " + e.Err.Error()
	}
	return msg
}

// Unwrap returns the reason and, if any, the underlying error, so that
// errors.Is finds both.
func (e *Error) Unwrap() []error {
	var errs []error
	for _, err := range []error{e.Reason, e.Err} {
		if err != nil {
			errs = append(errs, err)
		}
	}
	return errs
}

// Temporary reports true: a DANE failure defers the message (RFC 7672,
// section 2.2).
func (e *Error) Temporary() bool { return true }
