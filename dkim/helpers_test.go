package dkim

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"hash"
	"io"
	"regexp"
	"strings"
	"sync"
	"testing"

	"github.com/caddyserver/certmagic"
	msgdkim "github.com/emersion/go-msgauth/dkim"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
)

// staticDNS answers TXT lookups from records the test sets: for the unit
// tests, which verify with go-msgauth in-process. The tests with real
// verifiers serve records from Knot through unbound instead.
type staticDNS struct {
	mu sync.Mutex
	m  map[string][]string // by name without the final dot
}

func newStaticDNS() *staticDNS { return &staticDNS{m: map[string][]string{}} }

func (d *staticDNS) LookupTXT(_ context.Context, name string) ([]string, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if r, ok := d.m[strings.TrimSuffix(strings.ToLower(name), ".")]; ok {
		return r, nil
	}
	return nil, fmt.Errorf("%s: no such TXT record", name)
}

func (d *staticDNS) add(r Record) {
	d.mu.Lock()
	defer d.mu.Unlock()
	n := strings.TrimSuffix(r.Name, ".")
	d.m[n] = append(d.m[n], r.Text)
}

func (d *staticDNS) lookup(name string) ([]string, error) {
	return d.LookupTXT(context.Background(), name)
}

func fileStorage(t testing.TB) *certmagic.FileStorage {
	return &certmagic.FileStorage{Path: t.TempDir()}
}

func testLogger(t testing.TB) *zap.Logger {
	return zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel))
}

// newSigner returns a started Signer over a fresh storage, with dns as its
// resolver (nil: a static one holding the current records).
func newSigner(t testing.TB, cfgs []Config, o Options) (*Signer, *staticDNS) {
	t.Helper()
	dns := newStaticDNS()
	if o.Resolver == nil {
		o.Resolver = dns
	}
	if o.Logger == nil {
		o.Logger = testLogger(t)
	}
	s, err := NewSigner(cfgs, NewKeys(fileStorage(t), o.Logger), o)
	require.NoError(t, err)
	recs, err := s.Records(context.Background(), "")
	require.NoError(t, err)
	for _, r := range recs {
		dns.add(r)
	}
	require.NoError(t, s.Start(context.Background()))
	t.Cleanup(s.Stop)
	return s, dns
}

// sign reads msg through s's Signing with reads of at most chunk bytes
// (0: io.ReadAll's), checks that the bytes passed unchanged, and returns
// the signed message (the header prepended) and the Signing.
func sign(t testing.TB, s *Signer, env Envelope, msg []byte, chunk int) ([]byte, *Signing) {
	t.Helper()
	var r io.Reader = bytes.NewReader(msg)
	if chunk > 0 {
		r = &chunkReader{r: r, n: chunk}
	}
	g := s.Sign(env, r)
	got, err := io.ReadAll(g)
	require.NoError(t, err)
	require.True(t, bytes.Equal(msg, got), "the bytes must pass unchanged")
	return append(append([]byte(nil), g.Header()...), msg...), g
}

type chunkReader struct {
	r io.Reader
	n int
}

func (c *chunkReader) Read(p []byte) (int, error) {
	if len(p) > c.n {
		p = p[:c.n]
	}
	return c.r.Read(p)
}

// msgauthVerify verifies every signature of msg with go-msgauth.
func msgauthVerify(t testing.TB, dns *staticDNS, msg []byte) []*msgdkim.Verification {
	t.Helper()
	vs, err := msgdkim.VerifyWithOptions(bytes.NewReader(msg), &msgdkim.VerifyOptions{LookupTXT: dns.lookup})
	require.NoError(t, err)
	return vs
}

var tagRE = regexp.MustCompile(`(?s)\b(h|bh|b|d|s|a)=([^;]*)`)

// sigTags returns the tags of each DKIM-Signature field of a header
// prefix, whitespace removed.
func sigTags(t testing.TB, header []byte) []map[string]string {
	t.Helper()
	var out []map[string]string
	for _, f := range parseFields(header) {
		if f.name != "dkim-signature" {
			continue
		}
		tags := map[string]string{}
		v := string(f.raw[len("DKIM-Signature:"):])
		for _, m := range tagRE.FindAllStringSubmatch(v, -1) {
			tags[m[1]] = strings.Join(strings.Fields(m[2]), "")
		}
		out = append(out, tags)
	}
	return out
}

// testMessage returns a message with the usual fields and body.
func testMessage(from string, body string) []byte {
	return []byte("From: Alice <" + from + ">\r\n" +
		"To: bob@example.net\r\n" +
		"Subject: Hello\r\n" +
		"  folded\tsubject\r\n" +
		"Date: Mon, 2 Jun 2025 10:00:00 +0000\r\n" +
		"Message-ID: <1@example.org>\r\n" +
		"MIME-Version: 1.0\r\n" +
		"Content-Type: text/plain; charset=utf-8\r\n" +
		"List-Unsubscribe: <https://example.org/u/1>\r\n" +
		"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n" +
		"X-Mailer: test\r\n" +
		"\r\n" + body)
}

func sha256New() hash.Hash { return sha256.New() }

func b64(b []byte) string { return base64.StdEncoding.EncodeToString(b) }
