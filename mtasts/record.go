package mtasts

import (
	"fmt"
	"strings"
)

// Record is a domain's _mta-sts TXT record (RFC 8461, section 3.1).
type Record struct {
	// ID identifies the current policy: a new ID means a new policy.
	ID string
}

// recordVersion starts every STSv1 record.
const recordVersion = "v=STSv1"

// isSTSRecord reports whether a TXT record claims to be an STSv1 record:
// it starts with "v=STSv1" followed by the field separator (or nothing).
// Other TXT records at _mta-sts are discarded (RFC 8461, section 3.1).
func isSTSRecord(txt string) bool {
	rest, ok := strings.CutPrefix(txt, recordVersion)
	if !ok {
		return false
	}
	rest = strings.TrimLeft(rest, " \t")
	return rest == "" || rest[0] == ';'
}

// SelectRecord picks the STSv1 record among the TXT records of
// _mta-sts.DOMAIN and parses it. Records that do not start with "v=STSv1"
// are discarded; none left is ErrNoRecord, more than one is
// ErrMultipleRecords, a malformed one is ErrRecordSyntax: RFC 8461,
// section 3.1 treats all three as no policy.
func SelectRecord(records []string) (*Record, error) {
	var sts []string
	for _, r := range records {
		if isSTSRecord(r) {
			sts = append(sts, r)
		}
	}
	switch len(sts) {
	case 0:
		return nil, ErrNoRecord
	case 1:
		return ParseRecord(sts[0])
	}
	return nil, fmt.Errorf("%w: %d of them", ErrMultipleRecords, len(sts))
}

// ParseRecord parses an STSv1 TXT record strictly by the grammar of RFC
// 8461, section 3.1:
//
//	sts-text-record = sts-version 1*(sts-sep sts-field) [sts-sep]
//	sts-field       = sts-id / sts-extension
//	sts-version     = %s"v=STSv1"
//	sts-id          = %s"id=" 1*32(ALPHA / DIGIT)
//	sts-sep         = *WSP %x3B *WSP
//	sts-extension   = sts-ext-name "=" sts-ext-value
//	sts-ext-name    = (ALPHA / DIGIT) *31(ALPHA / DIGIT / "_" / "-" / ".")
//	sts-ext-value   = 1*(%x21-3A / %x3C / %x3E-7E)
//
// The version must come first and the id exactly once; extension fields
// are checked for syntax and ignored. Errors wrap ErrRecordSyntax.
func ParseRecord(txt string) (*Record, error) {
	rest, ok := strings.CutPrefix(txt, recordVersion)
	if !ok {
		return nil, fmt.Errorf("%w: does not start with %s", ErrRecordSyntax, recordVersion)
	}
	rec := &Record{}
	fields := 0
	for {
		// sts-sep, mandatory before each field; the last one may end
		// the record.
		rest = strings.TrimLeft(rest, " \t")
		if rest == "" {
			break
		}
		if rest[0] != ';' {
			return nil, fmt.Errorf("%w: %q where \";\" was expected", ErrRecordSyntax, rest)
		}
		rest = strings.TrimLeft(rest[1:], " \t")
		if rest == "" {
			break
		}
		end := strings.IndexAny(rest, " \t;")
		if end < 0 {
			end = len(rest)
		}
		field := rest[:end]
		rest = rest[end:]
		name, value, ok := strings.Cut(field, "=")
		if !ok {
			return nil, fmt.Errorf("%w: field %q has no \"=\"", ErrRecordSyntax, field)
		}
		fields++
		if name == "id" {
			if rec.ID != "" {
				return nil, fmt.Errorf("%w: id given twice", ErrRecordSyntax)
			}
			if !validID(value) {
				return nil, fmt.Errorf("%w: id %q is not 1 to 32 letters and digits", ErrRecordSyntax, value)
			}
			rec.ID = value
			continue
		}
		if !validFieldName(name) {
			return nil, fmt.Errorf("%w: invalid field name %q", ErrRecordSyntax, name)
		}
		if !validExtValue(value) {
			return nil, fmt.Errorf("%w: invalid value %q of field %s", ErrRecordSyntax, value, name)
		}
	}
	if fields == 0 || rec.ID == "" {
		return nil, fmt.Errorf("%w: no id", ErrRecordSyntax)
	}
	return rec, nil
}

func validID(s string) bool {
	if len(s) == 0 || len(s) > 32 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !isAlnum(s[i]) {
			return false
		}
	}
	return true
}

// validExtValue checks sts-ext-value: visible ASCII but "=" and ";".
func validExtValue(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x21 || c > 0x7e || c == '=' || c == ';' {
			return false
		}
	}
	return true
}
