package dane

import (
	"bytes"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/x509"

	"github.com/seed7b014b84/caddy-smtp/resolver"
)

// Certificate usages (RFC 6698, section 2.1.1; acronyms of RFC 7218).
const (
	// UsagePKIXTA is PKIX-TA(0): a CA that must also be trusted by the Web
	// PKI. Unusable for SMTP (RFC 7672, section 3.1.3).
	UsagePKIXTA uint8 = 0
	// UsagePKIXEE is PKIX-EE(1): the server's certificate, which must also
	// pass the Web PKI. Unusable for SMTP (RFC 7672, section 3.1.3).
	UsagePKIXEE uint8 = 1
	// UsageDANETA is DANE-TA(2): a trust anchor the server's chain must
	// lead to; the server's name and the validity dates are checked.
	UsageDANETA uint8 = 2
	// UsageDANEEE is DANE-EE(3): the server's own certificate or key;
	// nothing else is checked (RFC 7672, section 3.1.1).
	UsageDANEEE uint8 = 3
)

// Selectors (RFC 6698, section 2.1.2).
const (
	// SelectorCert matches the whole DER certificate.
	SelectorCert uint8 = 0
	// SelectorSPKI matches the DER SubjectPublicKeyInfo.
	SelectorSPKI uint8 = 1
)

// Matching types (RFC 6698, section 2.1.3).
const (
	// MatchingFull compares the selected data itself.
	MatchingFull uint8 = 0
	// MatchingSHA256 compares its SHA-256 digest.
	MatchingSHA256 uint8 = 1
	// MatchingSHA512 compares its SHA-512 digest.
	MatchingSHA512 uint8 = 2
)

// Usable returns the records of records that an SMTP client can use, in
// their order: usage DANE-TA(2) or DANE-EE(3), selector 0 or 1, matching
// type 0, 1 or 2, and association data of the right length for the
// matching type (32 bytes for SHA-256, 64 for SHA-512, not empty for a
// full value). Everything else is unusable (RFC 7672, section 3.1.3; RFC
// 7671, section 4): PKIX-TA(0) and PKIX-EE(1) have no meaning for SMTP,
// where there is no agreed set of public CAs. A TLSA RRset whose records
// are all unusable is, for RFC 7672 section 2.2, like one that is present
// but useless: TLS is still mandatory, but cannot be authenticated.
func Usable(records []resolver.TLSA) []resolver.TLSA {
	var out []resolver.TLSA
	for _, r := range records {
		if usable(r) {
			out = append(out, r)
		}
	}
	return out
}

func usable(r resolver.TLSA) bool {
	if r.Usage != UsageDANETA && r.Usage != UsageDANEEE {
		return false
	}
	if r.Selector != SelectorCert && r.Selector != SelectorSPKI {
		return false
	}
	switch r.MatchingType {
	case MatchingFull:
		return len(r.Data) > 0
	case MatchingSHA256:
		return len(r.Data) == sha256.Size
	case MatchingSHA512:
		return len(r.Data) == sha512.Size
	}
	return false
}

// strongest applies digest algorithm agility (RFC 7671, section 9): for
// each combination of usage and selector, only the records of the
// strongest digest present are kept (SHA-512 over SHA-256), so that a
// weaker digest cannot be used to get around a stronger one. Records of
// matching type Full(0) are always kept.
func strongest(records []resolver.TLSA) []resolver.TLSA {
	type key struct{ usage, selector uint8 }
	best := map[key]uint8{}
	for _, r := range records {
		k := key{r.Usage, r.Selector}
		if r.MatchingType > best[k] {
			best[k] = r.MatchingType
		}
	}
	var out []resolver.TLSA
	for _, r := range records {
		if r.MatchingType == MatchingFull || r.MatchingType == best[key{r.Usage, r.Selector}] {
			out = append(out, r)
		}
	}
	return out
}

// Matches reports whether the certificate matches the record's selector,
// matching type and association data. It does not look at the usage:
// whether the certificate must be the server's own or a trust anchor is
// the caller's business. A record that is not usable (see Usable) matches
// nothing.
func Matches(r resolver.TLSA, cert *x509.Certificate) bool {
	if cert == nil || !usable(r) {
		return false
	}
	var data []byte
	switch r.Selector {
	case SelectorCert:
		data = cert.Raw
	case SelectorSPKI:
		data = cert.RawSubjectPublicKeyInfo
	}
	switch r.MatchingType {
	case MatchingSHA256:
		sum := sha256.Sum256(data)
		data = sum[:]
	case MatchingSHA512:
		sum := sha512.Sum512(data)
		data = sum[:]
	}
	return bytes.Equal(data, r.Data)
}
