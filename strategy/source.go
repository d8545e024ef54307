package strategy

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
)

// Source is one local address to send from. Its JSON form is the
// address as a string, or {"address": ADDR, "ehlo": NAME} to give that
// address its own EHLO name (receivers check that the EHLO name matches the
// address's PTR record).
type Source struct {
	// Address is a local IP address.
	Address string `json:"address"`

	// EHLO is the name to greet with from this address. Default: the app's
	// hostname.
	EHLO string `json:"ehlo,omitempty"`
}

// UnmarshalJSON reads an address string or an {address, ehlo} object.
func (s *Source) UnmarshalJSON(b []byte) error {
	b = bytes.TrimSpace(b)
	if len(b) > 0 && b[0] == '"' {
		*s = Source{}
		return json.Unmarshal(b, &s.Address)
	}
	type plain Source
	var p plain
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&p); err != nil {
		return fmt.Errorf("a source address is a string or {\"address\", \"ehlo\"}: %s", strings.TrimPrefix(err.Error(), "json: "))
	}
	*s = Source(p)
	return nil
}

// MarshalJSON writes a plain string when there is no EHLO name.
func (s Source) MarshalJSON() ([]byte, error) {
	if s.EHLO == "" {
		return json.Marshal(s.Address)
	}
	type plain Source
	return json.Marshal(plain(s))
}
