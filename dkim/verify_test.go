package dkim

import (
	"bytes"
	"context"
	"crypto"
	"io"
	"os"
	"runtime"
	"strings"
	"testing"

	msgdkim "github.com/emersion/go-msgauth/dkim"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// labSigner makes the signers' keys, starts the lab with their records in
// Knot, and starts the Signer with the app's resolver asking unbound.
func labSigner(t *testing.T, cfgs []Config) (*Signer, *lab) {
	t.Helper()
	s, err := NewSigner(cfgs, NewKeys(fileStorage(t), testLogger(t)), Options{Logger: testLogger(t)})
	require.NoError(t, err)
	recs, err := s.Records(context.Background(), "")
	require.NoError(t, err)
	l := startLab(t, zoneRecords(recs), false)
	s.opts.Resolver = l.resolver
	require.NoError(t, s.Start(context.Background()))
	t.Cleanup(s.Stop)
	return s, l
}

// TestVerifiers: messages signed with RSA, with Ed25519, and with both,
// verified by python3-dkim and by OpenDKIM's opendkim-testmsg, the keys
// served by Knot through unbound; a changed body fails with both.
func TestVerifiers(t *testing.T) {
	s, l := labSigner(t, []Config{
		{Domain: "example.test", Selector: "s1"},
		{Domain: "example.test", Selector: "e1", Algorithm: Ed25519SHA256},
		{Domain: "rsa.example.test"},
		{Domain: "ed.example.test", Algorithm: Ed25519SHA256},
	})
	cases := []struct {
		from string
		algs []string
	}{
		{"alice@rsa.example.test", []string{"rsa-sha256"}},
		{"alice@ed.example.test", []string{"ed25519-sha256"}},
		{"alice@example.test", []string{"rsa-sha256", "ed25519-sha256"}},
	}
	for _, c := range cases {
		t.Run(c.from, func(t *testing.T) {
			msg := testMessage(c.from, "Hello,\r\n\r\n  indented  line \t\r\nbye\r\n\r\n")
			signed, g := sign(t, s, Envelope{}, msg, 0)
			require.NoError(t, g.Err())
			file := writeMessage(t, signed)

			res := l.pythonVerify(t, file)
			require.Len(t, res, len(c.algs))
			for i, r := range res {
				assert.True(t, r.OK, "python3-dkim: %+v", r)
				assert.Equal(t, c.algs[i], r.A)
			}
			assert.NoError(t, l.opendkimVerify(t, file))

			tampered := bytes.Replace(signed, []byte("bye"), []byte("Bye"), 1)
			file = writeMessage(t, tampered)
			for _, r := range l.pythonVerify(t, file) {
				assert.False(t, r.OK, "python3-dkim accepted a changed body: %+v", r)
			}
			err := l.opendkimVerify(t, file)
			assert.Error(t, err, "opendkim-testmsg accepted a changed body")
			t.Logf("changed body: %v", err)
		})
	}
}

// TestVerifiersSecondFrom: a From field added to a signed message, at the
// top or at the bottom of the header, fails with both verifiers, and h=
// lists From once more than the message has. Neither real verifier can
// show the oversigning by itself: python3-dkim refuses a second From
// whatever the signer did (it adds a From of its own to h=), and
// opendkim-testmsg refuses a message with two From fields before looking
// at any signature ("dkim_chunk(): Syntax error", as for a message
// without Date). go-msgauth, which has no such rule, shows it: a signature
// that lists From once (made by go-msgauth with the same key) verifies
// with a From added at the top; ours does not.
func TestVerifiersSecondFrom(t *testing.T) {
	s, l := labSigner(t, []Config{{Domain: "example.test"}})
	msg := testMessage("alice@example.test", "Hello\r\n")
	signed, g := sign(t, s, Envelope{}, msg, 0)
	tags := sigTags(t, g.Header())
	require.Len(t, tags, 1)
	assert.Equal(t, 2, count(strings.Split(tags[0]["h"], ":"), "from"), "h=%s", tags[0]["h"])

	addTop := func(m []byte) []byte {
		return append([]byte("From: Mallory <mallory@example.test>\r\n"), m...)
	}
	addBottom := func(m []byte) []byte {
		i := bytes.Index(m, []byte("\r\n\r\n"))
		return append(append(append([]byte(nil), m[:i+2]...), "From: Mallory <mallory@example.test>\r\n"...), m[i+2:]...)
	}
	file := writeMessage(t, signed)
	require.True(t, l.pythonVerify(t, file)[0].OK)
	require.NoError(t, l.opendkimVerify(t, file))
	for name, add := range map[string]func([]byte) []byte{"top": addTop, "bottom": addBottom} {
		file := writeMessage(t, add(signed))
		r := l.pythonVerify(t, file)
		require.Len(t, r, 1)
		assert.False(t, r[0].OK, "python3-dkim, From added at the %s", name)
		t.Logf("python3-dkim, From added at the %s: %s", name, r[0].Error)
		err := l.opendkimVerify(t, file)
		assert.Error(t, err, "opendkim-testmsg, From added at the %s", name)
		t.Logf("From added at the %s: %v", name, err)
	}

	// go-msgauth: ours with a From added at the top fails...
	dns := l.resolver
	lookup := func(name string) ([]string, error) { return dns.LookupTXT(context.Background(), name) }
	vs, err := msgdkim.VerifyWithOptions(bytes.NewReader(addTop(signed)), &msgdkim.VerifyOptions{LookupTXT: lookup})
	require.NoError(t, err)
	assert.Error(t, vs[0].Err, "go-msgauth accepted a From added at the top of an oversigned message")
	// ... where a signature listing From once still verifies.
	k, err := s.keys.Load(context.Background(), "example.test", "s1")
	require.NoError(t, err)
	var once bytes.Buffer
	require.NoError(t, msgdkim.Sign(&once, bytes.NewReader(msg), &msgdkim.SignOptions{
		Domain: "example.test", Selector: "s1", Signer: k.Signer, Hash: crypto.SHA256,
		HeaderCanonicalization: msgdkim.CanonicalizationRelaxed, BodyCanonicalization: msgdkim.CanonicalizationRelaxed,
		HeaderKeys: []string{"From", "To", "Subject"},
	}))
	vs, err = msgdkim.VerifyWithOptions(bytes.NewReader(addTop(once.Bytes())), &msgdkim.VerifyOptions{LookupTXT: lookup})
	require.NoError(t, err)
	assert.NoError(t, vs[0].Err, "without oversigning, a From added at the top verifies")
	file = writeMessage(t, addTop(once.Bytes()))
	assert.False(t, l.pythonVerify(t, file)[0].OK, "python3-dkim refuses a second From even without oversigning")
	assert.Error(t, l.opendkimVerify(t, file), "opendkim-testmsg refuses two From fields")
}

// bigBody is a reader of n bytes of text lines, made as it is read.
type bigBody struct {
	n, off int64
}

func (b *bigBody) Read(p []byte) (int, error) {
	if b.off >= b.n {
		return 0, io.EOF
	}
	const line = "The quick brown fox  jumps over the lazy dog, \t0123456789 abcdefghijklmnop \r\n"
	n := 0
	for n < len(p) && b.off < b.n {
		c := copy(p[n:], line[b.off%int64(len(line)):])
		c = int(min(int64(c), b.n-b.off))
		n += c
		b.off += int64(c)
	}
	return n, nil
}

// TestVerifiers20MiB: a 20 MiB message streams through the signer into a
// file with a few KiB allocated (the header section, the signature), and
// both verifiers accept it, with RSA and Ed25519.
func TestVerifiers20MiB(t *testing.T) {
	s, l := labSigner(t, []Config{{Domain: "example.test"}, {Domain: "example.test", Algorithm: Ed25519SHA256}})
	const size = 20 << 20
	// OpenDKIM refuses a message without Date ("Syntax error").
	header := "From: alice@example.test\r\nTo: bob@example.net\r\nSubject: big\r\nDate: Mon, 2 Jun 2025 10:00:00 +0000\r\n\r\n"
	f, err := os.Create(writeMessage(t, nil) + ".body")
	require.NoError(t, err)
	defer f.Close()
	buf := make([]byte, 32<<10)

	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	g := s.Sign(Envelope{}, io.MultiReader(strings.NewReader(header), &bigBody{n: size}))
	n, err := io.CopyBuffer(struct{ io.Writer }{f}, g, buf)
	runtime.ReadMemStats(&after)
	require.NoError(t, err)
	require.EqualValues(t, len(header)+size, n)
	require.NoError(t, g.Err())
	require.Len(t, g.Signatures(), 2)
	alloc := after.TotalAlloc - before.TotalAlloc
	t.Logf("signing %d MiB allocated %d KiB in %d allocations", size>>20, alloc>>10, after.Mallocs-before.Mallocs)
	assert.Less(t, alloc, uint64(1<<20), "signing a 20 MiB message must not hold it")

	// The stored message: the signature fields, then the bytes as passed.
	signed, err := os.Create(f.Name() + ".eml")
	require.NoError(t, err)
	defer signed.Close()
	_, err = signed.Write(g.Header())
	require.NoError(t, err)
	_, err = f.Seek(0, io.SeekStart)
	require.NoError(t, err)
	_, err = io.Copy(signed, f)
	require.NoError(t, err)

	res := l.pythonVerify(t, signed.Name())
	require.Len(t, res, 2)
	for _, r := range res {
		assert.True(t, r.OK, "python3-dkim: %+v", r)
	}
	assert.NoError(t, l.opendkimVerify(t, signed.Name()))
}
