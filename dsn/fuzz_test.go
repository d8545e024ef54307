package dsn

import (
	"bytes"
	"errors"
	"io"
	"testing"

	gomessage "github.com/emersion/go-message"

	"github.com/seed7b014b84/caddy-smtp/queue"
	"github.com/seed7b014b84/caddy-smtp/transport"
)

// FuzzHeaderSection builds notices about originals whose header section is
// anything at all: Build never panics, and what it makes is a MIME message
// go-message reads, with CRLF lines of at most 998 octets, 7-bit unless it
// says otherwise.
func FuzzHeaderSection(f *testing.F) {
	f.Add([]byte("From: a@example.org\r\nSubject: hi\r\n"), uint8(0))
	f.Add([]byte("Subject: =?utf-8?q?caf=C3=A9?=\nMessage-ID: <x@y>\n"), uint8(1))
	f.Add([]byte("Subject: caf\xc3\xa9\r\n\tfolded\r\n"), uint8(2))
	f.Add([]byte(" leading space\r\n\r\n\r\n"), uint8(3))
	f.Add([]byte("--=_dsn_x\r\nContent-Type: text/plain\r\n"), uint8(4))
	f.Add([]byte("X: "+string(bytes.Repeat([]byte("a"), 2000))+"\rY: \x00\x80\xff\n"), uint8(5))
	f.Add([]byte("Subject: \x1b[31mred\x7f\r\nMessage-ID: <a b>\r\n"), uint8(6))
	f.Fuzz(func(t *testing.T, header []byte, flags uint8) {
		body := append(append([]byte{}, header...), "\r\n\r\nbody\r\n"...)
		if flags&8 != 0 {
			body = header // no empty line
		}
		m := &queue.Message{ID: "06an34yy0000000000f1", From: "alice@example.org", Arrived: goldenArrived,
			SMTPUTF8: flags&1 != 0, Ret: []string{"", "FULL", "HDRS"}[int(flags>>1)%3],
			Recipients: []queue.Recipient{{Addr: "bob@example.net", State: queue.Failed, Host: "mx.example.net",
				LastReply: &transport.Reply{Code: 550, Enhanced: "5.1.1", Lines: []string{string(header)}}}}}
		kind := []string{"failed", "delayed", "relayed"}[int(flags>>4)%3]
		o := goldenOptions()
		o.Boundary = nil // random, as in production
		n, err := Build(o, m, bodyOf(string(body)), []queue.News{{Index: 0, Kind: kind}})
		if err != nil {
			t.Fatalf("Build: %v", err)
		}
		raw, err := io.ReadAll(n.Body)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.HasSuffix(raw, []byte("\r\n")) {
			t.Fatal("no CRLF at the end")
		}
		for i, l := range bytes.Split(raw[:len(raw)-2], []byte("\r\n")) {
			if len(l) > hardLine {
				t.Fatalf("line %d has %d octets", i+1, len(l))
			}
			if bytes.ContainsAny(l, "\r\n") {
				t.Fatalf("line %d has a bare CR or LF", i+1)
			}
			if !n.Message.EightBit && bytes.ContainsFunc(l, func(r rune) bool { return r >= 0x80 }) {
				t.Fatalf("line %d has 8-bit content in a notice said to be 7-bit", i+1)
			}
		}
		e, err := gomessage.Read(bytes.NewReader(raw))
		if err != nil {
			t.Fatalf("go-message: %v", err)
		}
		mr := e.MultipartReader()
		if mr == nil {
			t.Fatal("not multipart")
		}
		parts := 0
		for {
			p, err := mr.NextPart()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatalf("part %d: %v", parts+1, err)
			}
			if _, err := io.Copy(io.Discard, p.Body); err != nil {
				t.Fatalf("part %d: %v", parts+1, err)
			}
			parts++
		}
		if parts != 3 {
			t.Fatalf("%d parts, want 3", parts)
		}
	})
}
