package rules

import (
	"encoding/json"
	"fmt"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func compiled[T any](t testing.TB, raw string, lists map[string][]string) *Setting[T] {
	t.Helper()
	var s Setting[T]
	require.NoError(t, json.Unmarshal([]byte(raw), &s))
	env, err := NewEnv(lists)
	require.NoError(t, err)
	require.NoError(t, s.Compile("key", env))
	return &s
}

func TestEval(t *testing.T) {
	lists := map[string][]string{"domains": {"foobar.net", "foobar.org"}}
	tests := []struct {
		name string
		raw  string
		vars Vars
		want string
	}{
		{"plain", `"ipv4_only"`, Vars{}, "ipv4_only"},
		{"first rule", `[{"if": "retry_num == 0", "then": "a"}, {"else": "b"}]`, Vars{}, "a"},
		{"else", `[{"if": "retry_num == 0", "then": "a"}, {"else": "b"}]`, Vars{RetryNum: 2}, "b"},
		{"first match wins", `[{"if": "size > 10", "then": "a"}, {"if": "size > 5", "then": "b"}, {"else": "c"}]`, Vars{Size: 20}, "a"},
		{"second rule", `[{"if": "size > 10", "then": "a"}, {"if": "size > 5", "then": "b"}, {"else": "c"}]`, Vars{Size: 7}, "b"},
		{"list membership", `[{"if": "rcpt_domain in lists.domains", "then": "lmtp"}, {"else": "mx"}]`, Vars{RcptDomain: "foobar.org"}, "lmtp"},
		{"list non-member", `[{"if": "rcpt_domain in lists.domains", "then": "lmtp"}, {"else": "mx"}]`, Vars{RcptDomain: "example.com"}, "mx"},
		{"legacy in_list", `[{"if": "rcpt-domain", "in_list": "list/domains", "then": "lmtp"}, {"else": "mx"}]`, Vars{RcptDomain: "foobar.net"}, "lmtp"},
		{"legacy in_list bare name", `[{"if": "rcpt_domain", "in_list": "domains", "then": "lmtp"}, {"else": "mx"}]`, Vars{RcptDomain: "x.example"}, "mx"},
		{"string functions", `[{"if": "sender.endsWith('@example.org') && mx.startsWith('mx1.')", "then": "a"}, {"else": "b"}]`, Vars{Sender: "a@example.org", MX: "mx1.example.net"}, "a"},
		{"every variable", `[{"if": "retry_num == 1 && sender == 's' && sender_domain == 'sd' && rcpt == 'r' && rcpt_domain == 'rd' && mx == 'm' && remote_ip == '192.0.2.1' && local_ip == '192.0.2.2' && last_error == 'tls' && last_status == 421 && size == 3 && priority == 4 && queue_age == 5", "then": "all"}, {"else": "none"}]`,
			Vars{RetryNum: 1, Sender: "s", SenderDomain: "sd", Rcpt: "r", RcptDomain: "rd", MX: "m", RemoteIP: "192.0.2.1", LocalIP: "192.0.2.2", LastError: "tls", LastStatus: 421, Size: 3, Priority: 4, QueueAge: 5}, "all"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := compiled[string](t, tt.raw, lists)
			got, err := s.Eval(&tt.vars)
			require.NoError(t, err)
			assert.Equal(t, tt.want, got)
		})
	}
}

// A list named by a value known only as the rule runs is looked up then;
// one that does not exist is an error of the evaluation.
func TestEvalRuntimeError(t *testing.T) {
	s := compiled[string](t, `[{"if": "rcpt_domain in lists[sender_domain]", "then": "a"}, {"else": "b"}]`, nil)
	_, err := s.Eval(&Vars{SenderDomain: "nope"})
	require.Error(t, err)
	assert.Contains(t, err.Error(), "key[0].if")
	assert.Contains(t, err.Error(), "nope")
}

