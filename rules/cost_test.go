package rules

import (
	"encoding/json"
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// costLists are the lists of the cost tests: a short one, and one of a
// thousand domains.
func costLists() map[string][]string {
	big := make([]string, 1000)
	for i := range big {
		big[i] = fmt.Sprintf("d%04d.example", i)
	}
	hundred := make([]string, 100)
	for i := range hundred {
		hundred[i] = fmt.Sprint(i)
	}
	return map[string][]string{"domains": {"a.example", "b.example"}, "big": big, "hundred": hundred}
}

// compileRule compiles [{"if": expr, "then": "a"}, {"else": "b"}] under the
// key path "key".
func compileRule(t testing.TB, expr string, lists map[string][]string) (*Setting[string], error) {
	t.Helper()
	raw, err := json.Marshal([]map[string]string{{"if": expr, "then": "a"}, {"else": "b"}})
	require.NoError(t, err)
	var s Setting[string]
	require.NoError(t, json.Unmarshal(raw, &s))
	env, err := NewEnv(lists)
	require.NoError(t, err)
	return &s, s.Compile("key", env)
}

// Expressions that would take seconds of CPU, or hundreds of megabytes, for
// every recipient are refused when the config loads, naming the key and
// quoting the expression.
func TestCostRefusedAtLoad(t *testing.T) {
	ten := "[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]"
	nested := func(depth int, inner string) string {
		s := inner
		for i := depth; i > 0; i-- {
			s = fmt.Sprintf("%s.all(v%d, %s)", ten, i, s)
		}
		return s
	}
	tests := []struct {
		name, expr string
	}{
		// 10^7 turns of a loop: seconds of CPU.
		{"nested loops", nested(7, "v1 + v2 + v3 + v4 + v5 + v6 + v7 > 0")},
		// a million pairs of the configured list's entries.
		{"loop in a loop over a list", "lists.big.exists(a, lists.big.exists(b, a + '.' + b == rcpt_domain))"},
		// strings built in loops: a list of 10^5 strings of a kilobyte each.
		{"strings built in loops", ten + `.map(a, ` + ten + `.map(b, ` + ten + `.map(c, ` + ten + `.map(d, ` + ten +
			`.map(e, sender + rcpt + sender + rcpt))))).size() > 0`},
		// a regular expression over every entry of a big list.
		{"regex per entry", "lists.big.exists(d, rcpt.matches('^([a-z0-9]+[.-])*' + d + '$'))"},
		// a string doubled in a loop over the configured list.
		{"string per entry", "lists.big.all(d, (rcpt + d + rcpt + d).size() > 0)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := compileRule(t, tt.expr, costLists())
			require.Error(t, err)
			assert.Contains(t, err.Error(), "key[0].if: ")
			assert.Contains(t, err.Error(), fmt.Sprintf("%q", tt.expr))
			assert.Contains(t, err.Error(), "over the limit of 10000")
		})
	}
}

// Ordinary conditions pass the estimate, and those whose cost cannot grow
// with their input are evaluated without counting (the fast path).
func TestCostAccepted(t *testing.T) {
	for _, expr := range []string{
		"retry_num == 0",
		"rcpt_domain in lists.big",
		"rcpt_domain in lists['big'] || sender_domain in lists.domains",
		"lists.exists(name, rcpt_domain in lists[name])",
		"lists.domains.exists(d, rcpt_domain.endsWith('.' + d))",
		"rcpt.contains(sender) && mx.matches('^mx[0-9]+\\\\.example\\\\.net$')",
		"size > 10485760 && last_error in ['tls', 'dane'] && queue_age > 3600",
	} {
		_, err := compileRule(t, expr, costLists())
		assert.NoError(t, err, expr)
	}
}

// A membership test in a configured list is one lookup: a list of 100,000
// entries is as cheap as one of two, both in the estimate and in the run.
func TestBigListMembership(t *testing.T) {
	huge := make([]string, 100_000)
	for i := range huge {
		huge[i] = fmt.Sprintf("d%06d.example", i)
	}
	s, err := compileRule(t, "rcpt_domain in lists.huge && !(sender_domain in lists.huge)", map[string][]string{"huge": huge})
	require.NoError(t, err)
	got, err := s.Eval(&Vars{RcptDomain: "d099999.example", SenderDomain: "example.org"})
	require.NoError(t, err)
	assert.Equal(t, "a", got)
	got, err = s.Eval(&Vars{RcptDomain: "d100000.example"})
	require.NoError(t, err)
	assert.Equal(t, "b", got)

	// The list is still a list: size, index, concatenation (a list that
	// is walked), loops (over the limit with 100,000 entries).
	_, err = compileRule(t, "lists.huge.exists(d, d == rcpt_domain)", map[string][]string{"huge": huge})
	require.ErrorContains(t, err, "over the limit")
	_, err = compileRule(t, "'x' in lists.huge + ['x']", map[string][]string{"huge": huge})
	require.ErrorContains(t, err, "over the limit")
	s, err = compileRule(t, "size(lists.huge) == 100000 && lists.huge[1] == 'd000001.example' && size(lists.huge + ['x']) == 100001", map[string][]string{"huge": huge})
	require.NoError(t, err)
	got, err = s.Eval(&Vars{})
	require.NoError(t, err)
	assert.Equal(t, "a", got)
}

