package transport

import (
	"encoding/json"
	"fmt"
	"strings"
)

// TLSMode is how strongly a TLS mechanism is wanted: "disable" (never),
// "optional" (when offered, carrying on without it otherwise) or "require"
// (no delivery without it). It is the value of tls.starttls, tls.mta_sts and
// tls.dane.
type TLSMode string

// The TLS modes.
const (
	TLSDisable  TLSMode = "disable"
	TLSOptional TLSMode = "optional"
	TLSRequire  TLSMode = "require"
)

// ParseTLSMode reads s (any case) as a mode.
func ParseTLSMode(s string) (TLSMode, error) {
	switch m := TLSMode(strings.ToLower(strings.TrimSpace(s))); m {
	case TLSDisable, TLSOptional, TLSRequire:
		return m, nil
	}
	return "", fmt.Errorf("unknown TLS mode %q (want disable, optional or require)", s)
}

// UnmarshalJSON reads a mode name.
func (m *TLSMode) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("TLS mode is a string: %w", err)
	}
	v, err := ParseTLSMode(s)
	if err != nil {
		return err
	}
	*m = v
	return nil
}

// Interface guards
var _ json.Unmarshaler = (*TLSMode)(nil)
