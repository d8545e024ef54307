package mtasts

import (
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestMatches(t *testing.T) {
	p := &Policy{MX: []string{"mx1.example.org", "*.example.com"}}
	tests := []struct {
		host string
		want bool
	}{
		{"mx1.example.org", true},
		{"MX1.Example.ORG", true},
		{"mx1.example.org.", true},
		{"mx2.example.org", false},
		{"example.org", false},
		{"a.mx1.example.org", false},
		{"mx.example.com", true},
		{"MX.EXAMPLE.COM.", true},
		{"a.b.example.com", false},
		{"example.com", false},
		{".example.com", false},
		{"mxexample.com", false},
		{"mx.example.com.evil.test", false},
		{"", false},
		{".", false},
	}
	for _, tt := range tests {
		t.Run(tt.host, func(t *testing.T) {
			assert.Equal(t, tt.want, p.Matches(tt.host))
		})
	}
	t.Run("nil policy", func(t *testing.T) {
		assert.False(t, (*Policy)(nil).Matches("mx.example.com"))
	})
	t.Run("pattern case ignored", func(t *testing.T) {
		assert.True(t, (&Policy{MX: []string{"*.Example.COM"}}).Matches("mx.example.com"))
	})
}
