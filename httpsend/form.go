package httpsend

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"mime"
	"mime/quotedprintable"
	"net/mail"
	"regexp"
	"slices"
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
	// Notify, Ret and EnvID are the DSN parameters (RFC 3461): NOTIFY of
	// every recipient (["NEVER"], or some of SUCCESS, FAILURE, DELAY),
	// RET ("FULL" or "HDRS") and ENVID.
	Notify []string `json:"notify,omitempty"`
	Ret    string   `json:"ret,omitempty"`
	EnvID  string   `json:"envid,omitempty"`
}

// headerName is a header field name (RFC 5322: printable ASCII but colon).
var headerName = regexp.MustCompile(`^[!-9;-~]+$`)

// reserved are the headers the form writes itself.
var reserved = map[string]bool{"from": true, "to": true, "subject": true, "date": true, "message-id": true,
	"mime-version": true, "content-type": true, "content-transfer-encoding": true}

// addressHeaders are the headers of headers that hold addresses: they are
// parsed, and written as From and To are, display names encoded.
var addressHeaders = map[string]bool{"reply-to": true, "cc": true, "sender": true}

// message composes the form as a text/plain UTF-8 message: the header
// fields folded, words that are not ASCII encoded (RFC 2047), and the text
// in quoted-printable when it is not ASCII or has a line over 998 octets,
// so that the message is 7-bit and fits any server. Every field is checked
// first: CR, LF or NUL in any but text is a 400 naming the field.
func (f *form) message(hostname string, maxRcpt int) (*delivery.Message, error) {
	body, encoding, err := textBody(f.Text)
	if err != nil {
		return nil, err
	}
	msg, header, err := f.header(hostname, maxRcpt, encoding)
	if err != nil {
		return nil, err
	}
	b := append(header, body...)
	msg.Body, msg.Size = bytes.NewReader(b), int64(len(b))
	// Everything the form writes is ASCII but an address that is not
	// (SMTPUTF8), which the message then carries as 8-bit.
	msg.EightBit = !isASCII(b)
	return msg, nil
}

// header checks the form's fields and returns the message's envelope and
// its header section (ending with the empty line), for a text in the
// given Content-Transfer-Encoding.
func (f *form) header(hostname string, maxRcpt int, encoding string) (*delivery.Message, []byte, error) {
	from, to, err := addresses(f.From, f.To, maxRcpt)
	if err != nil {
		return nil, nil, err
	}
	if from == nil {
		return nil, nil, badRequest("from: the form needs a sender for the From header (send a raw message for a null sender)")
	}
	if err := noControls("subject", f.Subject); err != nil {
		return nil, nil, err
	}

	var b bytes.Buffer
	h := headerWriter{b: &b}
	h.field("from", "From", from.String())
	h.field("to", "To", addressList(to))
	h.field("subject", "Subject", mime.QEncoding.Encode("utf-8", f.Subject))
	h.field("date", "Date", time.Now().Format(time.RFC1123Z))
	var id [12]byte
	_, _ = rand.Read(id[:])
	h.field("message-id", "Message-ID", fmt.Sprintf("<%s@%s>", hex.EncodeToString(id[:]), hostname))
	names := make([]string, 0, len(f.Headers))
	for name := range f.Headers {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		value, field := f.Headers[name], fmt.Sprintf("headers[%q]", name)
		lower := strings.ToLower(name)
		switch {
		case !headerName.MatchString(name):
			return nil, nil, badRequest("%s: not a header name", field)
		case reserved[lower]:
			return nil, nil, badRequest("%s: set by the form itself", field)
		case lower == "bcc":
			return nil, nil, badRequest("%s: every recipient would see it; put blind copies in to, which no header names", field)
		}
		if err := noControls(field, value); err != nil {
			return nil, nil, err
		}
		if addressHeaders[lower] {
			list, err := mail.ParseAddressList(value)
			if err != nil {
				return nil, nil, badRequest("%s: %q is not a list of addresses: %v", field, value, err)
			}
			value = addressList(list)
		} else {
			value = mime.QEncoding.Encode("utf-8", value)
		}
		h.field(field, name, value)
	}
	h.field("content-type", "MIME-Version", "1.0")
	h.field("content-type", "Content-Type", "text/plain; charset=utf-8")
	h.field("content-type", "Content-Transfer-Encoding", encoding)
	if h.err != nil {
		return nil, nil, h.err
	}
	b.WriteString("\r\n")
	msg := envelope(from, to)
	if err := dsnParams(msg, f.Notify, f.Ret, f.EnvID); err != nil {
		return nil, nil, err
	}
	return msg, b.Bytes(), nil
}

