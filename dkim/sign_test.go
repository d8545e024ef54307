package dkim

import (
	"bytes"
	"crypto/rsa"
	"errors"
	"io"
	"math/rand/v2"
	"strings"
	"testing"
	"testing/iotest"

	msgdkim "github.com/emersion/go-msgauth/dkim"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestSignVerifies signs with RSA, Ed25519 and both, read in chunks of
// several sizes, and verifies every signature with go-msgauth.
func TestSignVerifies(t *testing.T) {
	cases := []struct {
		name string
		cfgs []Config
		algs []Algorithm
	}{
		{"rsa", []Config{{Domain: "example.org"}}, []Algorithm{RSASHA256}},
		{"ed25519", []Config{{Domain: "example.org", Algorithm: Ed25519SHA256}}, []Algorithm{Ed25519SHA256}},
		{"both", []Config{{Domain: "example.org", Algorithm: Ed25519SHA256}, {Domain: "Example.ORG.", Selector: "rsa1"}},
			[]Algorithm{Ed25519SHA256, RSASHA256}},
	}
	bodies := map[string]string{
		"plain":        "Hi Bob,\r\n\r\n  two  spaces\tand tab \r\n\r\n\r\n",
		"empty":        "",
		"blank lines":  "\r\n\r\n\r\n",
		"no final eol": "last line",
		"bare lf":      "line one\nline two\n\n",
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s, dns := newSigner(t, c.cfgs, Options{})
			for bname, body := range bodies {
				for _, chunk := range []int{0, 1, 7, 4096} {
					msg := testMessage("alice@example.org", body)
					signed, g := sign(t, s, Envelope{MailFrom: "bounce@example.org"}, msg, chunk)
					require.NoError(t, g.Err())
					require.Len(t, g.Signatures(), len(c.algs))
					for i, a := range c.algs {
						assert.Equal(t, a, g.Signatures()[i].Algorithm)
					}
					vs := msgauthVerify(t, dns, signed)
					require.Len(t, vs, len(c.algs), "%s, chunk %d", bname, chunk)
					for _, v := range vs {
						assert.NoError(t, v.Err, "%s, chunk %d:\n%s", bname, chunk, g.Header())
						assert.Equal(t, "example.org", v.Domain)
					}
				}
			}
		})
	}
}

// TestSignOneByteAndHalfReads: a reader that returns one byte, or half of
// what is asked, at a time, so that the end of the header section and CRLF
// pairs are split across reads.
func TestSignOneByteAndHalfReads(t *testing.T) {
	s, dns := newSigner(t, []Config{{Domain: "example.org", Algorithm: Ed25519SHA256}}, Options{})
	msg := testMessage("alice@example.org", "a \r\n\r\nb\r\n")
	for name, r := range map[string]io.Reader{
		"one byte": iotest.OneByteReader(bytes.NewReader(msg)),
		"half":     iotest.HalfReader(bytes.NewReader(msg)),
		"data+eof": iotest.DataErrReader(bytes.NewReader(msg)),
	} {
		g := s.Sign(Envelope{}, r)
		got, err := io.ReadAll(g)
		require.NoError(t, err, name)
		require.Equal(t, msg, got, name)
		vs := msgauthVerify(t, dns, append(g.Header(), msg...))
		require.Len(t, vs, 1, name)
		assert.NoError(t, vs[0].Err, name)
	}
}

