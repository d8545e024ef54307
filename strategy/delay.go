package strategy

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
)

// DefaultFallbackDelay is RFC 8305's recommended Connection Attempt Delay.
const DefaultFallbackDelay = 250 * time.Millisecond

// Delay is the happy-eyeballs fallback delay: how long a connection attempt
// has before the next address is tried beside it. A negative Delay is "off":
// addresses are tried strictly one after another. Its JSON form is a
// duration ("250ms", or nanoseconds as a number), or "off" or -1 for off.
type Delay time.Duration

// Off is the Delay that turns happy eyeballs off.
const Off Delay = -1

// ParseDelay reads "off", "-1" or a duration.
func ParseDelay(s string) (Delay, error) {
	s = strings.TrimSpace(s)
	if s == "off" || s == "-1" {
		return Off, nil
	}
	d, err := caddy.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("fallback_delay %q: want a duration such as 250ms, or off: %v", s, err)
	}
	if d < 0 {
		return Off, nil
	}
	if d == 0 {
		return 0, fmt.Errorf("fallback_delay %q: zero would start every address at once; use a duration such as 250ms, or off", s)
	}
	return Delay(d), nil
}

// IsOff reports whether addresses are tried strictly one after another.
func (d Delay) IsOff() bool { return d < 0 }

func (d Delay) String() string {
	if d.IsOff() {
		return "off"
	}
	return time.Duration(d).String()
}

// UnmarshalJSON reads a duration string, "off", or a number of
// nanoseconds (negative for off).
func (d *Delay) UnmarshalJSON(b []byte) error {
	b = bytes.TrimSpace(b)
	if len(b) > 0 && b[0] != '"' {
		var n int64
		if err := json.Unmarshal(b, &n); err != nil {
			return fmt.Errorf("fallback_delay: want a duration or off, got %s", b)
		}
		if n < 0 {
			*d = Off
			return nil
		}
		if n == 0 {
			return fmt.Errorf("fallback_delay: zero would start every address at once; use a duration such as 250ms, or off")
		}
		*d = Delay(n)
		return nil
	}
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return err
	}
	v, err := ParseDelay(s)
	if err != nil {
		return err
	}
	*d = v
	return nil
}

// MarshalJSON writes "off" or the duration in nanoseconds, as Caddy writes
// durations.
func (d Delay) MarshalJSON() ([]byte, error) {
	if d.IsOff() {
		return []byte(`"off"`), nil
	}
	return json.Marshal(int64(d))
}

// Interface guards
var (
	_ json.Unmarshaler = (*Delay)(nil)
	_ json.Marshaler   = Delay(0)
)
