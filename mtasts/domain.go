package mtasts

import "strings"

// normalizeDomain lowercases a recipient domain and drops a final dot,
// and refuses what is not a host name: the domain names DNS records and a
// storage key, so "../x" or "a/b" must never get that far.
func normalizeDomain(domain string) (string, error) {
	d := strings.ToLower(strings.TrimSuffix(domain, "."))
	if !validDomain(d) {
		return "", permanent(domain, ErrDomain)
	}
	return d, nil
}

// validDomain checks RFC 5321's Domain: dot-separated labels of letters,
// digits and hyphens, neither starting nor ending with a hyphen, 1 to 63
// octets each, 253 in all, with no final dot.
func validDomain(s string) bool {
	if len(s) == 0 || len(s) > 253 {
		return false
	}
	for label := range strings.SplitSeq(s, ".") {
		if len(label) == 0 || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for i := 0; i < len(label); i++ {
			if !isAlnum(label[i]) && label[i] != '-' {
				return false
			}
		}
	}
	return true
}

func isAlnum(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9'
}
