package dkim

import (
	"bytes"
	"crypto"
	"fmt"
	"io"
	"strings"
	"testing"

	msgdkim "github.com/emersion/go-msgauth/dkim"
)

// benchMessage is a message of about size bytes: the usual header, and
// text lines.
func benchMessage(size int) []byte {
	msg := testMessage("alice@example.org", "")
	line := "The quick brown fox  jumps over the lazy dog, 0123456789 abcdefghijklmnop\r\n"
	for len(msg) < size {
		msg = append(msg, line...)
	}
	return msg[:size]
}

// BenchmarkSign: the cost of signing a message as it streams through (32
// KiB reads, as io.Copy does), with RSA 2048, Ed25519, and both.
func BenchmarkSign(b *testing.B) {
	algs := map[string][]Config{
		"rsa":     {{Domain: "example.org"}},
		"ed25519": {{Domain: "example.org", Algorithm: Ed25519SHA256}},
		"both":    {{Domain: "example.org"}, {Domain: "example.org", Algorithm: Ed25519SHA256}},
	}
	for _, name := range []string{"rsa", "ed25519", "both"} {
		s, _ := newSigner(b, algs[name], Options{})
		for _, size := range []int{1 << 10, 1 << 20} {
			msg := benchMessage(size)
			buf := make([]byte, 32<<10)
			b.Run(fmt.Sprintf("%s/%dKiB", name, size>>10), func(b *testing.B) {
				b.SetBytes(int64(size))
				b.ReportAllocs()
				for b.Loop() {
					g := s.Sign(Envelope{}, bytes.NewReader(msg))
					if _, err := io.CopyBuffer(io.Discard, struct{ io.Reader }{g}, buf); err != nil {
						b.Fatal(err)
					}
					if len(g.Signatures()) == 0 {
						b.Fatal(g.Err())
					}
				}
			})
		}
	}
}

// BenchmarkGoMsgauthSign: go-msgauth's signer on the same messages, for
// comparison (RSA 2048).
func BenchmarkGoMsgauthSign(b *testing.B) {
	key := loadTestKey(b, "testdata/rsa2048-pkcs8.pem")
	for _, size := range []int{1 << 10, 1 << 20} {
		msg := benchMessage(size)
		b.Run(fmt.Sprintf("rsa/%dKiB", size>>10), func(b *testing.B) {
			b.SetBytes(int64(size))
			b.ReportAllocs()
			for b.Loop() {
				s, err := msgdkim.NewSigner(&msgdkim.SignOptions{Domain: "example.org", Selector: "s1", Signer: key, Hash: crypto.SHA256,
					HeaderCanonicalization: msgdkim.CanonicalizationRelaxed, BodyCanonicalization: msgdkim.CanonicalizationRelaxed,
					HeaderKeys: strings.Split("from:from:to:subject:date:message-id:mime-version:content-type", ":")})
				if err != nil {
					b.Fatal(err)
				}
				if _, err := io.Copy(s, bytes.NewReader(msg)); err != nil {
					b.Fatal(err)
				}
				if err := s.Close(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
