package dkim

import (
	"strings"
)

// Role says what a key record is for.
type Role string

// The roles of a record.
const (
	// RoleCurrent is the key that signs (or will once its record resolves).
	RoleCurrent Role = "current"
	// RoleNext is a rotation's new key, which signs once its record
	// resolves.
	RoleNext Role = "next"
	// RoleRetired is a key replaced by a rotation: its record stays until
	// mail signed with it has been delivered (a week).
	RoleRetired Role = "retired"
)

// Record is the DNS TXT record of a key (RFC 6376, section 3.6.1).
type Record struct {
	// Name is SELECTOR._domainkey.DOMAIN., with the final dot.
	Name string
	// Text is the whole record: "v=DKIM1; k=rsa; p=...".
	Text string

	Domain    string
	Selector  string
	Algorithm Algorithm
	Role      Role
}

// Record returns the key's TXT record, with role current.
func (k *Key) Record() Record {
	return Record{
		Name:      k.Name(),
		Text:      "v=DKIM1; k=" + k.Algorithm.keyType() + "; p=" + k.pub,
		Domain:    k.Domain,
		Selector:  k.Selector,
		Algorithm: k.Algorithm,
		Role:      RoleCurrent,
	}
}

// Strings splits the record into the character-strings of a TXT record,
// of at most 255 octets each (RFC 1035, section 3.3.14); verifiers join
// them (RFC 6376, section 3.6.2.2).
func (r Record) Strings() []string {
	var out []string
	t := r.Text
	for len(t) > 255 {
		out = append(out, t[:255])
		t = t[255:]
	}
	return append(out, t)
}

// ZoneLine returns the record as a zone file line:
//
//	s1._domainkey.example.org. IN TXT "v=DKIM1; k=rsa; p=MIIB..." "..."
//
// The text holds no quote or backslash, so nothing needs escaping.
func (r Record) ZoneLine() string {
	var b strings.Builder
	b.WriteString(r.Name)
	b.WriteString(" IN TXT")
	for _, s := range r.Strings() {
		b.WriteString(` "`)
		b.WriteString(s)
		b.WriteString(`"`)
	}
	return b.String()
}

// keyInRecords tells whether one of the TXT records (each with its
// strings joined) is a DKIM key record with public key pub.
func keyInRecords(records []string, pub string) bool {
	for _, r := range records {
		if p, ok := recordKey(r); ok && p == pub {
			return true
		}
	}
	return false
}

// recordKey returns the p= value of a key record, without whitespace.
func recordKey(r string) (string, bool) {
	for _, tag := range strings.Split(r, ";") {
		name, value, ok := strings.Cut(tag, "=")
		if !ok || strings.TrimSpace(name) != "p" {
			continue
		}
		return strings.Join(strings.Fields(value), ""), true
	}
	return "", false
}
