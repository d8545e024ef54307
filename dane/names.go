package dane

import (
	"crypto/x509"
	"strings"
)

// normalizeName lowercases a DNS name and removes its final dot. Names are
// compared in their ASCII (A-label) form, as they appear in DNS and in
// certificates.
func normalizeName(name string) string {
	return strings.ToLower(strings.TrimSuffix(name, "."))
}

// certNames returns the names a certificate is issued to, for RFC 7672
// section 3.2.3: its DNS subject alternative names or, when it has none,
// its subject common name.
func certNames(cert *x509.Certificate) []string {
	if len(cert.DNSNames) > 0 {
		return cert.DNSNames
	}
	if cert.Subject.CommonName != "" {
		return []string{cert.Subject.CommonName}
	}
	return nil
}

// matchName reports whether a certificate name (pattern) covers the
// reference identifier name. A wildcard is only "*" as the whole left-most
// label, and it stands for exactly one label (RFC 7672, section 3.2.3;
// RFC 6125, section 6.4.3): "*.example.com" covers "mx.example.com" but
// neither "example.com" nor "a.mx.example.com". Both are normalized.
func matchName(pattern, name string) bool {
	pattern, name = normalizeName(pattern), normalizeName(name)
	if pattern == "" || name == "" {
		return false
	}
	if rest, ok := strings.CutPrefix(pattern, "*."); ok {
		if rest == "" || strings.Contains(rest, "*") {
			return false
		}
		label, parent, ok := strings.Cut(name, ".")
		return ok && label != "" && parent == rest
	}
	return !strings.Contains(pattern, "*") && pattern == name
}

// matchesAny reports whether the certificate is issued to one of names.
func matchesAny(cert *x509.Certificate, names []string) bool {
	for _, pattern := range certNames(cert) {
		for _, name := range names {
			if matchName(pattern, name) {
				return true
			}
		}
	}
	return false
}
