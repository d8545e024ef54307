// Package tlsrpt keeps what SMTP TLS Reporting (RFC 8460) reports: per
// policy domain and policy, how many sessions succeeded and how many failed
// by result type. The reports themselves are sent by a later part of the
// app; this package is the record they are made from, kept apart so that
// the delivery code only counts and the reporting code only reads.
package tlsrpt

import (
	"sort"
	"sync"
	"time"
)

// The policy types of RFC 8460, section 4.4.
const (
	PolicySTS      = "sts"
	PolicyTLSA     = "tlsa"
	PolicyNoPolicy = "no-policy-found"
)

// The result types of RFC 8460, section 4.3, that this sender can tell.
const (
	StartTLSNotSupported    = "starttls-not-supported"
	CertificateHostMismatch = "certificate-host-mismatch"
	CertificateExpired      = "certificate-expired"
	CertificateNotTrusted   = "certificate-not-trusted"
	ValidationFailure       = "validation-failure"
	TLSAInvalid             = "tlsa-invalid"
	DNSSECInvalid           = "dnssec-invalid"
	DANERequired            = "dane-required"
	STSPolicyFetchError     = "sts-policy-fetch-error"
	STSPolicyInvalid        = "sts-policy-invalid"
	STSWebPKIInvalid        = "sts-webpki-invalid"
)

// key names one record.
type key struct {
	domain, policy string
}

// Summary is the record of one policy domain and policy type.
type Summary struct {
	Domain   string         `json:"policy_domain"`
	Policy   string         `json:"policy_type"`
	Success  int            `json:"total_successful_session_count"`
	Failures map[string]int `json:"failure_details,omitempty"`
	Since    time.Time      `json:"since"`
}

// Record counts sessions. It is safe for concurrent use.
type Record struct {
	mu      sync.Mutex
	entries map[key]*Summary
}

// NewRecord returns an empty record.
func NewRecord() *Record { return &Record{entries: map[key]*Summary{}} }

func (r *Record) entry(domain, policy string) *Summary {
	k := key{domain, policy}
	e := r.entries[k]
	if e == nil {
		e = &Summary{Domain: domain, Policy: policy, Failures: map[string]int{}, Since: time.Now()}
		r.entries[k] = e
	}
	return e
}

// Success counts a session that met the policy.
func (r *Record) Success(domain, policy string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.entry(domain, policy).Success++
}

// Failure counts a session that failed the policy, by result type.
func (r *Record) Failure(domain, policy, result string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.entry(domain, policy).Failures[result]++
}

// Summaries returns a copy of the record, sorted by domain and policy.
func (r *Record) Summaries() []Summary {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]Summary, 0, len(r.entries))
	for _, e := range r.entries {
		s := *e
		s.Failures = make(map[string]int, len(e.Failures))
		for k, v := range e.Failures {
			s.Failures[k] = v
		}
		out = append(out, s)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Domain != out[j].Domain {
			return out[i].Domain < out[j].Domain
		}
		return out[i].Policy < out[j].Policy
	})
	return out
}

// Destruct implements caddy.Destructor, for the usage pool that keeps the
// record across config reloads; there is nothing to release.
func (r *Record) Destruct() error { return nil }
