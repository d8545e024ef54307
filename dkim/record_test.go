package dkim

import (
	"flag"
	"os"
	"strings"
	"testing"

	"github.com/miekg/dns"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

var update = flag.Bool("update", false, "rewrite the golden files")

// TestRecordsGolden: the zone file lines caddy smtp-dkim prints, for keys
// from files (RSA 2048, Ed25519), against testdata/records.golden. Each
// line parses as a TXT record whose strings are at most 255 octets and
// join to the record.
func TestRecordsGolden(t *testing.T) {
	s, err := NewSigner([]Config{
		{Domain: "example.org", Selector: "s1", Key: "testdata/rsa2048-pkcs1.pem"},
		{Domain: "example.org", Selector: "e1", Key: "testdata/ed25519.pem"},
	}, NewKeys(fileStorage(t), nil), Options{})
	require.NoError(t, err)
	recs, err := s.Records(t.Context(), "example.org")
	require.NoError(t, err)
	var b strings.Builder
	for _, r := range recs {
		line := r.ZoneLine()
		b.WriteString(line + "\n")
		rr, err := dns.NewRR(line)
		require.NoError(t, err, line)
		txt := rr.(*dns.TXT)
		assert.Equal(t, r.Name, txt.Hdr.Name)
		for _, part := range txt.Txt {
			assert.LessOrEqual(t, len(part), 255)
		}
		assert.Equal(t, r.Text, strings.Join(txt.Txt, ""))
		assert.Equal(t, r.Strings(), txt.Txt)
	}
	got := b.String()
	if *update {
		require.NoError(t, os.WriteFile("testdata/records.golden", []byte(got), 0o644))
	}
	want, err := os.ReadFile("testdata/records.golden")
	require.NoError(t, err)
	assert.Equal(t, string(want), got)
	assert.Contains(t, got, `s1._domainkey.example.org. IN TXT "v=DKIM1; k=rsa; p=MIIB`)
	assert.Contains(t, got, `e1._domainkey.example.org. IN TXT "v=DKIM1; k=ed25519; p=`)

	_, err = s.Records(t.Context(), "other.example")
	assert.ErrorContains(t, err, "no signer for domain other.example")
}

// TestRecordKey: the p= of a record, whatever its spacing.
func TestRecordKey(t *testing.T) {
	for _, c := range []struct {
		rec, want string
		ok        bool
	}{
		{"v=DKIM1; k=rsa; p=ABC", "ABC", true},
		{"v=DKIM1;k=ed25519;p= AB C ;t=s", "ABC", true},
		{"v=DKIM1; k=rsa", "", false},
		{"v=spf1 -all", "", false},
	} {
		got, ok := recordKey(c.rec)
		assert.Equal(t, c.ok, ok, c.rec)
		assert.Equal(t, c.want, got, c.rec)
	}
}
