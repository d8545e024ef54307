package dane

import (
	"bytes"
	"crypto/x509"
	"fmt"
	"testing"

	"github.com/stretchr/testify/assert"

	"github.com/seed7b014b84/caddy-smtp/internal/peertest"
	"github.com/seed7b014b84/caddy-smtp/resolver"
)

func TestUsable(t *testing.T) {
	d32, d64 := bytes.Repeat([]byte{1}, 32), bytes.Repeat([]byte{2}, 64)
	tests := []struct {
		name   string
		record resolver.TLSA
		usable bool
	}{
		{"DANE-EE SPKI SHA-256", resolver.TLSA{Usage: 3, Selector: 1, MatchingType: 1, Data: d32}, true},
		{"DANE-EE cert SHA-512", resolver.TLSA{Usage: 3, Selector: 0, MatchingType: 2, Data: d64}, true},
		{"DANE-EE SPKI full", resolver.TLSA{Usage: 3, Selector: 1, MatchingType: 0, Data: []byte{0x30, 0}}, true},
		{"DANE-TA cert SHA-256", resolver.TLSA{Usage: 2, Selector: 0, MatchingType: 1, Data: d32}, true},
		{"DANE-TA SPKI SHA-512", resolver.TLSA{Usage: 2, Selector: 1, MatchingType: 2, Data: d64}, true},
		{"PKIX-TA is unusable for SMTP", resolver.TLSA{Usage: 0, Selector: 0, MatchingType: 1, Data: d32}, false},
		{"PKIX-EE is unusable for SMTP", resolver.TLSA{Usage: 1, Selector: 1, MatchingType: 1, Data: d32}, false},
		{"unknown usage", resolver.TLSA{Usage: 4, Selector: 1, MatchingType: 1, Data: d32}, false},
		{"private usage", resolver.TLSA{Usage: 255, Selector: 1, MatchingType: 1, Data: d32}, false},
		{"unknown selector", resolver.TLSA{Usage: 3, Selector: 2, MatchingType: 1, Data: d32}, false},
		{"unknown matching type", resolver.TLSA{Usage: 3, Selector: 1, MatchingType: 3, Data: d32}, false},
		{"SHA-256 digest too short", resolver.TLSA{Usage: 3, Selector: 1, MatchingType: 1, Data: d32[:31]}, false},
		{"SHA-256 digest too long", resolver.TLSA{Usage: 3, Selector: 1, MatchingType: 1, Data: d64}, false},
		{"SHA-512 digest of SHA-256 length", resolver.TLSA{Usage: 3, Selector: 1, MatchingType: 2, Data: d32}, false},
		{"empty full value", resolver.TLSA{Usage: 3, Selector: 0, MatchingType: 0}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Usable([]resolver.TLSA{tt.record})
			if tt.usable {
				assert.Equal(t, []resolver.TLSA{tt.record}, got)
			} else {
				assert.Empty(t, got)
			}
		})
	}
	t.Run("keeps the order of the usable ones", func(t *testing.T) {
		in := make([]resolver.TLSA, 0, len(tests))
		var want []resolver.TLSA
		for _, tt := range tests {
			in = append(in, tt.record)
			if tt.usable {
				want = append(want, tt.record)
			}
		}
		assert.Equal(t, want, Usable(in))
	})
}

func TestMatches(t *testing.T) {
	ca := peertest.NewCA(t, "dane matching CA")
	leaf := ca.Issue(t, "mx.example.test")
	other := ca.Issue(t, "mx.example.test")
	for _, selector := range []uint8{SelectorCert, SelectorSPKI} {
		for _, matching := range []uint8{MatchingFull, MatchingSHA256, MatchingSHA512} {
			r := record(UsageDANEEE, selector, matching, leaf.DER, leaf.SPKI)
			t.Run(fmt.Sprintf("3 %d %d", selector, matching), func(t *testing.T) {
				assert.True(t, Matches(r, leaf.X509), "the leaf's own record")
				assert.False(t, Matches(r, other.X509), "another leaf of the same CA")
				assert.False(t, Matches(corrupt(r), leaf.X509), "one byte off")
				assert.False(t, Matches(r, nil))
			})
		}
	}
	t.Run("an unusable record matches nothing", func(t *testing.T) {
		r := record(UsageDANEEE, SelectorSPKI, MatchingSHA256, leaf.DER, leaf.SPKI)
		r.Data = r.Data[:31]
		assert.False(t, Matches(r, leaf.X509))
	})
	t.Run("the usage is not looked at", func(t *testing.T) {
		assert.True(t, Matches(record(UsageDANETA, SelectorCert, MatchingSHA256, leaf.DER, leaf.SPKI), leaf.X509))
	})
}

func TestStrongestDigest(t *testing.T) {
	ca := peertest.NewCA(t, "dane agility CA")
	leaf := ca.Issue(t, "mx.example.test")
	sha256EE := record(UsageDANEEE, SelectorSPKI, MatchingSHA256, leaf.DER, leaf.SPKI)
	sha512EE := record(UsageDANEEE, SelectorSPKI, MatchingSHA512, leaf.DER, leaf.SPKI)
	fullEE := record(UsageDANEEE, SelectorSPKI, MatchingFull, leaf.DER, leaf.SPKI)
	certEE := record(UsageDANEEE, SelectorCert, MatchingSHA256, leaf.DER, leaf.SPKI)
	tests := []struct {
		name    string
		records []resolver.TLSA
		want    []resolver.TLSA
	}{
		{"SHA-512 wins over SHA-256", []resolver.TLSA{sha256EE, sha512EE}, []resolver.TLSA{sha512EE}},
		{"full values are always kept", []resolver.TLSA{fullEE, sha256EE, sha512EE}, []resolver.TLSA{fullEE, sha512EE}},
		{"per usage and selector", []resolver.TLSA{certEE, sha512EE}, []resolver.TLSA{certEE, sha512EE}},
		{"only SHA-256", []resolver.TLSA{sha256EE, corrupt(sha256EE)}, []resolver.TLSA{sha256EE, corrupt(sha256EE)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			assert.Equal(t, tt.want, mustVerifier(t, tt.records).Records())
		})
	}
	t.Run("a wrong SHA-512 record is not bypassed by a right SHA-256 one", func(t *testing.T) {
		v := mustVerifier(t, []resolver.TLSA{sha256EE, corrupt(sha512EE)})
		assert.ErrorIs(t, v.Verify([]*x509.Certificate{leaf.X509}), ErrNoMatch)
	})
}
