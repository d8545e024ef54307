package mtasts

import (
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestParsePolicy(t *testing.T) {
	valid := "version: STSv1\nmode: enforce\nmx: mail.example.com\nmx: *.example.net\nmax_age: 604800\n"
	tests := []struct {
		name string
		body string
		want *Policy
	}{
		{"LF", valid, &Policy{Version: "STSv1", Mode: ModeEnforce, MX: []string{"mail.example.com", "*.example.net"}, MaxAge: 604800 * time.Second}},
		{"CRLF", strings.ReplaceAll(valid, "\n", "\r\n"), &Policy{Version: "STSv1", Mode: ModeEnforce, MX: []string{"mail.example.com", "*.example.net"}, MaxAge: 604800 * time.Second}},
		{"no final newline, fields in any order", "max_age: 86400\nmx: mx.example.com\nmode: testing\nversion: STSv1",
			&Policy{Version: "STSv1", Mode: ModeTesting, MX: []string{"mx.example.com"}, MaxAge: 86400 * time.Second}},
		{"no space after colon, trailing blanks", "version:STSv1 \nmode:\tnone\t\nmax_age:0", &Policy{Version: "STSv1", Mode: ModeNone, MaxAge: 0}},
		{"mode none may list mx", "version: STSv1\nmode: none\nmx: mx.example.com\nmax_age: 1\n",
			&Policy{Version: "STSv1", Mode: ModeNone, MX: []string{"mx.example.com"}, MaxAge: time.Second}},
		{"unknown keys ignored, even twice", "version: STSv1\nfoo: bar baz\nmode: testing\nfoo: été\nmx: MX.Example.COM\nmax_age: 31557600\n",
			&Policy{Version: "STSv1", Mode: ModeTesting, MX: []string{"mx.example.com"}, MaxAge: MaxMaxAge * time.Second}},
		{"trailing empty lines ignored", valid + "\r\n\n", &Policy{Version: "STSv1", Mode: ModeEnforce, MX: []string{"mail.example.com", "*.example.net"}, MaxAge: 604800 * time.Second}},
		{"max_age of ten digits with zeros", "version: STSv1\nmode: none\nmax_age: 0000000060\n", &Policy{Version: "STSv1", Mode: ModeNone, MaxAge: time.Minute}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := ParsePolicy([]byte(tt.body))
			require.NoError(t, err)
			assert.Equal(t, tt.want, p)
		})
	}
}

