package caddysmtp

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig"
	_ "github.com/caddyserver/caddy/v2/modules/standard" // the examples use the http app and basic_auth
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

var update = flag.Bool("update", false, "rewrite the golden JSON files from the Caddyfiles")

// adapt runs the Caddyfile adapter as `caddy adapt --pretty` does.
func adapt(t *testing.T, path string) ([]byte, error) {
	t.Helper()
	body, err := os.ReadFile(path)
	require.NoError(t, err)
	out, warnings, err := caddyconfig.GetAdapter("caddyfile").Adapt(body, map[string]any{"filename": path})
	if err != nil {
		return nil, err
	}
	assert.Empty(t, warnings, "adapting %s", path)
	var pretty bytes.Buffer
	require.NoError(t, json.Indent(&pretty, out, "", "\t"))
	pretty.WriteByte('\n')
	return pretty.Bytes(), nil
}

// TestCaddyfileGolden checks that every Caddyfile in examples/ and
// testdata/caddyfile/ adapts to exactly the JSON beside it, and that the
// JSON loads (Provision and Validate). Run with -update to rewrite them.
func TestCaddyfileGolden(t *testing.T) {
	t.Setenv("SMTP_HOSTNAME", "mx.example.org")
	t.Setenv("SMTP_RELAY_SECRET", "s3cret")
	t.Setenv("SMTP_QUEUE_URL", "postgres://caddy:secret@db.example.org/mail")
	pairs := map[string]string{"examples/Caddyfile": "examples/caddy.json"}
	for _, glob := range []string{"examples/reference/*.caddyfile", "testdata/caddyfile/*.caddyfile"} {
		files, err := filepath.Glob(glob)
		require.NoError(t, err)
		for _, f := range files {
			pairs[f] = f[:len(f)-len(".caddyfile")] + ".json"
		}
	}
	require.GreaterOrEqual(t, len(pairs), 10)
	for caddyfile, golden := range pairs {
		t.Run(caddyfile, func(t *testing.T) {
			got, err := adapt(t, caddyfile)
			require.NoError(t, err)
			if *update {
				require.NoError(t, os.WriteFile(golden, got, 0o644))
			}
			want, err := os.ReadFile(golden)
			require.NoError(t, err, "golden file (run go test -update to write it)")
			assert.Equal(t, string(want), string(got))

			var cfg struct {
				Apps map[string]json.RawMessage `json:"apps"`
			}
			require.NoError(t, json.Unmarshal(got, &cfg))
			require.NoError(t, validate(t, string(cfg.Apps["smtp"])))
		})
	}
}