// A condition that passes the estimate (which takes a string variable as at
// most MaxStringSize characters) but is given a much longer value is
// stopped as it runs: here after the first of a hundred 2 MB strings it
// would build.
func TestCostLimitAtRunTime(t *testing.T) {
	s, err := compileRule(t, "lists.hundred.all(i, (rcpt + rcpt).size() > 0)", costLists())
	require.NoError(t, err, "the estimate takes rcpt as 256 characters")

	got, err := s.Eval(&Vars{Rcpt: "user@example.net"})
	require.NoError(t, err)
	assert.Equal(t, "a", got)

	vars := &Vars{Rcpt: strings.Repeat("x", 1<<20)}
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	start := time.Now()
	_, err = s.Eval(vars)
	took := time.Since(start)
	runtime.ReadMemStats(&after)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "key[0].if: ")
	assert.Contains(t, err.Error(), "stopped: cost limit exceeded (10000; a string variable was longer than the 256 characters")
	allocated := after.TotalAlloc - before.TotalAlloc
	assert.Less(t, allocated, uint64(20<<20), "stopped after the first strings (unlimited, it builds 200 MB)")
	t.Logf("stopped after %v, %d KiB allocated", took, allocated>>10)
}

// A list that is not configured is refused when the config loads, whether
// named as a field or as a constant index, anywhere in the expression.
func TestUnknownListRefused(t *testing.T) {
	lists := map[string][]string{"domains": {"a.example"}, "local": {"b.example"}}
	for _, expr := range []string{
		"rcpt_domain in lists.nosuch",
		`rcpt_domain in lists["nosuch"]`,
		"retry_num > 0 || lists.domains.exists(d, d in lists.nosuch)",
		"size(lists.nosuch) > 0",
	} {
		t.Run(expr, func(t *testing.T) {
			_, err := compileRule(t, expr, lists)
			require.Error(t, err)
			assert.Contains(t, err.Error(), "key[0].if: ")
			assert.Contains(t, err.Error(), `no list named "nosuch" (lists: domains, local)`)
			assert.Contains(t, err.Error(), fmt.Sprintf("%q", expr))
		})
	}
	for _, expr := range []string{
		"has(lists.nosuch)",                                            // a presence test reads nothing
		"rcpt_domain in lists[mx]",                                     // not a constant: checked as it runs
		"'nosuch' in lists",                                            // a key test
		"lists.local.exists(lists, lists == rcpt_domain)",              // a macro variable named lists
		"[{'nosuch': 'x'}].exists(lists, lists.nosuch == rcpt_domain)", // ... that is a map
	} {
		_, err := compileRule(t, expr, lists)
		assert.NoError(t, err, expr)
	}
	// Without lists (as the Caddyfile adapter checks conditions), Env.Compile
	// does not check names.
	env, err := NewEnv(nil)
	require.NoError(t, err)
	_, err = env.Compile("rcpt_domain in lists.local")
	assert.NoError(t, err)
}

// The fast path stays fast: a condition whose cost does not depend on its
// input is evaluated without a cost tracker, which would take another 7
// allocations and 0.5 µs per evaluation.
func TestNoCostTrackingWhenBounded(t *testing.T) {
	for _, tt := range []struct {
		expr   string
		allocs float64
	}{
		{"retry_num == 0", 1},
		{"rcpt_domain in lists.big", 3},
	} {
		s, err := compileRule(t, tt.expr, costLists())
		require.NoError(t, err)
		vars := &Vars{RetryNum: 3, RcptDomain: "d0999.example", Rcpt: "a@d0999.example"}
		allocs := testing.AllocsPerRun(100, func() { _, _ = s.Eval(vars) })
		assert.LessOrEqual(t, allocs, tt.allocs, tt.expr)
		t.Logf("%s: %v allocations", tt.expr, allocs)
	}
}
