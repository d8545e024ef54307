package mtasts

import "strings"

// Matches reports whether the policy allows mxHost as an MX host (RFC
// 8461, section 4.1). The comparison ignores case and a final dot. A
// pattern "*.example.com" matches a host with exactly one more label on
// the left ("mx.example.com"), neither "example.com" nor
// "a.b.example.com". A nil policy matches nothing.
func (p *Policy) Matches(mxHost string) bool {
	if p == nil {
		return false
	}
	host := strings.ToLower(strings.TrimSuffix(mxHost, "."))
	if host == "" {
		return false
	}
	for _, pat := range p.MX {
		if matchPattern(strings.ToLower(pat), host) {
			return true
		}
	}
	return false
}

// matchPattern matches one lowercased pattern against a lowercased host.
func matchPattern(pat, host string) bool {
	suffix, wild := strings.CutPrefix(pat, "*")
	if !wild {
		return pat == host
	}
	// suffix is ".example.com": the host must be one non-empty label
	// followed by it.
	label, ok := strings.CutSuffix(host, suffix)
	return ok && label != "" && !strings.Contains(label, ".")
}