// TestRelaxedBodyMatchesGoMsgauth compares the body hash (bh=) with the one
// go-msgauth's signer computes, for bodies of random lines, whitespace and
// empty lines, written in random pieces.
func TestRelaxedBodyMatchesGoMsgauth(t *testing.T) {
	key := loadTestKey(t, "testdata/rsa2048-pkcs8.pem")
	rng := rand.New(rand.NewPCG(1, 2))
	pieces := []string{"a", "bc", " ", "\t", "  ", "\r\n", "\n", "\r\n\r\n", "x y", " \t \r\n"}
	for i := range 300 {
		var body strings.Builder
		for range rng.IntN(40) {
			body.WriteString(pieces[rng.IntN(len(pieces))])
		}
		b := body.String()

		var want bytes.Buffer
		err := msgdkim.Sign(&want, strings.NewReader("From: a@example.org\r\n\r\n"+b), &msgdkim.SignOptions{
			Domain: "example.org", Selector: "s", Signer: key,
			HeaderCanonicalization: msgdkim.CanonicalizationRelaxed, BodyCanonicalization: msgdkim.CanonicalizationRelaxed,
		})
		require.NoError(t, err)
		wantBH := sigTags(t, want.Bytes())[0]["bh"]

		rb := newRelaxedBody(sha256New())
		for p := []byte(b); len(p) > 0; {
			n := min(len(p), 1+rng.IntN(5))
			rb.Write(p[:n])
			p = p[n:]
		}
		assert.Equal(t, wantBH, b64(rb.Sum()), "case %d, body %q", i, b)
	}
}

// TestOversignedFrom: h= names From once more than the message has From
// fields, and a From added at the top after signing breaks the signature
// (go-msgauth adds no From of its own, unlike python3-dkim, so it proves
// the oversigning by itself). Without the oversigning, the added From
// verifies: checked with a header list that lacks it.
func TestOversignedFrom(t *testing.T) {
	s, dns := newSigner(t, []Config{{Domain: "example.org"}}, Options{})
	for _, froms := range []int{1, 2} {
		msg := testMessage("alice@example.org", "body\r\n")
		if froms == 2 {
			msg = append([]byte("From: other@example.org\r\n"), msg...)
		}
		signed, g := sign(t, s, Envelope{}, msg, 0)
		tags := sigTags(t, g.Header())
		require.Len(t, tags, 1)
		h := strings.Split(tags[0]["h"], ":")
		assert.Equal(t, froms+1, count(h, "from"), "h=%s", tags[0]["h"])
		vs := msgauthVerify(t, dns, signed)
		require.NoError(t, vs[0].Err)

		forged := append(append([]byte(nil), g.Header()...), append([]byte("From: mallory@example.org\r\n"), msg...)...)
		vs = msgauthVerify(t, dns, forged)
		assert.Error(t, vs[0].Err, "a From added at the top must break the signature")
	}
}

// TestHeaderList: only the fields present are listed (each as often as
// present), in the signer's order, with the extra headers of the config.
func TestHeaderList(t *testing.T) {
	s, _ := newSigner(t, []Config{{Domain: "example.org", Headers: []string{"X-Mailer", "x-absent", "to"}}}, Options{})
	msg := []byte("From: a@example.org\r\nTo: b@example.net\r\nTo: c@example.net\r\nX-Mailer: m\r\nX-Other: o\r\n\r\nbody\r\n")
	_, g := sign(t, s, Envelope{}, msg, 0)
	tags := sigTags(t, g.Header())
	require.Len(t, tags, 1)
	assert.Equal(t, "from:from:to:to:x-mailer", tags[0]["h"])
}

// TestSignatureFolded: every line of the field is at most 78 characters,
// ends in CRLF, and continuation lines start with a tab.
func TestSignatureFolded(t *testing.T) {
	s, _ := newSigner(t, []Config{{Domain: "example.org"}, {Domain: "example.org", Algorithm: Ed25519SHA256}}, Options{})
	_, g := sign(t, s, Envelope{}, testMessage("alice@example.org", "x\r\n"), 0)
	h := string(g.Header())
	require.True(t, strings.HasSuffix(h, "\r\n"))
	lines := strings.Split(strings.TrimSuffix(h, "\r\n"), "\r\n")
	starts := 0
	for _, l := range lines {
		assert.LessOrEqual(t, len(strings.ReplaceAll(l, "\t", "        ")), 78, "%q", l)
		assert.NotContains(t, l, "\n")
		if strings.HasPrefix(l, "DKIM-Signature: ") {
			starts++
		} else {
			assert.True(t, strings.HasPrefix(l, "\t"), "%q", l)
		}
	}
	assert.Equal(t, 2, starts)
}