func TestIsRuleList(t *testing.T) {
	tests := []struct {
		raw  string
		want bool
	}{
		{`"x"`, false},
		{`["192.0.2.1", "192.0.2.2"]`, false},
		{`[{"address": "192.0.2.1", "ehlo": "a.example"}]`, false},
		{`[]`, false},
		{`[{"if": "true", "then": 1}, {"else": 2}]`, true},
		{`[{"else": 2}]`, true},
		{` [ {"else": 2} ] `, true},
	}
	for _, tt := range tests {
		assert.Equal(t, tt.want, IsRuleList([]byte(tt.raw)), tt.raw)
	}
}

func TestRoundTrip(t *testing.T) {
	for _, raw := range []string{
		`"ipv4_only"`,
		`[{"if":"retry_num == 0","then":"ipv6_only"},{"else":"ipv4_only"}]`,
		`[{"if":"rcpt-domain","in_list":"list/domains","then":false},{"else":true}]`,
		`["a","b"]`,
	} {
		var s Setting[any]
		require.NoError(t, json.Unmarshal([]byte(raw), &s))
		out, err := json.Marshal(s)
		require.NoError(t, err)
		assert.JSONEq(t, raw, string(out))
	}
}

func TestPlainValueCostsNothing(t *testing.T) {
	s := Plain(7)
	require.NoError(t, s.Compile("limits.mx", mustEnv(t)))
	vars := &Vars{}
	allocs := testing.AllocsPerRun(100, func() {
		v, err := s.Eval(vars)
		if err != nil || v != 7 {
			t.Fatal("wrong value")
		}
	})
	assert.Zero(t, allocs)
}

func mustEnv(t testing.TB) *Env {
	env, err := NewEnv(map[string][]string{"domains": {"a.example", "b.example", "c.example", "foobar.org"}})
	require.NoError(t, err)
	return env
}

// The benchmarks show what a rule costs per evaluation: a plain value, a
// comparison on retry_num, and a list membership test.
func BenchmarkEvalPlain(b *testing.B) {
	s := Plain("ipv4_only")
	require.NoError(b, s.Compile("ip_strategy", mustEnv(b)))
	vars := &Vars{}
	b.ReportAllocs()
	for b.Loop() {
		_, _ = s.Eval(vars)
	}
}

func BenchmarkEvalRetryNum(b *testing.B) {
	s := compiled[string](b, `[{"if": "retry_num == 0", "then": "ipv6_only"}, {"else": "ipv4_only"}]`, nil)
	vars := &Vars{RetryNum: 3}
	b.ReportAllocs()
	for b.Loop() {
		_, _ = s.Eval(vars)
	}
}

func BenchmarkEvalInList(b *testing.B) {
	s := compiled[string](b, `[{"if": "rcpt_domain in lists.domains", "then": "lmtp"}, {"else": "mx"}]`,
		map[string][]string{"domains": {"a.example", "b.example", "c.example", "foobar.org"}})
	vars := &Vars{RcptDomain: "foobar.org"}
	b.ReportAllocs()
	for b.Loop() {
		_, _ = s.Eval(vars)
	}
}

// A membership test in a list of 10,000 entries: one set lookup.
func BenchmarkEvalInBigList(b *testing.B) {
	big := make([]string, 10_000)
	for i := range big {
		big[i] = fmt.Sprintf("d%05d.example", i)
	}
	s := compiled[string](b, `[{"if": "rcpt_domain in lists.domains", "then": "lmtp"}, {"else": "mx"}]`,
		map[string][]string{"domains": big})
	vars := &Vars{RcptDomain: "d09999.example"}
	b.ReportAllocs()
	for b.Loop() {
		_, _ = s.Eval(vars)
	}
}

// A condition whose cost grows with a string variable is counted as it
// runs, against MaxCost.
func BenchmarkEvalCounted(b *testing.B) {
	s := compiled[string](b, `[{"if": "rcpt.contains('+')", "then": "a"}, {"else": "b"}]`, nil)
	vars := &Vars{Rcpt: "user@example.net"}
	b.ReportAllocs()
	for b.Loop() {
		_, _ = s.Eval(vars)
	}
}
