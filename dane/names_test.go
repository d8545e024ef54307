package dane

import (
	"crypto/x509"
	"crypto/x509/pkix"
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestMatchName(t *testing.T) {
	tests := []struct {
		pattern, name string
		want          bool
	}{
		{"mx.example.com", "mx.example.com", true},
		{"MX.Example.COM", "mx.example.com.", true},
		{"mx.example.com.", "MX.EXAMPLE.COM", true},
		{"mx.example.com", "mx2.example.com", false},
		{"mx.example.com", "example.com", false},
		{"*.example.com", "mx.example.com", true},
		{"*.example.com", "MX.example.com.", true},
		{"*.example.com", "example.com", false},
		{"*.example.com", "a.mx.example.com", false},
		{"*.example.com", ".example.com", false},
		{"mx*.example.com", "mx1.example.com", false},
		{"*.*.example.com", "a.b.example.com", false},
		{"*", "com", false},
		{"*.", "com", false},
		{"", "", false},
		{"mx.example.com", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.pattern+" vs "+tt.name, func(t *testing.T) {
			assert.Equal(t, tt.want, matchName(tt.pattern, tt.name))
		})
	}
}

func TestCertNames(t *testing.T) {
	tests := []struct {
		name string
		cert *x509.Certificate
		want []string
	}{
		{"SANs only, the CN is ignored", &x509.Certificate{DNSNames: []string{"a.example", "b.example"}, Subject: pkix.Name{CommonName: "cn.example"}}, []string{"a.example", "b.example"}},
		{"no SANs: the CN", &x509.Certificate{Subject: pkix.Name{CommonName: "cn.example"}}, []string{"cn.example"}},
		{"neither", &x509.Certificate{}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			assert.Equal(t, tt.want, certNames(tt.cert))
		})
	}
}
