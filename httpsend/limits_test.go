package httpsend_test

import (
	"bufio"
	"fmt"
	"io"
	"mime/quotedprintable"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/seed7b014b84/caddy-smtp/internal/peertest"
)

// jsonString quotes s for a JSON document.
func jsonString(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for _, r := range s {
		switch {
		case r == '"' || r == '\\':
			b.WriteByte('\\')
			b.WriteRune(r)
		case r < 0x20:
			fmt.Fprintf(&b, `\u%04x`, r)
		default:
			b.WriteRune(r)
		}
	}
	b.WriteByte('"')
	return b.String()
}

// messageTo returns the one message the sink got for rcpt.
func messageTo(t *testing.T, sink *peertest.Sink, rcpt string, n int) peertest.SinkMessage {
	t.Helper()
	for _, m := range sink.WaitMessages(t, n, 10*time.Second) {
		if m.To[0] == rcpt {
			return m
		}
	}
	t.Fatalf("no message to %s", rcpt)
	return peertest.SinkMessage{}
}

// CR, LF or NUL in any field of the JSON form (or of the envelope in the
// query) is a 400 naming the field, and nothing is sent. Before, a from of
// "\r\nBcc: evil@example.org;" passed net/mail (as a group) and was written
// as it was into the From header, adding a Bcc header; a trailing CRLF in
// to ended the header section.
func TestHeaderInjection(t *testing.T) {
	base, good := startCaddy(t, `{"handler": "smtp_send"}`)
	form := func(from, to, subject, text, header string) string {
		return fmt.Sprintf(`{"from": %s, "to": ["x@example.net", %s], "subject": %s, "text": %s, "headers": {"X-Tag": %s}}`,
			jsonString(from), jsonString(to), jsonString(subject), jsonString(text), jsonString(header))
	}
	const a, b = "app@example.org", "y@example.net"
	tests := []struct {
		name, body, want string
	}{
		{"Bcc through from", form("\r\nBcc: evil@example.org;", b, "s", "t", "h"), "from: CR at byte 0"},
		{"header end after from", form("app@example.org\r\n", b, "s", "t", "h"), "from: CR at byte 15"},
		{"LF in from", form("Bob\n <app@example.org>", b, "s", "t", "h"), "from: LF at byte 3"},
		{"NUL in from", form("app@example.org\x00", b, "s", "t", "h"), "from: NUL at byte 15"},
		{"header end after to", form(a, "y@example.net\r\n", "s", "t", "h"), "to[1]: CR at byte 13"},
		{"Bcc through to", form(a, "\r\nBcc: evil@example.org;", "s", "t", "h"), "to[1]: CR at byte 0"},
		{"LF in subject", form(a, b, "hi\nBcc: evil@example.org", "t", "h"), "subject: LF at byte 2"},
		{"NUL in subject", form(a, b, "hi\x00", "t", "h"), "subject: NUL at byte 2"},
		{"CR in a header", form(a, b, "s", "t", "v\r\nBcc: evil@example.org"), `headers["X-Tag"]: CR at byte 1`},
		{"NUL in a header", form(a, b, "s", "t", "\x00"), `headers["X-Tag"]: NUL at byte 0`},
		{"NUL in text", form(a, b, "s", "line 1\nline\x002", "h"), "text: NUL on line 2"},
		{"bare CR in text", form(a, b, "s", "line 1\r\nline 2\rline 3", "h"), "text: CR on line 2"},
		{"header name", `{"from": "app@example.org", "to": ["x@example.net"], "headers": {"X-Tag\r\nBcc": "evil@example.org"}}`, `headers["X-Tag\r\nBcc"]: not a header name`},
		{"Bcc header", `{"from": "app@example.org", "to": ["x@example.net"], "headers": {"bcc": "evil@example.org"}}`, `headers["bcc"]: every recipient would see it`},
		{"empty from", `{"from": "", "to": ["x@example.net"]}`, "from: the form needs a sender"},
		{"long address", `{"from": "app@example.org", "to": ["x@example.net", "` + strings.Repeat("a", 243) + `@example.net"]}`, "to[1]: an address of 255 octets, over the limit of 254 (RFC 5321)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, rep, _ := post(t, base, "application/json", tt.body, nil)
			assert.Equal(t, http.StatusBadRequest, code)
			assert.Contains(t, rep.Error, tt.want)
		})
	}
	t.Run("CR in the query's envelope", func(t *testing.T) {
		q := url.Values{"from": {"\r\nBcc: evil@example.org;"}, "to": {"x@example.net"}}
		code, rep, _ := post(t, base+"?"+q.Encode(), "message/rfc822", "Subject: s\r\n\r\nbody\r\n", nil)
		assert.Equal(t, http.StatusBadRequest, code)
		assert.Contains(t, rep.Error, "from: CR at byte 0")
	})

	// What is written: the parsed addresses, display names encoded.
	code, _, _ := post(t, base, "application/json", `{"from": "Jörg Müller <app@example.org>", "to": ["Zoë <z@example.net>", "w@example.net"],
		"subject": "s", "text": "t", "headers": {"Reply-To": "Équipe <help@example.org>, other@example.org"}}`, nil)
	require.Equal(t, http.StatusOK, code)
	msgs := good.WaitMessages(t, 1, 10*time.Second)
	require.Len(t, msgs, 1, "only the good request was sent")
	m := msgs[0]
	assert.Equal(t, "app@example.org", m.From)
	assert.Equal(t, []string{"z@example.net", "w@example.net"}, m.To)
	header := string(m.Header)
	assert.Contains(t, header, "From: =?utf-8?q?J=C3=B6rg_M=C3=BCller?= <app@example.org>\n")
	assert.Contains(t, header, "To: =?utf-8?q?Zo=C3=AB?= <z@example.net>, <w@example.net>\n")
	assert.Contains(t, header, "Reply-To: =?utf-8?q?=C3=89quipe?= <help@example.org>, <other@example.org>\n")
	assert.NotContains(t, header, "Bcc")
	assert.NotContains(t, m.MailArgs, "BODY=8BITMIME", "the form's message is 7-bit")
}