func TestParsePolicyErrors(t *testing.T) {
	tests := []struct {
		name  string
		body  string
		line  int
		field string
		msg   string
	}{
		{"empty", "", 1, "", "empty policy"},
		{"missing version", "mode: none\nmax_age: 1\n", 0, "version", "missing"},
		{"missing mode", "version: STSv1\nmax_age: 1\n", 0, "mode", "missing"},
		{"missing max_age", "version: STSv1\nmode: none\n", 0, "max_age", "missing"},
		{"enforce without mx", "version: STSv1\nmode: enforce\nmax_age: 1\n", 0, "mx", "required in mode enforce"},
		{"testing without mx", "version: STSv1\nmode: testing\nmax_age: 1\n", 0, "mx", "required in mode testing"},
		{"wrong version", "version: STSv2\nmode: none\nmax_age: 1\n", 1, "version", `"STSv2" is not STSv1`},
		{"version is case-sensitive", "version: stsv1\nmode: none\nmax_age: 1\n", 1, "version", "not STSv1"},
		{"unknown mode", "version: STSv1\nmode: strict\nmax_age: 1\n", 2, "mode", `"strict" is not enforce, testing or none`},
		{"mode is case-sensitive", "version: STSv1\nmode: Enforce\nmx: a.b\nmax_age: 1\n", 2, "mode", "not enforce"},
		{"field names are case-sensitive", "Version: STSv1\nmode: none\nmax_age: 1\n", 0, "version", "missing"},
		{"max_age over a year", "version: STSv1\nmode: none\nmax_age: 31557601\n", 3, "max_age", "more than 31557600"},
		{"max_age negative", "version: STSv1\nmode: none\nmax_age: -1\n", 3, "max_age", "not 1 to 10 digits"},
		{"max_age of eleven digits", "version: STSv1\nmode: none\nmax_age: 00000000001\n", 3, "max_age", "not 1 to 10 digits"},
		{"max_age not a number", "version: STSv1\nmode: none\nmax_age: 1d\n", 3, "max_age", "not 1 to 10 digits"},
		{"max_age twice", "version: STSv1\nmode: none\nmax_age: 1\nmax_age: 2\n", 4, "max_age", "given again (first on line 3)"},
		{"mode twice", "version: STSv1\nmode: none\nmode: none\nmax_age: 1\n", 3, "mode", "given again"},
		{"version twice", "version: STSv1\nversion: STSv1\nmode: none\nmax_age: 1\n", 2, "version", "given again"},
		{"bad mx", "version: STSv1\nmode: enforce\nmx: mx..example.com\nmax_age: 1\n", 3, "mx", "neither a host name"},
		{"mx with final dot", "version: STSv1\nmode: enforce\nmx: mx.example.com.\nmax_age: 1\n", 3, "mx", "neither a host name"},
		{"mx with inner wildcard", "version: STSv1\nmode: enforce\nmx: mx.*.example.com\nmax_age: 1\n", 3, "mx", "neither a host name"},
		{"mx with bare wildcard", "version: STSv1\nmode: enforce\nmx: *\nmax_age: 1\n", 3, "mx", "neither a host name"},
		{"empty line between fields", "version: STSv1\n\nmode: none\nmax_age: 1\n", 2, "", "empty line"},
		{"no colon", "version: STSv1\nmode none\nmax_age: 1\n", 2, "", `no "key: value" field`},
		{"space before colon", "version : STSv1\nmode: none\nmax_age: 1\n", 1, "", `invalid field name "version "`},
		{"leading space", " version: STSv1\nmode: none\nmax_age: 1\n", 1, "", "invalid field name"},
		{"empty value", "version: STSv1\nmode:\nmax_age: 1\n", 2, "", "field mode has no value"},
		{"control character", "version: STSv1\nmode: none\nfoo: a\x01b\nmax_age: 1\n", 3, "", "control character"},
		{"bare CR inside a line", "version: STSv1\rmode: none\nmax_age: 1\n", 1, "", "control character"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParsePolicy([]byte(tt.body))
			var se *SyntaxError
			require.ErrorAs(t, err, &se)
			assert.Equal(t, tt.line, se.Line, "line")
			assert.Equal(t, tt.field, se.Field, "field")
			assert.Contains(t, se.Error(), tt.msg)
		})
	}
	t.Run("not UTF-8", func(t *testing.T) {
		_, err := ParsePolicy([]byte("version: STSv1\nmode: none\nmax_age: 1\nfoo: \xff\n"))
		assert.ErrorContains(t, err, "not UTF-8")
	})
	t.Run("errors name the line", func(t *testing.T) {
		_, err := ParsePolicy([]byte("version: STSv1\nmode: bad\n"))
		assert.EqualError(t, err, `mta-sts policy: line 2: field mode: "bad" is not enforce, testing or none`)
	})
}

func TestPolicyExpiry(t *testing.T) {
	at := time.Date(2026, 11, 22, 0, 0, 0, 0, time.UTC)
	p := &Policy{MaxAge: 2 * time.Hour, Fetched: at}
	assert.Equal(t, at.Add(2*time.Hour), p.Expires())
	assert.False(t, p.Expired(at.Add(2*time.Hour-time.Second)))
	assert.True(t, p.Expired(at.Add(2*time.Hour)))
	assert.True(t, (&Policy{Fetched: at}).Expired(at), "max_age 0 is never usable from the cache")
}