// TestCaddyfileErrors checks that bad Caddyfiles fail with the file and line
// of the fault and a message naming the option.
func TestCaddyfileErrors(t *testing.T) {
	tests := []struct {
		name string
		body string
		line string
		want string
	}{
		{"unknown option", "smtp {\n\thostnam x\n}", ":3", `unknown smtp option "hostnam"`},
		{"unknown strategy", "smtp {\n\tip_strategy both\n}", ":3", `unknown ip_strategy "both"`},
		{"strategy twice", "smtp {\n\tip_strategy ipv4_only\n\tip_strategy ipv6_only\n}", ":4", "ip_strategy is given twice"},
		{"value and block", "smtp {\n\tip_strategy ipv4_only {\n\t\telse ipv6_only\n\t}\n}", ":", "not both"},
		{"rules without else", "smtp {\n\tip_strategy {\n\t\tif \"retry_num == 0\" ipv6_only\n\t}\n}", ":", "no else"},
		{"else not last", "smtp {\n\tip_strategy {\n\t\telse ipv4_only\n\t\tif \"true\" ipv6_only\n\t}\n}", ":5", "else must be the last rule"},
		{"bad rule keyword", "smtp {\n\tip_strategy {\n\t\twhen \"true\" ipv6_only\n\t\telse ipv4_only\n\t}\n}", ":4", `starts with if or else, not "when"`},
		{"CEL error", "smtp {\n\tip_strategy {\n\t\tif \"retry_num = 0\" ipv6_only\n\t\telse ipv4_only\n\t}\n}", ":4", `"retry_num = 0"`},
		{"if without value", "smtp {\n\tnext_hop {\n\t\tif \"true\"\n\t\telse false\n\t}\n}", ":4", "if needs a condition and a value"},
		{"v6 under v4", "smtp {\n\tsource_ip {\n\t\tv4 2001:db8::1\n\t}\n}", ":4", "not an IPv4 address"},
		{"bad port", "smtp {\n\tremote r {\n\t\taddress a.example\n\t\tport twenty\n\t}\n}", ":5", `"twenty" is not a whole number`},
		{"bad protocol", "smtp {\n\tremote r {\n\t\tprotocol smtps\n\t}\n}", ":4", `unknown protocol "smtps"`},
		{"unknown remote option", "smtp {\n\tremote r {\n\t\thost a.example\n\t}\n}", ":4", `unknown remote option "host"`},
		{"remote twice", "smtp {\n\tremote r {\n\t\taddress a.example\n\t}\n\tremote r {\n\t\taddress b.example\n\t}\n}", ":6", `remote "r" is defined twice`},
		{"auth one arg", "smtp {\n\tremote r {\n\t\tauth user\n\t}\n}", ":4", "auth takes <username> <secret>"},
		{"bad duration", "smtp {\n\ttimeouts {\n\t\tconnect 5minutes\n\t}\n}", ":4", "not a duration"},
		{"unknown timeout", "smtp {\n\ttimeouts {\n\t\tquit 1m\n\t}\n}", ":4", `unknown timeout "quit"`},
		{"bad tls mode", "smtp {\n\ttls {\n\t\tdane on\n\t}\n}", ":4", `unknown TLS mode "on"`},
		{"bad bool", "smtp {\n\ttls {\n\t\tallow_invalid_certs yes\n\t}\n}", ":4", `"yes" is not true or false`},
		{"bad limit", "smtp {\n\tlimits {\n\t\tmx many\n\t}\n}", ":4", "not a whole number"},
		{"bad fallback_delay", "smtp {\n\tfallback_delay soon\n}", ":3", "want a duration such as 250ms, or off"},
		{"bad source line", "smtp {\n\tsource_ip {\n\t\tv4 {\n\t\t\t192.0.2.1 helo a.example\n\t\t}\n\t}\n}", ":5", "<address> [ehlo <name>]"},
		{"v6 source in v4 block", "smtp {\n\tsource_ip {\n\t\tv4 {\n\t\t\t2001:db8::1 ehlo a.example\n\t\t}\n\t}\n}", ":5", "not an IPv4 address"},
		{"option twice", "smtp {\n}\n\tsmtp {\n}", ":", "given twice"},
		{"resolver unknown option", "smtp {\n\tresolver {\n\t\tretries 3\n\t}\n}", ":4", `unknown resolver option "retries"`},
		{"resolver bad timeout", "smtp {\n\tresolver {\n\t\ttimeout soon\n\t}\n}", ":4", "not a duration"},
		{"resolver cache option", "smtp {\n\tresolver {\n\t\tcache {\n\t\t\tentries 5\n\t\t}\n\t}\n}", ":5", `unknown resolver cache option "entries"`},
		{"resolver twice", "smtp {\n\tresolver system\n\tresolver system\n}", ":4", "resolver is given twice"},
		{"queue unknown option", "smtp {\n\tqueue {\n\t\tretries 5m\n\t}\n}", ":4", `unknown queue option "retries"`},
		{"queue bad retry", "smtp {\n\tqueue {\n\t\tretry 5m soon\n\t}\n}", ":4", `"soon" is not a duration`},
		{"queue bad size", "smtp {\n\tqueue {\n\t\tmax_size lots\n\t}\n}", ":4", `"lots" is not a size`},
		{"queue twice", "smtp {\n\tqueue {\n\t}\n\tqueue {\n\t}\n}", ":5", "queue is given twice"},
		{"unknown store", "smtp {\n\tqueue {\n\t\tstore redis\n\t}\n}", ":4", "smtp.queue.stores.redis"},
		{"postgres unknown option", "smtp {\n\tqueue {\n\t\tstore postgres {\n\t\t\tdsn x\n\t\t}\n\t}\n}", ":5", `unknown postgres store option "dsn"`},
		{"bad dsn mode", "smtp {\n\tqueue {\n\t\tdsn always\n\t}\n}", ":4", `unknown dsn mode "always"`},
		{"dkim without domain", "smtp {\n\tdkim {\n\t\tselector s1\n\t}\n}", ":3", "dkim needs a domain"},
		{"dkim unknown option", "smtp {\n\tdkim example.org {\n\t\tsel s1\n\t}\n}", ":4", `unknown dkim option "sel"`},
		{"dkim headers empty", "smtp {\n\tdkim example.org {\n\t\theaders\n\t}\n}", ":4", "wrong argument count"},
		{"dkim unknown provider", "smtp {\n\tdkim example.org {\n\t\tpublish nodns\n\t}\n}", ":4", "dns.providers.nodns"},
		{"queue retry twice", "smtp {\n\tqueue {\n\t\tretry 1m\n\t\tretry 2m\n\t}\n}", ":5", "retry is given twice"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "Caddyfile")
			require.NoError(t, os.WriteFile(path, []byte("{\n"+tt.body+"\n}\n"), 0o644))
			var err error
			require.NotPanics(t, func() { _, err = adapt(t, path) })
			require.Error(t, err)
			assert.Contains(t, err.Error(), path+tt.line)
			assert.Contains(t, err.Error(), tt.want)
		})
	}
}
