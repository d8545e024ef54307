package transport

import (
	"encoding/json"
	"fmt"
	"strings"
)

// Protocol is the protocol spoken to a remote: "smtp" (RFC 5321) or "lmtp"
// (RFC 2033, for handing mail to a message store).
type Protocol string

// The protocols a remote can speak.
const (
	SMTP Protocol = "smtp"
	LMTP Protocol = "lmtp"
)

// ParseProtocol reads s (any case) as a protocol.
func ParseProtocol(s string) (Protocol, error) {
	switch p := Protocol(strings.ToLower(strings.TrimSpace(s))); p {
	case SMTP, LMTP:
		return p, nil
	}
	return "", fmt.Errorf("unknown protocol %q (want smtp or lmtp)", s)
}

// UnmarshalJSON reads a protocol name.
func (p *Protocol) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("protocol is a string: %w", err)
	}
	v, err := ParseProtocol(s)
	if err != nil {
		return err
	}
	*p = v
	return nil
}

// DefaultPort is the port a remote speaking p listens on when the config
// names none: 25 for SMTP (465 with implicit TLS) and 24 for LMTP.
func (p Protocol) DefaultPort(implicitTLS bool) int {
	switch {
	case p == LMTP:
		return 24
	case implicitTLS:
		return 465
	}
	return 25
}

// Interface guards
var _ json.Unmarshaler = (*Protocol)(nil)
