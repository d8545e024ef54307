package httpsend

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"mime"
	"net/mail"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/seed7b014b84/caddy-smtp/delivery"
)

// form is the JSON form of a message.
type form struct {
	From    string            `json:"from"`
	To      []string          `json:"to"`
	Subject string            `json:"subject"`
	Text    string            `json:"text"`
	Headers map[string]string `json:"headers,omitempty"`
}

// headerName is a header field name (RFC 5322: printable ASCII but colon).
var headerName = regexp.MustCompile(`^[!-9;-~]+$`)

// reserved are the headers the form writes itself.
var reserved = map[string]bool{"from": true, "to": true, "subject": true, "date": true, "message-id": true,
	"mime-version": true, "content-type": true, "content-transfer-encoding": true}

// message composes the form as a text/plain UTF-8 message.
func (f *form) message(hostname string) (*delivery.Message, error) {
	msg, err := envelope(f.From, f.To)
	if err != nil {
		return nil, err
	}
	if strings.ContainsAny(f.Subject, "\r\n") {
		return nil, badRequest("subject: a line break in a header")
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, "From: %s\r\n", f.From)
	fmt.Fprintf(&b, "To: %s\r\n", strings.Join(f.To, ", "))
	fmt.Fprintf(&b, "Subject: %s\r\n", mime.QEncoding.Encode("utf-8", f.Subject))
	fmt.Fprintf(&b, "Date: %s\r\n", time.Now().Format(time.RFC1123Z))
	var id [12]byte
	_, _ = rand.Read(id[:])
	fmt.Fprintf(&b, "Message-ID: <%s@%s>\r\n", hex.EncodeToString(id[:]), hostname)
	names := make([]string, 0, len(f.Headers))
	for name := range f.Headers {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		value := f.Headers[name]
		switch {
		case !headerName.MatchString(name):
			return nil, badRequest("headers[%q]: not a header name", name)
		case reserved[strings.ToLower(name)]:
			return nil, badRequest("headers[%q]: set by the form itself", name)
		case strings.ContainsAny(value, "\r\n"):
			return nil, badRequest("headers[%q]: a line break in a header", name)
		}
		fmt.Fprintf(&b, "%s: %s\r\n", name, mime.QEncoding.Encode("utf-8", value))
	}
	encoding := "7bit"
	if !isASCII([]byte(f.Text)) {
		encoding, msg.EightBit = "8bit", true
	}
	fmt.Fprintf(&b, "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: %s\r\n\r\n", encoding)
	b.WriteString(f.Text)
	msg.Body, msg.Size = bytes.NewReader(b.Bytes()), int64(b.Len())
	return msg, nil
}

// addrSpec reads an address ("a@b" or "Name <a@b>") and returns a@b.
// The sender may be empty (a bounce).
func addrSpec(field, s string, emptyOK bool) (string, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		if emptyOK {
			return "", nil
		}
		return "", badRequest("%s: empty address", field)
	}
	a, err := mail.ParseAddress(s)
	if err != nil {
		return "", badRequest("%s: %q is not an address: %v", field, s, err)
	}
	return a.Address, nil
}
