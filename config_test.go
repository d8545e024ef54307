package caddysmtp

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/seed7b014b84/caddy-smtp/rules"
	"github.com/seed7b014b84/caddy-smtp/strategy"
	"github.com/seed7b014b84/caddy-smtp/transport"
)

// validate loads raw as the smtp app's config the way Caddy does (strict
// decoding, Provision, Validate) without starting anything.
func validate(t *testing.T, raw string) error {
	t.Helper()
	cfg := &caddy.Config{
		Admin:   &caddy.AdminConfig{Disabled: true},
		AppsRaw: caddy.ModuleMap{"smtp": json.RawMessage(raw)},
	}
	return caddy.Validate(cfg)
}

// provisioned returns the app provisioned from raw.
func provisioned(t testing.TB, raw string) *App {
	t.Helper()
	// As Caddy provisions it, in a context with a config (storage, other
	// apps), without starting it.
	ctx, err := caddy.ProvisionContext(&caddy.Config{
		Admin:      &caddy.AdminConfig{Disabled: true},
		StorageRaw: json.RawMessage(fmt.Sprintf(`{"module": "file_system", "root": %q}`, t.TempDir())),
		AppsRaw:    caddy.ModuleMap{"smtp": json.RawMessage(raw)},
	})
	require.NoError(t, err)
	appIface, err := ctx.App("smtp")
	require.NoError(t, err)
	app := appIface.(*App)
	t.Cleanup(func() { _ = app.Cleanup() })
	return app
}

func TestDefaults(t *testing.T) {
	app := provisioned(t, `{}`)
	v := &rules.Vars{}

	host, err := app.Hostname.Eval(v)
	require.NoError(t, err)
	assert.NotEmpty(t, host)

	hop, err := app.NextHop.Eval(v)
	require.NoError(t, err)
	assert.Equal(t, MX, hop)

	ips, err := app.IPStrategy.Eval(v)
	require.NoError(t, err)
	assert.Equal(t, strategy.IPv4ThenIPv6, ips)

	fd, err := app.FallbackDelay.Eval(v)
	require.NoError(t, err)
	assert.Equal(t, 250*time.Millisecond, time.Duration(fd))

	mx, _ := app.Limits.MX.Eval(v)
	multi, _ := app.Limits.Multihomed.Eval(v)
	assert.Equal(t, 7, mx)
	assert.Equal(t, 2, multi)

	want := map[string]time.Duration{
		"connect": 30 * time.Second, "greeting": 5 * time.Minute, "tls": time.Minute,
		"ehlo": 5 * time.Minute, "mail_from": 5 * time.Minute, "rcpt_to": 5 * time.Minute,
		"data": 10 * time.Minute, "mta_sts": time.Minute,
	}
	for _, tm := range app.timeoutSettings() {
		d, err := tm.setting.Eval(v)
		require.NoError(t, err)
		assert.Equal(t, want[tm.key], time.Duration(d), tm.key)
	}
	for _, m := range []*rules.Setting[transport.TLSMode]{&app.TLS.StartTLS, &app.TLS.MTASTS, &app.TLS.DANE} {
		mode, err := m.Eval(v)
		require.NoError(t, err)
		assert.Equal(t, transport.TLSOptional, mode)
	}
	invalid, _ := app.TLS.AllowInvalidCerts.Eval(v)
	assert.False(t, invalid)
	v4, _ := app.SourceIP.V4.Eval(v)
	assert.Empty(t, v4)
}

func TestRemoteDefaults(t *testing.T) {
	app := provisioned(t, `{"remotes": {
		"relay": {"address": "relay.example.net"},
		"smtps": {"address": "relay.example.net", "tls": {"implicit": true}},
		"store": {"address": "127.0.0.1", "protocol": "LMTP"}
	}}`)
	assert.Equal(t, 25, app.Remotes["relay"].Port)
	assert.Equal(t, transport.SMTP, app.Remotes["relay"].Protocol)
	assert.Equal(t, 10, app.Remotes["relay"].Concurrency)
	assert.Equal(t, 465, app.Remotes["smtps"].Port)
	assert.Equal(t, 24, app.Remotes["store"].Port)
	assert.Equal(t, transport.LMTP, app.Remotes["store"].Protocol)
}