// The JSON form's text is quoted-printable when it is not ASCII or has a
// line over 998 octets, and 7bit otherwise; header fields are folded; a raw
// message with a line over 998 octets is refused, naming the line.
func TestLongLines(t *testing.T) {
	base, good := startCaddy(t, `{"handler": "smtp_send"}`)
	long := strings.Repeat("0123456789", 150) // 1500 octets
	tests := []struct {
		rcpt, text, encoding string
	}{
		{"ascii@example.net", "short\nlines\r\nonly\n", "7bit"},
		{"long@example.net", "first\n" + long + "\nlast", "quoted-printable"},
		{"utf8@example.net", "Grüße\nsoft = hard \n", "quoted-printable"},
	}
	for _, tt := range tests {
		code, rep, _ := post(t, base, "application/json", fmt.Sprintf(`{"from": "app@example.org", "to": [%q], "subject": %s, "text": %s}`,
			tt.rcpt, jsonString("a subject "+strings.Repeat("long enough to fold ", 20)+"Überschrift"), jsonString(tt.text)), nil)
		require.Equal(t, http.StatusOK, code, rep.Error)
	}
	for i, tt := range tests {
		m := messageTo(t, good, tt.rcpt, len(tests))
		assert.Contains(t, string(m.Header), "Content-Transfer-Encoding: "+tt.encoding+"\n", tt.rcpt)
		for _, line := range strings.Split(string(m.Raw), "\n") {
			assert.LessOrEqual(t, len(line), 998, "%s: %q", tt.rcpt, line)
		}
		if tt.encoding == "quoted-printable" {
			for _, line := range strings.Split(string(m.Body), "\n") {
				assert.LessOrEqual(t, len(line), 76, "%s: %q", tt.rcpt, line)
			}
		}
		assert.Regexp(t, `\nSubject: =\?utf-8\?q\?a_subject_long_enough_to_fold_[^\n]*\?=\n =\?utf-8\?q\?`, "\n"+string(m.Header), "folded between encoded words")
		// The text is what was posted, with LF line ends (as the sink
		// stores the CRLF that was sent).
		want := strings.ReplaceAll(tt.text, "\r\n", "\n")
		body := string(m.Body)
		if tt.encoding == "quoted-printable" {
			decoded, err := io.ReadAll(quotedprintable.NewReader(strings.NewReader(body)))
			require.NoError(t, err)
			body = strings.ReplaceAll(string(decoded), "\r\n", "\n")
		}
		assert.Equal(t, strings.TrimSuffix(want, "\n"), strings.TrimSuffix(body, "\n"), "message %d", i)
		assert.NotContains(t, m.MailArgs, "8BITMIME")
	}

	t.Run("a word too long to fold", func(t *testing.T) {
		code, rep, _ := post(t, base, "application/json", fmt.Sprintf(`{"from": "app@example.org", "to": ["x@example.net"], "subject": %q}`, long), nil)
		assert.Equal(t, http.StatusBadRequest, code)
		assert.Contains(t, rep.Error, "subject: a word of the header is too long to fold")
	})
	t.Run("raw message, long line", func(t *testing.T) {
		for _, eol := range []string{"\r\n", "\n"} {
			raw := "From: app@example.org" + eol + "Subject: long" + eol + eol + "ok" + eol + strings.Repeat("x", 999) + eol + "end" + eol
			code, rep, _ := post(t, base+"?from=app@example.org&to=x@example.net", "message/rfc822", raw, nil)
			assert.Equal(t, http.StatusBadRequest, code)
			assert.Contains(t, rep.Error, "body: line 5 is 999 octets long, over the limit of 998")
		}
	})
	t.Run("raw message, 998 octets and CRLF", func(t *testing.T) {
		raw := "From: app@example.org\r\nSubject: long\r\n\r\n" + strings.Repeat("x", 998) + "\r\n"
		code, rep, _ := post(t, base+"?from=app@example.org&to=raw998@example.net", "message/rfc822", raw, nil)
		assert.Equal(t, http.StatusOK, code, rep.Error)
	})
}