// TestChoose: the callback gets the From domain and the envelope sender,
// and its domains sign; a chosen domain without a signer is an error the
// caller logs, and the message still passes.
func TestChoose(t *testing.T) {
	var gotFrom, gotMailFrom string
	s, dns := newSigner(t, []Config{{Domain: "example.org"}, {Domain: "esp.example", Algorithm: Ed25519SHA256}}, Options{
		Choose: func(from, mailFrom string) []string {
			gotFrom, gotMailFrom = from, mailFrom
			return []string{"ESP.example", "example.org", "nosigner.example", "esp.example"}
		},
	})
	signed, g := sign(t, s, Envelope{MailFrom: "b@esp.example"}, testMessage("alice@Example.ORG", "x\r\n"), 0)
	assert.Equal(t, "example.org", gotFrom)
	assert.Equal(t, "b@esp.example", gotMailFrom)
	require.Len(t, g.Signatures(), 2)
	assert.Equal(t, "esp.example", g.Signatures()[0].Domain)
	assert.Equal(t, "example.org", g.Signatures()[1].Domain)
	require.ErrorContains(t, g.Err(), "no dkim signer for domain nosigner.example")
	for _, v := range msgauthVerify(t, dns, signed) {
		assert.NoError(t, v.Err)
	}
}

// TestNotSigned: messages that are not signed pass unchanged, with an
// error only where one should be logged.
func TestNotSigned(t *testing.T) {
	s, _ := newSigner(t, []Config{{Domain: "example.org"}}, Options{MaxHeaderBytes: 1024})
	cases := []struct {
		name string
		msg  []byte
		err  error
	}{
		{"other domain", testMessage("a@example.net", "x\r\n"), nil},
		{"no from", []byte("To: b@example.org\r\n\r\nx\r\n"), errNoFrom},
		{"no header", []byte("\r\nx\r\n"), errNoFrom},
		{"header too large", []byte("From: a@example.org\r\nX-Big: " + strings.Repeat("y", 2000) + "\r\n\r\nx\r\n"), ErrHeaderTooLarge},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			for _, chunk := range []int{0, 100} {
				_, g := sign(t, s, Envelope{}, c.msg, chunk)
				assert.Nil(t, g.Header())
				assert.Empty(t, g.Signatures())
				if c.err == nil {
					assert.NoError(t, g.Err())
				} else {
					assert.ErrorIs(t, g.Err(), c.err)
				}
			}
		})
	}
}

// TestHeaderOnlyMessage: a message that ends inside its header section is
// signed with an empty body.
func TestHeaderOnlyMessage(t *testing.T) {
	s, dns := newSigner(t, []Config{{Domain: "example.org"}}, Options{})
	for _, msg := range []string{"From: a@example.org\r\nSubject: x\r\n", "From: a@example.org\r\nSubject: x\r\n\r\n"} {
		signed, g := sign(t, s, Envelope{}, []byte(msg), 0)
		require.Len(t, g.Signatures(), 1)
		if !strings.HasSuffix(msg, "\r\n\r\n") {
			// go-msgauth cannot read a header without its empty line;
			// the body is empty either way.
			signed = append(signed, "\r\n"...)
		}
		vs := msgauthVerify(t, dns, signed)
		assert.NoError(t, vs[0].Err, "%q", msg)
	}
}

// TestReadError: an error of the message reader passes, and nothing is
// signed.
func TestReadError(t *testing.T) {
	s, _ := newSigner(t, []Config{{Domain: "example.org"}}, Options{})
	boom := errors.New("boom")
	g := s.Sign(Envelope{}, io.MultiReader(bytes.NewReader(testMessage("a@example.org", "x")), iotest.ErrReader(boom)))
	_, err := io.ReadAll(g)
	require.ErrorIs(t, err, boom)
	assert.Nil(t, g.Header())
}

// TestNilSigner: Sign on a nil Signer passes the bytes.
func TestNilSigner(t *testing.T) {
	var s *Signer
	msg := testMessage("a@example.org", "x\r\n")
	g := s.Sign(Envelope{}, bytes.NewReader(msg))
	got, err := io.ReadAll(g)
	require.NoError(t, err)
	assert.Equal(t, msg, got)
	assert.Nil(t, g.Header())
	assert.NoError(t, g.Err())
}

