package caddysmtp

import (
	"testing"

	"github.com/stretchr/testify/assert"
)

// TestChooseDKIM: dkim_sign's "from" names the From domain only when it
// has a signer, so a relay for many domains signs those it has keys for
// and passes the rest unsigned (and without a warning per message);
// explicit domains and rules are followed.
func TestChooseDKIM(t *testing.T) {
	app := provisioned(t, `{"dkim": [{"domain": "example.org"}, {"domain": "lists.example.org"}],
		"dkim_sign": [{"if": "sender_domain == 'lists.example.org'", "then": ["lists.example.org", "from"]}, {"else": ["from"]}]}`)
	tests := []struct {
		from, mailFrom string
		want           []string
	}{
		{"example.org", "a@example.org", []string{"example.org"}},
		{"EXAMPLE.ORG", "a@example.org", []string{"example.org"}},
		{"other.example", "a@other.example", []string{}},
		{"other.example", "bounce@lists.example.org", []string{"lists.example.org"}},
		{"example.org", "bounce@lists.example.org", []string{"lists.example.org", "example.org"}},
		{"", "a@example.org", []string{}},
	}
	for _, tt := range tests {
		assert.Equal(t, tt.want, app.chooseDKIM(tt.from, tt.mailFrom), "From %q, MAIL FROM %q", tt.from, tt.mailFrom)
	}
}