// More than max_recipients is a 400 (default 100); past max_concurrent
// requests at once, the next gets 503 with Retry-After without its body
// being read, and a slot is free again when a request ends.
func TestRequestLimits(t *testing.T) {
	base, good := startCaddy(t, `{"handler": "smtp_send", "max_concurrent": 1}`)
	rcpts := func(n int) url.Values {
		q := url.Values{"from": {"app@example.org"}}
		for i := range n {
			q.Add("to", fmt.Sprintf("r%d@example.net", i))
		}
		return q
	}
	raw := "From: app@example.org\r\nSubject: s\r\n\r\nbody\r\n"
	code, rep, _ := post(t, base+"?"+rcpts(101).Encode(), "message/rfc822", raw, nil)
	assert.Equal(t, http.StatusBadRequest, code)
	assert.Contains(t, rep.Error, "to: 101 recipients, over max_recipients (100)")
	to := make([]string, 101)
	for i := range to {
		to[i] = jsonString(fmt.Sprintf("r%d@example.net", i))
	}
	code, rep, _ = post(t, base, "application/json", `{"from": "app@example.org", "to": [`+strings.Join(to, ",")+`]}`, nil)
	assert.Equal(t, http.StatusBadRequest, code)
	assert.Contains(t, rep.Error, "to: 101 recipients, over max_recipients (100)")

	// One request holds the only slot: its body is not all there yet.
	held, err := net.Dial("tcp", strings.TrimPrefix(strings.TrimSuffix(base, "/"), "http://"))
	require.NoError(t, err)
	t.Cleanup(func() { held.Close() })
	_, err = fmt.Fprintf(held, "POST /?from=app@example.org&to=held@example.net HTTP/1.1\r\nHost: x\r\nContent-Type: message/rfc822\r\nContent-Length: %d\r\n\r\n%s", len(raw), raw[:10])
	require.NoError(t, err)

	var busy *http.Response
	for i := 0; i < 100 && busy == nil; i++ { // until the held request has its slot; at most 10 s
		code, rep, h := post(t, base+"?from=app@example.org&to=busy@example.net", "message/rfc822", raw, nil)
		t.Logf("try %d: %d %s", i, code, rep.Error)
		if code == http.StatusServiceUnavailable {
			busy = &http.Response{StatusCode: code, Header: h}
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if busy == nil {
		// Say what became of the held request.
		_ = held.SetReadDeadline(time.Now().Add(time.Second))
		got, _ := io.ReadAll(held)
		t.Fatalf("a second request while one is held gets 503; the held connection read: %q", got)
	}
	assert.Equal(t, "5", busy.Header.Get("Retry-After"))

	// The held request ends; the slot is free again.
	_, err = io.WriteString(held, raw[10:])
	require.NoError(t, err)
	resp, err := http.ReadResponse(bufio.NewReader(held), nil)
	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, http.StatusOK, resp.StatusCode)
	code, _, _ = post(t, base+"?"+rcpts(100).Encode(), "message/rfc822", raw, nil)
	assert.Equal(t, http.StatusOK, code, "100 recipients, and a free slot")
	messageTo(t, good, "held@example.net", 2)
}
