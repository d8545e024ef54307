package resolver

import "fmt"

// Security is the DNSSEC status of an answer.
type Security int

// The DNSSEC statuses, as RFC 4035 names them.
const (
	// Insecure: not validated, or the zone is not signed, or the server is
	// not trusted to validate.
	Insecure Security = iota
	// Secure: a trusted validating resolver set AD on the answer.
	Secure
	// Bogus: a trusted validating resolver failed to validate data that
	// exists (SERVFAIL, but an answer with CD set).
	Bogus
)

func (s Security) String() string {
	switch s {
	case Secure:
		return "secure"
	case Bogus:
		return "bogus"
	}
	return "insecure"
}

// MarshalText writes the status's name, for logs and JSON reports.
func (s Security) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// UnmarshalText reads a status's name.
func (s *Security) UnmarshalText(b []byte) error {
	switch string(b) {
	case "secure":
		*s = Secure
	case "bogus":
		*s = Bogus
	case "insecure":
		*s = Insecure
	default:
		return fmt.Errorf("unknown DNSSEC status %q", b)
	}
	return nil
}
