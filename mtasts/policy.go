package mtasts

import (
	"fmt"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// Mode is a policy's mode (RFC 8461, section 5).
type Mode string

// The modes a policy may have.
const (
	// ModeEnforce: deliver only to MX hosts the policy matches, over TLS
	// with a certificate that verifies; otherwise do not deliver.
	ModeEnforce Mode = "enforce"
	// ModeTesting: report failures (TLSRPT) but deliver anyway.
	ModeTesting Mode = "testing"
	// ModeNone: the domain has withdrawn its policy; deliver as if it had
	// none. It is cached like any policy, so that a sender forgets an
	// earlier one.
	ModeNone Mode = "none"
)

// MaxMaxAge is the largest max_age a policy may give, in seconds (about a
// year, RFC 8461, section 3.2).
const MaxMaxAge = 31557600

// Policy is a domain's MTA-STS policy. A Policy handed out by a Cache is
// shared: it must not be modified.
type Policy struct {
	// Version is the policy version, always "STSv1".
	Version string
	// Mode is enforce, testing or none.
	Mode Mode
	// MX are the allowed MX host patterns, lowercased: a host name, or
	// "*." and a host name, which matches one more leftmost label. A
	// policy in mode none may have none.
	MX []string
	// MaxAge is how long the policy may be cached after it was fetched.
	MaxAge time.Duration
	// ID is the id of the TXT record the policy was fetched under (set by
	// the Cache; a bare Fetch leaves it empty).
	ID string
	// Fetched is when the fetch started: the policy expires MaxAge later.
	Fetched time.Time
}

// Expires returns when the policy stops being usable.
func (p *Policy) Expires() time.Time { return p.Fetched.Add(p.MaxAge) }

// Expired reports whether the policy is past its max_age at time at.
func (p *Policy) Expired(at time.Time) bool { return !at.Before(p.Expires()) }

// SyntaxError is a policy body that does not follow RFC 8461, section
// 3.2: which line (1-based; 0 for a field that is missing altogether),
// which field, and what is wrong.
type SyntaxError struct {
	Line  int
	Field string
	Msg   string
}

func (e *SyntaxError) Error() string {
	switch {
	case e.Line == 0:
		return fmt.Sprintf("mta-sts policy: field %s: %s", e.Field, e.Msg)
	case e.Field == "":
		return fmt.Sprintf("mta-sts policy: line %d: %s", e.Line, e.Msg)
	}
	return fmt.Sprintf("mta-sts policy: line %d: field %s: %s", e.Line, e.Field, e.Msg)
}

// ParsePolicy parses a policy body strictly by the grammar of RFC 8461,
// section 3.2: one "key: value" field per line, lines ended by LF or
// CRLF; version ("STSv1"), mode and max_age (0 to MaxMaxAge seconds) each
// exactly once; one mx field or more unless the mode is none; other keys
// checked for syntax and ignored. The field names and the values of
// version and mode are case-sensitive.
//
// The one leniency is that empty lines at the end of the body are
// ignored: editors add them, and they change no field. An empty line
// between fields is an error. The returned policy has no ID and no
// Fetched time: the caller knows them.
func ParsePolicy(body []byte) (*Policy, error) {
	if !utf8.Valid(body) {
		return nil, &SyntaxError{Msg: "body is not UTF-8"}
	}
	text := strings.TrimRight(string(body), "\r\n")
	if text == "" {
		return nil, &SyntaxError{Line: 1, Msg: "empty policy"}
	}
	p := &Policy{}
	seen := map[string]int{}
	var maxAge bool
	for i, line := range strings.Split(text, "\n") {
		n := i + 1
		line = strings.TrimSuffix(line, "\r")
		key, value, err := splitField(line)
		if err != nil {
			return nil, &SyntaxError{Line: n, Msg: err.Error()}
		}
		if first, dup := seen[key]; dup && key != "mx" && isKnownField(key) {
			return nil, &SyntaxError{Line: n, Field: key, Msg: fmt.Sprintf("given again (first on line %d)", first)}
		}
		seen[key] = n
		switch key {
		case "version":
			if value != "STSv1" {
				return nil, &SyntaxError{Line: n, Field: key, Msg: fmt.Sprintf("%q is not STSv1", value)}
			}
			p.Version = value
		case "mode":
			switch m := Mode(value); m {
			case ModeEnforce, ModeTesting, ModeNone:
				p.Mode = m
			default:
				return nil, &SyntaxError{Line: n, Field: key, Msg: fmt.Sprintf("%q is not enforce, testing or none", value)}
			}
		case "max_age":
			secs, err := parseMaxAge(value)
			if err != nil {
				return nil, &SyntaxError{Line: n, Field: key, Msg: err.Error()}
			}
			p.MaxAge, maxAge = time.Duration(secs)*time.Second, true
		case "mx":
			if !validMXPattern(value) {
				return nil, &SyntaxError{Line: n, Field: key, Msg: fmt.Sprintf("%q is neither a host name nor *. and a host name", value)}
			}
			p.MX = append(p.MX, strings.ToLower(value))
		}
	}
	switch {
	case p.Version == "":
		return nil, &SyntaxError{Field: "version", Msg: "missing"}
	case p.Mode == "":
		return nil, &SyntaxError{Field: "mode", Msg: "missing"}
	case !maxAge:
		return nil, &SyntaxError{Field: "max_age", Msg: "missing"}
	case len(p.MX) == 0 && p.Mode != ModeNone:
		return nil, &SyntaxError{Field: "mx", Msg: "missing (required in mode " + string(p.Mode) + ")"}
	}
	return p, nil
}

func isKnownField(key string) bool {
	switch key {
	case "version", "mode", "max_age", "mx":
		return true
	}
	return false
}

// splitField splits one line into its key and value:
//
//	sts-policy-field-delim = ":" *WSP
//	sts-policy-ext-name    = (ALPHA / DIGIT) *31(ALPHA / DIGIT / "_" / "-" / ".")
//	sts-policy-ext-value   = sts-policy-vchar [ *(%x20 / sts-policy-vchar) sts-policy-vchar ]
//
// Whitespace after the value (*WSP before the line's end) is dropped.
func splitField(line string) (key, value string, err error) {
	if line == "" {
		return "", "", fmt.Errorf("empty line")
	}
	key, value, ok := strings.Cut(line, ":")
	if !ok {
		return "", "", fmt.Errorf("no \"key: value\" field")
	}
	if !validFieldName(key) {
		return "", "", fmt.Errorf("invalid field name %q", key)
	}
	value = strings.Trim(value, " \t")
	if value == "" {
		return "", "", fmt.Errorf("field %s has no value", key)
	}
	for _, r := range value {
		// Printable ASCII and spaces, and any non-ASCII UTF-8 character.
		if r < 0x20 || r == 0x7f {
			return "", "", fmt.Errorf("field %s: control character %U in value", key, r)
		}
	}
	return key, value, nil
}

// validFieldName checks sts-policy-ext-name (which the known names
// follow too).
func validFieldName(s string) bool {
	if len(s) == 0 || len(s) > 32 || !isAlnum(s[0]) {
		return false
	}
	for i := 1; i < len(s); i++ {
		c := s[i]
		if !isAlnum(c) && c != '_' && c != '-' && c != '.' {
			return false
		}
	}
	return true
}

// parseMaxAge checks sts-policy-max-age-value (1*10 DIGIT) and the bound.
func parseMaxAge(s string) (int64, error) {
	if len(s) > 10 || strings.TrimLeft(s, "0123456789") != "" {
		return 0, fmt.Errorf("%q is not 1 to 10 digits", s)
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%q: %w", s, err)
	}
	if n > MaxMaxAge {
		return 0, fmt.Errorf("%d is more than %d seconds", n, MaxMaxAge)
	}
	return n, nil
}

// validMXPattern checks sts-policy-mx-value: ["*."] Domain.
func validMXPattern(s string) bool {
	return validDomain(strings.TrimPrefix(s, "*."))
}
