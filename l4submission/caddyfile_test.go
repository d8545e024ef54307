package l4submission

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	_ "github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile" // the Caddyfile adapter
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestUnmarshalCaddyfile(t *testing.T) {
	tests := []struct {
		name  string
		input string
		want  Handler
	}{
		{
			name:  "relay networks, with private_ranges",
			input: "smtp_submission {\n\trelay_networks 192.0.2.1 private_ranges\n\trelay_networks 2001:db8::/32\n}",
			want: Handler{RelayNetworks: append(append([]string{"192.0.2.1"},
				"192.168.0.0/16", "172.16.0.0/12", "10.0.0.0/8", "127.0.0.1/8", "fd00::/8", "::1"), "2001:db8::/32")},
		},
		{
			name: "every option",
			input: `smtp_submission {
				hostname mx.example.org
				tls {
					connection_policy {
						default_sni mx.example.org
					}
				}
				user alice $2a$14$abc
				user bob $2a$14$def
				hash argon2id
				allow_insecure_auth
				relay_networks 10.1.0.0/16
				max_message_size 10MiB
				max_recipients 50
				max_line_length 2000
				max_connections 200
				max_connections_per_ip 10
				read_timeout 2m
				write_timeout 30s
			}`,
			want: Handler{
				Hostname:            "mx.example.org",
				Users:               []User{{"alice", "$2a$14$abc"}, {"bob", "$2a$14$def"}},
				HashRaw:             json.RawMessage(`{"algorithm":"argon2id"}`),
				AllowInsecureAuth:   true,
				RelayNetworks:       []string{"10.1.0.0/16"},
				MaxMessageSize:      10 << 20,
				MaxRecipients:       50,
				MaxLineLength:       2000,
				MaxConnections:      200,
				MaxConnectionsPerIP: 10,
				ReadTimeout:         caddy.Duration(2 * time.Minute),
				WriteTimeout:        caddy.Duration(30 * time.Second),
			},
		},
		{
			name:  "tls without a block",
			input: "smtp_submission {\n\ttls\n\trelay_networks 127.0.0.1\n}",
			want:  Handler{TLS: &TLS{}, RelayNetworks: []string{"127.0.0.1"}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var h Handler
			require.NoError(t, h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tt.input)))
			if tt.name == "every option" {
				require.NotNil(t, h.TLS)
				require.Len(t, h.TLS.ConnectionPolicies, 1)
				assert.Equal(t, "mx.example.org", h.TLS.ConnectionPolicies[0].DefaultSNI)
				h.TLS = nil
			}
			assert.Equal(t, tt.want, h)
		})
	}
}

func TestUnmarshalCaddyfileErrors(t *testing.T) {
	tests := []struct {
		name, input, want string
	}{
		{"same-line argument", "smtp_submission 127.0.0.1", "wrong argument count"},
		{"unknown option", "smtp_submission {\n\tnope 1\n}", "unrecognized smtp_submission option 'nope'"},
		{"user without a hash", "smtp_submission {\n\tuser alice\n}", "wrong argument count"},
		{"unknown hash", "smtp_submission {\n\thash md5\n}", `unknown hash algorithm "md5"`},
		{"bad size", "smtp_submission {\n\tmax_message_size lots\n}", `bad size "lots"`},
		{"bad number", "smtp_submission {\n\tmax_recipients many\n}", `bad number "many"`},
		{"bad line length", "smtp_submission {\n\tmax_line_length long\n}", `max_line_length: bad number "long"`},
		{"bad connection limit", "smtp_submission {\n\tmax_connections lots\n}", `max_connections: bad number "lots"`},
		{"bad per-client limit", "smtp_submission {\n\tmax_connections_per_ip 1.5\n}", `max_connections_per_ip: bad number "1.5"`},
		{"connection limit without a number", "smtp_submission {\n\tmax_connections\n}", "wrong argument count"},
		{"bad duration", "smtp_submission {\n\tread_timeout soon\n}", `bad duration "soon"`},
		{"extra argument", "smtp_submission {\n\thostname a b\n}", "wrong argument count"},
		{"relay_networks without networks", "smtp_submission {\n\trelay_networks\n}", "wrong argument count"},
		{"unknown tls option", "smtp_submission {\n\ttls {\n\t\tcert x\n\t}\n}", "unrecognized tls option 'cert'"},
		{"block under an option", "smtp_submission {\n\thostname a {\n\t\tb\n\t}\n}", "blocks are not supported"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var h Handler
			err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tt.input))
			require.Error(t, err)
			assert.Contains(t, err.Error(), tt.want)
		})
	}
}

// TestCaddyfileAdapt adapts a whole Caddyfile, with the handler on a
// layer4 route, as `caddy adapt` does.
func TestCaddyfileAdapt(t *testing.T) {
	const input = `{
	layer4 {
		127.0.0.1:5587 {
			route {
				smtp_submission {
					hostname mx.example.org
					tls
					user alice $2a$14$abc
					relay_networks 127.0.0.1/32
					max_message_size 1MiB
					max_line_length 4000
					max_connections_per_ip 20
				}
			}
		}
	}
}
`
	out, warnings, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(input), nil)
	require.NoError(t, err)
	assert.Empty(t, warnings)
	var cfg struct {
		Apps struct {
			Layer4 struct {
				Servers map[string]struct {
					Listen []string `json:"listen"`
					Routes []struct {
						Handle []json.RawMessage `json:"handle"`
					} `json:"routes"`
				} `json:"servers"`
			} `json:"layer4"`
		} `json:"apps"`
	}
	require.NoError(t, json.Unmarshal(out, &cfg), string(out))
	require.Len(t, cfg.Apps.Layer4.Servers, 1, string(out))
	for _, srv := range cfg.Apps.Layer4.Servers {
		assert.Equal(t, []string{"127.0.0.1:5587"}, srv.Listen)
		require.Len(t, srv.Routes, 1)
		require.Len(t, srv.Routes[0].Handle, 1)
		assert.JSONEq(t, `{
			"handler": "smtp_submission",
			"hostname": "mx.example.org",
			"tls": {},
			"users": [{"username": "alice", "password": "$2a$14$abc"}],
			"relay_networks": ["127.0.0.1/32"],
			"max_message_size": 1048576,
			"max_line_length": 4000,
			"max_connections_per_ip": 20
		}`, string(srv.Routes[0].Handle[0]))
	}
}
