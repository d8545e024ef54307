package l4submission

import (
	"encoding/json"
	"fmt"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/seed7b014b84/caddy-smtp/internal/peertest"
)

// TestProvisionErrors loads configs that Caddy must refuse, and checks that
// the error names the field and says why.
func TestProvisionErrors(t *testing.T) {
	tests := []struct {
		name    string
		handler string
		want    []string
	}{
		{
			name:    "open relay",
			handler: `{"handler": "smtp_submission"}`,
			want:    []string{"neither users nor relay_networks is set", "open relay", `"relay_networks": ["127.0.0.1/32", "::1/128"]`},
		},
		{
			name:    "users without TLS",
			handler: `{"handler": "smtp_submission", "users": [{"username": "a", "password": "$2a$04$x"}]}`,
			want:    []string{"users: AUTH is offered only after STARTTLS, and tls is not set", "allow_insecure_auth"},
		},
		{
			name:    "bad relay network",
			handler: `{"handler": "smtp_submission", "relay_networks": ["10.0.0.300/8"]}`,
			want:    []string{`relay_networks: "10.0.0.300/8"`},
		},
		{
			name:    "not an address",
			handler: `{"handler": "smtp_submission", "relay_networks": ["localhost"]}`,
			want:    []string{`relay_networks: "localhost": neither a CIDR range nor an IP address`},
		},
		{
			name:    "password neither hashed nor base64",
			handler: `{"handler": "smtp_submission", "allow_insecure_auth": true, "users": [{"username": "a", "password": "plain text"}]}`,
			want:    []string{`users[0]: password of "a": not in Modular Crypt Format and not base64`},
		},
		{
			name: "same user twice",
			handler: `{"handler": "smtp_submission", "allow_insecure_auth": true,
				"users": [{"username": "a", "password": "$2a$04$x"}, {"username": "a", "password": "$2a$04$y"}]}`,
			want: []string{`users[1]: username "a" is not unique`},
		},
		{
			name:    "user without a password",
			handler: `{"handler": "smtp_submission", "allow_insecure_auth": true, "users": [{"username": "a"}]}`,
			want:    []string{"users[0]: username and password are required"},
		},
		{
			name:    "unknown hash",
			handler: `{"handler": "smtp_submission", "allow_insecure_auth": true, "hash": {"algorithm": "md5"}, "users": [{"username": "a", "password": "$1$x"}]}`,
			want:    []string{"hash: loading the password hash module", "md5"},
		},
		{
			name:    "every address may relay",
			handler: `{"handler": "smtp_submission", "relay_networks": ["127.0.0.1", "0.0.0.0/0"]}`,
			want:    []string{`relay_networks: "0.0.0.0/0": a range shorter than /8 would make an open relay`},
		},
		{
			name:    "every IPv6 address may relay",
			handler: `{"handler": "smtp_submission", "relay_networks": ["::/0"]}`,
			want:    []string{`relay_networks: "::/0": a range shorter than /32 would make an open relay`},
		},
		{
			name:    "negative line length",
			handler: `{"handler": "smtp_submission", "relay_networks": ["127.0.0.1"], "max_line_length": -1}`,
			want:    []string{"max_line_length: -1 is negative"},
		},
		{
			name:    "negative connection limit",
			handler: `{"handler": "smtp_submission", "relay_networks": ["127.0.0.1"], "max_connections_per_ip": -5}`,
			want:    []string{"max_connections_per_ip: -5 is negative"},
		},
		{
			name:    "negative size",
			handler: `{"handler": "smtp_submission", "relay_networks": ["127.0.0.1"], "max_message_size": -1}`,
			want:    []string{"max_message_size: -1 is negative"},
		},
		{
			name:    "negative timeout",
			handler: `{"handler": "smtp_submission", "relay_networks": ["127.0.0.1"], "read_timeout": "-1s"}`,
			want:    []string{"read_timeout: -1s is negative"},
		},
	}
	port := peertest.FreePort(t)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			require.True(t, json.Valid([]byte(tt.handler)))
			cfg := fmt.Sprintf(`{
				"admin": {"disabled": true},
				"apps": {
					"smtp": {"hostname": "relay.test"},
					"layer4": {"servers": {"s": {"listen": ["127.0.0.1:%d"], "routes": [{"handle": [%s]}]}}}
				}
			}`, port, tt.handler)
			err := caddy.Load([]byte(cfg), true)
			if err == nil {
				_ = caddy.Stop()
			}
			require.Error(t, err)
			assert.Contains(t, err.Error(), "layer4.handlers.smtp_submission")
			for _, w := range tt.want {
				assert.Contains(t, err.Error(), w)
			}
		})
	}
}