// TestConfigErrors: bad configs are refused with the field named.
func TestConfigErrors(t *testing.T) {
	cases := []struct {
		cfgs []Config
		want string
	}{
		{[]Config{{}}, "dkim[0]: domain: required"},
		{[]Config{{Domain: "exa mple.org"}}, `dkim[0]: domain "exa mple.org"`},
		{[]Config{{Domain: "example.org", Selector: "s/1"}}, `dkim[0]: selector "s/1"`},
		{[]Config{{Domain: "example.org", Selector: "_state"}}, `dkim[0]: selector "_state"`},
		{[]Config{{Domain: "example.org", Algorithm: "rsa-sha1"}}, `dkim[0]: algorithm "rsa-sha1"`},
		{[]Config{{Domain: "example.org"}, {Domain: "EXAMPLE.org", Selector: "s1"}}, `dkim[1]: selector "s1": domain example.org has it twice`},
		{[]Config{{Domain: "example.org", Headers: []string{"x:y"}}}, `dkim[0]: headers[0] "x:y"`},
		{[]Config{{Domain: "example.org", Key: "testdata/missing.pem"}}, "dkim[0]: dkim key example.org/s1: key: open testdata/missing.pem"},
		{[]Config{{Domain: "example.org", Key: "testdata/rsa512.pem"}}, "RSA key of 512 bits: at least 1024"},
		{[]Config{{Domain: "example.org", Key: "testdata/ec.pem"}}, "*ecdsa.PrivateKey key: want RSA or Ed25519"},
		{[]Config{{Domain: "example.org", Key: "testdata/ed25519.pem", Algorithm: RSASHA256}}, "testdata/ed25519.pem holds an ed25519-sha256 key, the config says rsa-sha256"},
		{[]Config{{Domain: "example.org", Publish: &PublishConfig{}}}, "dkim[0]: publish: no DNS provider"},
		{[]Config{{Domain: "example.org", Publish: &PublishConfig{Provider: &rfc2136{}, TTL: 3600}}}, "dkim[0]: publish: ttl: 3.6µs is less than a second"},
		{[]Config{{Domain: "example.org", Selector: strings.Repeat("s", 60)}}, "too long to rotate"},
	}
	for _, c := range cases {
		_, err := NewSigner(c.cfgs, NewKeys(fileStorage(t), nil), Options{})
		assert.ErrorContains(t, err, c.want)
	}
}

// TestKeyFiles: keys from PEM files sign, PKCS #1 and PKCS #8, and the
// algorithm comes from the file.
func TestKeyFiles(t *testing.T) {
	s, dns := newSigner(t, []Config{
		{Domain: "example.org", Selector: "p1", Key: "testdata/rsa2048-pkcs1.pem"},
		{Domain: "example.org", Selector: "p8", Key: "testdata/rsa2048-pkcs8.pem"},
		{Domain: "example.org", Selector: "ed", Key: "testdata/ed25519.pem"},
	}, Options{})
	signed, g := sign(t, s, Envelope{}, testMessage("a@example.org", "x\r\n"), 0)
	require.Len(t, g.Signatures(), 3)
	assert.Equal(t, Ed25519SHA256, g.Signatures()[2].Algorithm)
	for _, v := range msgauthVerify(t, dns, signed) {
		assert.NoError(t, v.Err)
	}
	_, err := s.Rotate(t.Context(), "example.org")
	assert.ErrorContains(t, err, "its key is the file testdata/rsa2048-pkcs1.pem: rotate it by hand")
}

func count(list []string, s string) int {
	n := 0
	for _, x := range list {
		if x == s {
			n++
		}
	}
	return n
}

func loadTestKey(t testing.TB, path string) *rsa.PrivateKey {
	t.Helper()
	k, err := NewKeys(fileStorage(t), nil).Get(t.Context(), KeySpec{Domain: "example.org", Selector: "s", File: path})
	require.NoError(t, err)
	return k.Signer.(*rsa.PrivateKey)
}