// dsnParams checks the DSN parameters and sets them on msg: NOTIFY on every
// recipient, RET and ENVID on the message.
func dsnParams(msg *delivery.Message, notify []string, ret, envid string) error {
	var nf []string
	for i, n := range notify {
		switch v := strings.ToUpper(strings.TrimSpace(n)); v {
		case "NEVER", "SUCCESS", "FAILURE", "DELAY":
			nf = append(nf, v)
		default:
			return badRequest("notify[%d]: %q is not NEVER, SUCCESS, FAILURE or DELAY", i, n)
		}
	}
	if len(nf) > 1 && slices.Contains(nf, "NEVER") {
		return badRequest("notify: NEVER goes alone")
	}
	switch r := strings.ToUpper(ret); r {
	case "", "FULL", "HDRS":
		msg.Ret = r
	default:
		return badRequest("ret: %q is not FULL or HDRS", ret)
	}
	if len(envid) > 100 || strings.ContainsFunc(envid, func(r rune) bool { return r < '!' || r > '~' }) {
		return badRequest("envid: at most 100 printable ASCII characters, without spaces")
	}
	msg.EnvID = envid
	for i := range msg.To {
		msg.To[i].Notify = nf
	}
	return nil
}

func addressList(list []*mail.Address) string {
	s := make([]string, len(list))
	for i, a := range list {
		s[i] = a.String()
	}
	return strings.Join(s, ", ")
}

// textBody returns the text as the body of the message, with CRLF line
// ends, and its Content-Transfer-Encoding: 7bit, or quoted-printable when
// the text is not ASCII or has a line over MaxLineLength octets. A line
// ends with LF or CRLF; NUL and a CR on its own are refused.
func textBody(text string) ([]byte, string, error) {
	text = strings.ReplaceAll(text, "\r\n", "\n")
	if i := strings.IndexAny(text, "\r\x00"); i >= 0 {
		return nil, "", badRequest("text: %s on line %d: NUL, and CR but before LF, are not allowed",
			charName(text[i]), 1+strings.Count(text[:i], "\n"))
	}
	long := false
	for line := range strings.SplitSeq(text, "\n") {
		if len(line) > MaxLineLength {
			long = true
			break
		}
	}
	var b bytes.Buffer
	if !long && isASCII([]byte(text)) {
		b.WriteString(strings.ReplaceAll(text, "\n", "\r\n"))
		return b.Bytes(), "7bit", nil
	}
	// The writer ends lines with CRLF and keeps them under 76 characters
	// with soft line breaks.
	w := quotedprintable.NewWriter(&b)
	_, _ = w.Write([]byte(text))
	_ = w.Close()
	return b.Bytes(), "quoted-printable", nil
}

// headerWriter writes header fields, folded, keeping the first error.
type headerWriter struct {
	b   *bytes.Buffer
	err error
}

// foldAt is the length past which a header line is folded where it can be
// (RFC 5322 section 2.1.1's 78 characters).
const foldAt = 78

// field writes "name: value" CRLF, folded before a space so that lines
// stay under foldAt characters where the value's spaces allow, and
// refuses (naming field) a line that would still be over MaxLineLength.
// The value holds no CR or LF (noControls).
func (h *headerWriter) field(field, name, value string) {
	if h.err != nil {
		return
	}
	line := len(name) + 1
	h.b.WriteString(name)
	h.b.WriteString(":")
	rest := " " + value
	for rest != "" {
		// The next word with the spaces before it.
		end := len(rest) - len(strings.TrimLeft(rest, " "))
		if i := strings.IndexByte(rest[end:], ' '); i >= 0 {
			end += i
		} else {
			end = len(rest)
		}
		word := rest[:end]
		rest = rest[end:]
		// Fold before a word (never leaving a line of spaces only).
		if line+len(word) > foldAt && line > len(name)+1 && strings.TrimLeft(word, " ") != "" {
			h.b.WriteString("\r\n")
			line = 0
		}
		h.b.WriteString(word)
		line += len(word)
		if line > MaxLineLength {
			h.err = badRequest("%s: a word of the header is too long to fold under %d octets a line", field, MaxLineLength)
			return
		}
	}
	h.b.WriteString("\r\n")
}
