package mtasts

import (
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestStoredPolicyRoundTrip(t *testing.T) {
	p := &Policy{Version: "STSv1", Mode: ModeEnforce, MX: []string{"*.example.com"}, MaxAge: 86400 * time.Second,
		ID: "abc1", Fetched: time.Date(2026, 11, 22, 1, 2, 3, 0, time.UTC)}
	b, err := encodePolicy("example.com", p)
	require.NoError(t, err)
	got, err := decodePolicy("example.com", b)
	require.NoError(t, err)
	assert.Equal(t, p, got)

	_, err = decodePolicy("example.org", b)
	assert.ErrorContains(t, err, `stored for domain "example.com"`, "a file copied under another name is refused")
}

func TestStoredPolicyInvalid(t *testing.T) {
	good := `{"domain":"example.com","version":"STSv1","mode":"enforce","mx":["mx.example.com"],"max_age":60,"id":"a","fetched":"2026-11-22T00:00:00Z"}`
	tests := []struct{ name, old, new, msg string }{
		{"version", `"STSv1"`, `"STSv2"`, "version"},
		{"mode", `"enforce"`, `"strict"`, "mode"},
		{"max_age", `60`, `31557601`, "max_age"},
		{"id", `"id":"a"`, `"id":"a-b"`, "id"},
		{"fetched", `"2026-11-22T00:00:00Z"`, `"0001-01-01T00:00:00Z"`, "fetch time"},
		{"mx", `["mx.example.com"]`, `["../x"]`, "mx"},
		{"no mx", `"mx":["mx.example.com"],`, ``, "no mx"},
		{"json", `{`, `[`, "invalid character"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := decodePolicy("example.com", []byte(strings.Replace(good, tt.old, tt.new, 1)))
			assert.ErrorContains(t, err, tt.msg)
		})
	}
}

func TestNormalizeDomain(t *testing.T) {
	for in, want := range map[string]string{"Example.COM.": "example.com", "sts.test": "sts.test", "xn--bcher-kva.example": "xn--bcher-kva.example"} {
		got, err := normalizeDomain(in)
		require.NoError(t, err, in)
		assert.Equal(t, want, got)
	}
	for _, bad := range []string{"", ".", "../etc", "a/b", "a..b", "-a.b", "bücher.example", "a b"} {
		_, err := normalizeDomain(bad)
		require.ErrorIs(t, err, ErrDomain, bad)
		assert.True(t, IsPermanent(err), bad)
	}
}