func TestPlaceholders(t *testing.T) {
	t.Setenv("SMTP_TEST_HOST", "out.example.org")
	t.Setenv("SMTP_TEST_SECRET", "s3cret")
	app := provisioned(t, `{
		"hostname": "{env.SMTP_TEST_HOST}",
		"remotes": {"relay": {"address": "relay.example.net",
			"auth": {"username": "u", "secret": "{env.SMTP_TEST_SECRET}"}}}
	}`)
	host, _ := app.Hostname.Eval(&rules.Vars{})
	assert.Equal(t, "out.example.org", host)
	assert.Equal(t, "s3cret", app.Remotes["relay"].Auth.Secret)
}

func TestRuleListsEvaluate(t *testing.T) {
	app := provisioned(t, `{
		"lists": {"domains": ["foobar.net", "foobar.org"]},
		"remotes": {"lmtp": {"address": "localhost", "protocol": "lmtp"}},
		"next_hop": [{"if": "rcpt-domain", "in_list": "list/domains", "then": "lmtp"}, {"else": false}],
		"ip_strategy": [{"if": "retry_num == 0", "then": "ipv6_only"}, {"else": "ipv4-only"}],
		"timeouts": {"data": [{"if": "size > 10000000", "then": "30m"}, {"else": "10m"}]},
		"source_ip": {"v4": [{"if": "rcpt_domain in lists.domains", "then": ["127.0.0.2"]}, {"else": ["127.0.0.3", {"address": "127.0.0.4", "ehlo": "out4.example.org"}]}]}
	}`)
	tests := []struct {
		name     string
		vars     rules.Vars
		hop      NextHop
		strategy strategy.IPStrategy
		data     time.Duration
		sources  []strategy.Source
	}{
		{"first attempt, local domain", rules.Vars{RcptDomain: "foobar.net"}, "lmtp", strategy.IPv6Only, 10 * time.Minute, []strategy.Source{{Address: "127.0.0.2"}}},
		{"retry, other domain, big", rules.Vars{RetryNum: 1, RcptDomain: "example.com", Size: 20_000_000}, MX, strategy.IPv4Only, 30 * time.Minute,
			[]strategy.Source{{Address: "127.0.0.3"}, {Address: "127.0.0.4", EHLO: "out4.example.org"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			hop, err := app.NextHop.Eval(&tt.vars)
			require.NoError(t, err)
			assert.Equal(t, tt.hop, hop)
			s, err := app.IPStrategy.Eval(&tt.vars)
			require.NoError(t, err)
			assert.Equal(t, tt.strategy, s)
			d, err := app.Timeouts.Data.Eval(&tt.vars)
			require.NoError(t, err)
			assert.Equal(t, tt.data, time.Duration(d))
			src, err := app.SourceIP.V4.Eval(&tt.vars)
			require.NoError(t, err)
			assert.Equal(t, tt.sources, src)
		})
	}
}

// TestInvalidConfigs loads each bad config as Caddy would and checks that
// it fails with a message naming the key, without a panic.
func TestInvalidConfigs(t *testing.T) {
	tests := []struct {
		name string
		json string
		want []string // all must appear in the error
	}{
		{"unknown top-level key", `{"hostnme": "x"}`, []string{"hostnme: unknown key"}},
		{"unknown nested key", `{"remotes": {"r": {"address": "a.example", "tls": {"implicitt": true}}}}`, []string{"remotes.r.tls.implicitt: unknown key"}},
		{"unknown key in rule", `{"ip_strategy": [{"if": "true", "than": "ipv4_only"}, {"else": "ipv4_only"}]}`, []string{"ip_strategy[0].than: unknown key"}},
		{"unknown timeout", `{"timeouts": {"quit": "1m"}}`, []string{"timeouts.quit: unknown key"}},
		{"v6 address under v4", `{"source_ip": {"v4": ["192.0.2.10", "2001:db8::1"]}}`, []string{"source_ip.v4[1]", "2001:db8::1", "IPv6"}},
		{"v4 address under v6", `{"source_ip": {"v6": ["192.0.2.10"]}}`, []string{"source_ip.v6[0]", "IPv4"}},
		{"mapped v4 under v6", `{"source_ip": {"v6": ["::ffff:192.0.2.10"]}}`, []string{"source_ip.v6[0]", "IPv4-mapped"}},
		{"not an address", `{"source_ip": {"v4": ["mx.example.org"]}}`, []string{"source_ip.v4[0]", "not an IP address"}},
		{"v6 under v4 in a rule", `{"source_ip": {"v4": [{"if": "true", "then": ["::1"]}, {"else": []}]}}`, []string{"source_ip.v4[0].then[0]", "IPv6"}},
		{"bad per-source ehlo", `{"source_ip": {"v4": [{"address": "192.0.2.1", "ehlo": "bad name"}]}}`, []string{"source_ip.v4[0].ehlo"}},
		{"next_hop names no remote", `{"next_hop": "relay"}`, []string{"next_hop", `no remote named "relay"`}},
		{"next_hop rule names no remote", `{"remotes": {"a": {"address": "a.example"}}, "next_hop": [{"if": "true", "then": "b"}, {"else": false}]}`, []string{"next_hop[0].then", `no remote named "b"`, "remotes: a"}},
		{"next_hop true", `{"next_hop": true}`, []string{"next_hop", "remote's name or false"}},
		{"unknown strategy", `{"ip_strategy": "ipv5_only"}`, []string{"ip_strategy", `unknown ip_strategy "ipv5_only"`}},
		{"unknown strategy in rule", `{"ip_strategy": [{"if": "true", "then": "both"}, {"else": "ipv4_only"}]}`, []string{"ip_strategy[0].then", "unknown ip_strategy"}},
		{"unknown protocol", `{"remotes": {"r": {"address": "a.example", "protocol": "smtps"}}}`, []string{"remotes.r.protocol", `unknown protocol "smtps"`}},
		{"port out of range", `{"remotes": {"r": {"address": "a.example", "port": 70000}}}`, []string{"remotes.r.port", "70000", "1-65535"}},
		{"negative port", `{"remotes": {"r": {"address": "a.example", "port": -1}}}`, []string{"remotes.r.port", "-1"}},
		{"remote without address", `{"remotes": {"r": {"port": 25}}}`, []string{"remotes.r.address: required"}},
		{"remote bad address", `{"remotes": {"r": {"address": "not a host"}}}`, []string{"remotes.r.address"}},
		{"remote null", `{"remotes": {"r": null}}`, []string{"remotes.r: empty remote"}},
		{"concurrency below 1", `{"remotes": {"r": {"address": "a.example", "concurrency": -2}}}`, []string{"remotes.r.concurrency", "below 1"}},
		{"auth without secret", `{"remotes": {"r": {"address": "a.example", "auth": {"username": "u"}}}}`, []string{"remotes.r.auth.secret: required"}},
		{"auth with unset env", `{"remotes": {"r": {"address": "a.example", "auth": {"username": "u", "secret": "{env.SMTP_TEST_SURELY_UNSET}"}}}}`, []string{"remotes.r.auth.secret"}},
		{"mx limit 0", `{"limits": {"mx": 0}}`, []string{"limits.mx", "below 1"}},
		{"multihomed limit negative", `{"limits": {"multihomed": -1}}`, []string{"limits.multihomed", "below 1"}},
		{"limit in rule below 1", `{"limits": {"mx": [{"if": "retry_num > 3", "then": 0}, {"else": 5}]}}`, []string{"limits.mx[0].then", "below 1"}},
		{"limit not a number", `{"limits": {"mx": "seven"}}`, []string{"limits.mx", "want an integer"}},
		{"rule list without else", `{"ip_strategy": [{"if": "retry_num == 0", "then": "ipv6_only"}]}`, []string{"ip_strategy", "no else"}},
		{"else not last", `{"ip_strategy": [{"else": "ipv4_only"}, {"if": "true", "then": "ipv6_only"}]}`, []string{"ip_strategy[0]", "else must be the last"}},
		{"if without then", `{"ip_strategy": [{"if": "true"}, {"else": "ipv4_only"}]}`, []string{"ip_strategy[0].then"}},
		{"empty rule list", `{"hostname": []}`, []string{"hostname"}},
		{"CEL syntax error", `{"ip_strategy": [{"if": "retry_num = 0", "then": "ipv6_only"}, {"else": "ipv4_only"}]}`, []string{"ip_strategy[0].if", `"retry_num = 0"`, "Syntax error"}},
		{"CEL unknown variable", `{"next_hop": [{"if": "rcpt_domian == 'x'", "then": false}, {"else": false}]}`, []string{"next_hop[0].if", "rcpt_domian", "undeclared reference"}},
		{"CEL not bool", `{"limits": {"mx": [{"if": "retry_num + 1", "then": 3}, {"else": 5}]}}`, []string{"limits.mx[0].if", "not bool"}},
		{"CEL type mismatch", `{"hostname": [{"if": "retry_num == 'zero'", "then": "a.example"}, {"else": "b.example"}]}`, []string{"hostname[0].if", "no matching overload"}},
		{"in_list unknown list", `{"next_hop": [{"if": "rcpt_domain", "in_list": "list/nope", "then": false}, {"else": false}]}`, []string{"next_hop[0].in_list", `no list named "nope"`}},
		{"in_list not a variable", `{"next_hop": [{"if": "rcpt_domain == 'x'", "in_list": "d", "then": false}, {"else": false}], "lists": {"d": []}}`, []string{"next_hop[0].in_list", "must name a variable"}},
		{"fallback_delay zero", `{"fallback_delay": "0s"}`, []string{"fallback_delay", "zero"}},
		{"fallback_delay word", `{"fallback_delay": "never"}`, []string{"fallback_delay", "want a duration"}},
		{"fallback_delay in rule", `{"fallback_delay": [{"if": "retry_num > 0", "then": "soon"}, {"else": "off"}]}`, []string{"fallback_delay[0].then"}},
		{"source unknown key", `{"source_ip": {"v4": [{"address": "192.0.2.1", "helo": "a.example"}]}}`, []string{"source_ip.v4[0]", "helo"}},
		{"pool max_messages", `{"pool": {"max_messages": -1}}`, []string{"pool.max_messages", "below 1"}},
		{"pool idle_timeout", `{"pool": {"idle_timeout": "-5s"}}`, []string{"pool.idle_timeout"}},
		{"pool unknown key", `{"pool": {"size": 5}}`, []string{"pool.size: unknown key"}},
		{"bad duration", `{"timeouts": {"connect": "5 minutes"}}`, []string{"timeouts.connect", "duration"}},
		{"zero duration", `{"timeouts": {"greeting": "0s"}}`, []string{"timeouts.greeting", "not a positive duration"}},
		{"negative duration in rule", `{"timeouts": {"data": [{"if": "true", "then": "-1m"}, {"else": "1m"}]}}`, []string{"timeouts.data[0].then", "not a positive"}},
		{"unknown tls mode", `{"tls": {"starttls": "always"}}`, []string{"tls.starttls", `unknown TLS mode "always"`}},
		{"unknown dane mode", `{"tls": {"dane": "on"}}`, []string{"tls.dane", "unknown TLS mode"}},
		{"allow_invalid_certs not bool", `{"tls": {"allow_invalid_certs": "yes"}}`, []string{"tls.allow_invalid_certs", "want true or false"}},
		{"bad hostname", `{"hostname": "mx example org"}`, []string{"hostname", "not a host name"}},
		{"hostname rule bad value", `{"hostname": [{"if": "true", "then": "-bad-"}, {"else": "ok.example"}]}`, []string{"hostname[0].then"}},
		{"lists not strings", `{"lists": {"d": [1, 2]}}`, []string{"lists.d[0]", "want a string"}},
		{"list empty entry", `{"lists": {"d": [""]}}`, []string{"lists.d[0]: empty entry"}},
		{"remote named false", `{"remotes": {"false": {"address": "a.example"}}}`, []string{"remotes.false"}},
		{"resolver bad server", `{"resolver": {"servers": ["udp://127.0.0.1:53", "dns.example"]}}`, []string{"resolver.servers[1]", "dns.example"}},
		{"resolver unknown key", `{"resolver": {"server": ["udp://127.0.0.1:53"]}}`, []string{"resolver.server: unknown key"}},
		{"resolver bad attempts", `{"resolver": {"servers": ["udp://127.0.0.1"], "attempts": -1}}`, []string{"resolver.attempts"}},
		{"resolver cache bad key", `{"resolver": {"cache": {"entries": 5}}}`, []string{"resolver.cache.entries: unknown key"}},
		{"queue unknown key", `{"queue": {"retries": ["5m"]}}`, []string{"queue.retries: unknown key"}},
		{"queue retry empty", `{"queue": {"retry": []}}`, []string{"queue.retry", "at least one delay"}},
		{"queue retry zero", `{"queue": {"retry": ["5m", "0s"]}}`, []string{"queue.retry[1]", "not a positive delay"}},
		{"queue retry not durations", `{"queue": {"retry": "soon"}}`, []string{"queue.retry"}},
		{"queue retry rule", `{"queue": {"retry": [{"if": "source == 'dsn'", "then": ["1m", "-1m"]}, {"else": ["5m"]}]}}`, []string{"queue.retry[0].then[1]", "not a positive delay"}},
		{"queue retry rule CEL", `{"queue": {"retry": [{"if": "sourc == 'dsn'", "then": ["1m"]}, {"else": ["5m"]}]}}`, []string{"queue.retry[0].if", "undeclared reference"}},
		{"queue expire negative", `{"queue": {"expire": "-1h"}}`, []string{"queue.expire", "not a positive"}},
		{"queue notify zero", `{"queue": {"notify": ["0s"]}}`, []string{"queue.notify[0]", "not a positive age"}},
		{"queue negative concurrency", `{"queue": {"concurrency": -1}}`, []string{"queue.concurrency", "negative"}},
		{"queue negative max_size", `{"queue": {"max_size": -5}}`, []string{"queue.max_size", "negative"}},
		{"queue concurrency not a number", `{"queue": {"concurrency": "many"}}`, []string{"queue.concurrency"}},
		{"queue store unknown module", `{"queue": {"store": {"module": "redis"}}}`, []string{"queue.store", "smtp.queue.stores.redis"}},
		{"queue store postgres without url", `{"queue": {"store": {"module": "postgres"}}}`, []string{"queue.store", "url: required"}},
		{"queue store postgres bad url", `{"queue": {"store": {"module": "postgres", "url": "mysql://x"}}}`, []string{"url: not a postgres:// URL"}},
		{"queue store and path", `{"queue": {"path": "/tmp/q", "store": {"module": "sqlite"}}}`, []string{"queue: path and min_free"}},
		{"queue lease too short", `{"queue": {"lease": "10ms"}}`, []string{"queue.lease", "under a second"}},
		{"queue dsn mode", `{"queue": {"dsn": "always"}}`, []string{"queue.dsn", "unknown dsn mode"}},
		{"dkim without domain", `{"dkim": [{"selector": "s1"}]}`, []string{"dkim[0]", "domain"}},
		{"dkim bad algorithm", `{"dkim": [{"domain": "example.org", "algorithm": "rsa-sha1"}]}`, []string{"dkim[0]", "rsa-sha1"}},
		{"dkim bad selector", `{"dkim": [{"domain": "example.org", "selector": "a b"}]}`, []string{"dkim[0]", "selector"}},
		{"dkim missing key file", `{"dkim": [{"domain": "example.org", "key": "/nonexistent/key.pem"}]}`, []string{"/nonexistent/key.pem"}},
		{"dkim weak key", `{"dkim": [{"domain": "example.org", "key": "dkim/testdata/rsa512.pem"}]}`, []string{"rsa512.pem"}},
		{"dkim_sign bad domain", `{"dkim_sign": ["from", "not a domain"]}`, []string{"dkim_sign", "not a domain"}},
		{"dkim_sign domain without signer", `{"dkim": [{"domain": "example.org"}], "dkim_sign": ["from", "other.example"]}`, []string{"dkim_sign[1]", "no dkim signer for domain other.example"}},
		{"dkim_sign bad rule", `{"dkim_sign": [{"if": "sender ==", "then": ["from"]}, {"else": ["from"]}]}`, []string{"dkim_sign"}},
		{"not an object", `["smtp"]`, []string{"want an object"}},
	}
	require.GreaterOrEqual(t, len(tests), 25)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var err error
			require.NotPanics(t, func() { err = validate(t, tt.json) })
			require.Error(t, err, "config must be rejected: %s", tt.json)
			t.Log(err)
			for _, w := range tt.want {
				assert.Contains(t, err.Error(), w)
			}
		})
	}
}

func TestValidConfigRoundTrips(t *testing.T) {
	raw := `{"hostname":"mx.example.org","next_hop":[{"if":"rcpt_domain in lists.d","then":"r"},{"else":false}],` +
		`"remotes":{"r":{"address":"127.0.0.1","port":2525}},"lists":{"d":["example.org"]},` +
		`"ip_strategy":"ipv6_then_ipv4","source_ip":{"v4":["127.0.0.1",{"address":"127.0.0.2","ehlo":"two.example.org"}]}}`
	require.NoError(t, validate(t, raw))
	var app App
	require.NoError(t, json.Unmarshal([]byte(raw), &app))
	out, err := json.Marshal(&app)
	require.NoError(t, err)
	assert.JSONEq(t, raw, string(out))
	assert.False(t, strings.Contains(string(out), "limits"), "unset settings are left out")
}
