package dsn

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
	"text/template"
	"time"

	gomessage "github.com/emersion/go-message"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/seed7b014b84/caddy-smtp/queue"
	"github.com/seed7b014b84/caddy-smtp/transport"
)

// failedMsg is a message with one recipient refused for good.
func failedMsg() *queue.Message {
	return &queue.Message{ID: "06an34yy0000000000b1", From: "alice@example.org", Arrived: goldenArrived,
		Recipients: []queue.Recipient{{Addr: "bob@example.net", State: queue.Failed, Attempts: 1, LastAttempt: goldenLast,
			Host: "mx.example.net", LastError: "rejected", LastReply: &transport.Reply{Code: 550, Enhanced: "5.1.1", Lines: []string{"no such user"}}}}}
}

var failedNews = []queue.News{{Index: 0, Kind: "failed"}}

// part is one part of a notice as go-message reads it.
type part struct {
	typ    string
	params map[string]string
	cte    string
	body   string // decoded
}

// readParts reads a notice's parts with go-message.
func readParts(t *testing.T, raw []byte) []part {
	t.Helper()
	e, err := gomessage.Read(bytes.NewReader(raw))
	require.NoError(t, err)
	mr := e.MultipartReader()
	require.NotNil(t, mr, "the notice is multipart")
	var parts []part
	for {
		p, err := mr.NextPart()
		if errors.Is(err, io.EOF) {
			return parts
		}
		require.NoError(t, err)
		typ, params, err := p.Header.ContentType()
		require.NoError(t, err)
		body, err := io.ReadAll(p.Body)
		require.NoError(t, err)
		parts = append(parts, part{typ: typ, params: params, cte: p.Header.Get("Content-Transfer-Encoding"), body: string(body)})
	}
}

func build(t *testing.T, o Options, m *queue.Message, body queue.Body, news []queue.News) (queue.Notice, []byte) {
	t.Helper()
	n, err := Build(o, m, body, news)
	require.NoError(t, err)
	raw, err := io.ReadAll(n.Body)
	require.NoError(t, err)
	checkLines(t, raw, n.Message.EightBit)
	return n, raw
}

// TestNullSender: a message from the null sender (a notice itself) never
// gets a notice.
func TestNullSender(t *testing.T) {
	m := failedMsg()
	m.From = ""
	_, err := Build(goldenOptions(), m, bodyOf(origLF), failedNews)
	require.ErrorIs(t, err, ErrNullSender)
}

// TestBadInput: what Build cannot use is a clear error, never a panic.
func TestBadInput(t *testing.T) {
	long := failedMsg()
	long.From = strings.Repeat("a", 250) + "@example.org"
	crlf := failedMsg()
	crlf.From = "a@example.org\r\nBcc: x@example.net"
	noHost := goldenOptions()
	noHost.ReportingMTA = ""
	badHost := goldenOptions()
	badHost.ReportingMTA = "mail example org"
	badBoundary := goldenOptions()
	badBoundary.Boundary = func() string { return "has\"quote" }
	for _, c := range []struct {
		name string
		o    Options
		m    *queue.Message
		news []queue.News
		want string
	}{
		{"no message", goldenOptions(), nil, failedNews, "no message"},
		{"no news", goldenOptions(), failedMsg(), nil, "no news"},
		{"index past the end", goldenOptions(), failedMsg(), []queue.News{{Index: 1, Kind: "failed"}}, "recipient 1 of message"},
		{"negative index", goldenOptions(), failedMsg(), []queue.News{{Index: -1, Kind: "failed"}}, "recipient -1 of message"},
		{"unknown kind", goldenOptions(), failedMsg(), []queue.News{{Index: 0, Kind: "bounced"}}, `unknown kind of news "bounced"`},
		{"sender too long", goldenOptions(), long, failedNews, "sender address"},
		{"sender with CRLF", goldenOptions(), crlf, failedNews, "sender address"},
		{"no reporting MTA", noHost, failedMsg(), failedNews, "reporting MTA"},
		{"bad reporting MTA", badHost, failedMsg(), failedNews, "reporting MTA"},
		{"bad boundary", badBoundary, failedMsg(), failedNews, "not a valid MIME boundary"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := Build(c.o, c.m, bodyOf(origLF), c.news)
			require.Error(t, err)
			assert.Contains(t, err.Error(), c.want)
		})
	}
}

// TestStatusCode: the Status field, from the reply or derived (RFC 3463).
func TestStatusCode(t *testing.T) {
	r := func(code int, enh string) *transport.Reply { return &transport.Reply{Code: code, Enhanced: enh} }
	for _, c := range []struct {
		kind     string
		reply    *transport.Reply
		errClass string
		want     string
	}{
		{"failed", r(550, "5.1.1"), "rejected", "5.1.1"},
		{"failed", r(550, ""), "rejected", "5.0.0"},
		{"failed", r(554, "5.7.26"), "rejected", "5.7.26"},
		{"failed", r(550, "4.1.1"), "rejected", "5.0.0"},    // enhanced class disagrees with the code
		{"failed", r(550, "5.01.1"), "rejected", "5.0.0"},   // leading zero
		{"failed", r(550, "5.1.1234"), "rejected", "5.0.0"}, // too many digits
		{"failed", r(550, "5.1"), "rejected", "5.0.0"},
		{"failed", r(550, "5.4.7"), "expired", "5.4.7"},
		{"failed", r(451, ""), "expired", "4.4.7"}, // a temporary code may end in failure (RFC 3464, 2.3.3)
		{"failed", nil, "expired", "5.4.7"},
		{"failed", nil, "", "5.0.0"},
		{"failed", r(250, "2.0.0"), "", "5.0.0"}, // a success reply says nothing of a failure
		{"delayed", r(451, "4.7.1"), "rejected", "4.7.1"},
		{"delayed", r(451, ""), "dns", "4.4.4"},
		{"delayed", nil, "connection", "4.4.1"},
		{"delayed", nil, "tls", "4.7.0"},
		{"delayed", nil, "dane", "4.7.0"},
		{"delayed", nil, "mta_sts", "4.7.0"},
		{"delayed", nil, "config", "4.3.5"},
		{"delayed", nil, "unexpected_reply", "4.5.0"},
		{"delayed", r(421, ""), "io", "4.0.0"},
		{"delayed", r(999, "4.1.1"), "", "4.0.0"}, // not a reply code
		{"delivered", r(250, "2.1.5"), "", "2.1.5"},
		{"delivered", r(250, ""), "", "2.0.0"},
		{"relayed", nil, "", "2.0.0"},
		{"relayed", r(550, "5.1.1"), "", "2.0.0"},
		{"expanded", r(250, "2.0.0"), "", "2.0.0"},
	} {
		got := statusCode(c.kind, c.reply, c.errClass)
		assert.Equal(t, c.want, got, "%s, reply %v, %s", c.kind, c.reply, c.errClass)
		assert.True(t, validStatus(got), got)
	}
}

// TestAddressFields: addresses as the delivery status gives them (RFC 3464,
// section 2.3.2; RFC 6533, section 3).
func TestAddressFields(t *testing.T) {
	assert.Equal(t, "rfc822;bob@example.net", address("bob@example.net", false))
	assert.Equal(t, "rfc822;Bob@Example.NET", address("Bob@Example.NET", true), "case kept")
	assert.Equal(t, `rfc822;"john doe"@example.net`, address(`"john doe"@example.net`, false))
	assert.Equal(t, "rfc822;bob@example.net", address("bob@exam\r\nple.net", false), "no CR or LF in a field")
	assert.Equal(t, "utf-8;用户@例子.example", address("用户@例子.example", true))
	assert.Equal(t, `utf-8;\x{7528}\x{6237}@\x{4F8B}\x{5B50}.example`, address("用户@例子.example", false))
	assert.Equal(t, `utf-8;j\x{FC}rgen\x{2B}tag\x{3D}1@example.org`, address("jürgen+tag=1@example.org", false))
	assert.Equal(t, "dns; [192.0.2.1]", "dns; "+mtaName("192.0.2.1"))
	assert.Equal(t, "[IPv6:2001:db8::25]", mtaName("2001:db8::25"))
	assert.Equal(t, "mx.example.net", mtaName("mx.example.net."))
	assert.Equal(t, "", mtaName(""))
}

// TestLocalReplyHasNoRemoteMTA: a reply this app made up is reported as
// the Reporting MTA's diagnostic: no Remote-MTA (RFC 3464, 2.3.5 and 2.3.6).
func TestLocalReplyHasNoRemoteMTA(t *testing.T) {
	m := failedMsg()
	m.Recipients[0].LastReply = &transport.Reply{Code: 550, Enhanced: "5.4.7", Local: true, Lines: []string{"delivery time expired"}}
	m.Recipients[0].LastError = "expired"
	_, raw := build(t, goldenOptions(), m, bodyOf(origLF), failedNews)
	parts := readParts(t, raw)
	assert.Contains(t, parts[1].body, "Diagnostic-Code: smtp; 550 5.4.7 delivery time expired\r\n")
	assert.NotContains(t, parts[1].body, "Remote-MTA")
	assert.Contains(t, parts[0].body, "The mail system here reported: 550 5.4.7")

	m.Recipients[0].LastReply.Local = false
	_, raw = build(t, goldenOptions(), m, bodyOf(origLF), failedNews)
	assert.Contains(t, readParts(t, raw)[1].body, "Remote-MTA: dns; mx.example.net\r\n")

	// No reply at all: no Diagnostic-Code, no Remote-MTA.
	m.Recipients[0].LastReply = nil
	_, raw = build(t, goldenOptions(), m, bodyOf(origLF), failedNews)
	status := readParts(t, raw)[1].body
	assert.NotContains(t, status, "Diagnostic-Code")
	assert.NotContains(t, status, "Remote-MTA")
	assert.Contains(t, status, "Status: 5.4.7\r\n")
}

// TestExpiredReportsTheServersLastReply: a recipient that expired after
// servers kept deferring it is reported with the last server and its
// reply (RFC 3464, 2.3.5 and 2.3.6), the status staying 5.4.7.
func TestExpiredReportsTheServersLastReply(t *testing.T) {
	m := failedMsg()
	r := &m.Recipients[0]
	r.LastReply = &transport.Reply{Code: 550, Enhanced: "5.4.7", Local: true, Lines: []string{"delivery time expired"}}
	r.LastError = "expired"
	r.History = []queue.Attempt{
		{Host: "mx1.example.net", Reply: &transport.Reply{Code: 421, Enhanced: "4.3.2", Lines: []string{"busy"}}},
		{Host: "mx2.example.net", Reply: &transport.Reply{Code: 451, Enhanced: "4.7.1", Lines: []string{"greylisted"}}},
	}
	_, raw := build(t, goldenOptions(), m, bodyOf(origLF), failedNews)
	status := readParts(t, raw)[1].body
	assert.Contains(t, status, "Remote-MTA: dns; mx2.example.net\r\n")
	assert.Contains(t, status, "Diagnostic-Code: smtp; 451 4.7.1 greylisted\r\n")
	assert.Contains(t, status, "Status: 5.4.7\r\n")

	// The last attempt reached no server: the expiry is reported as ours.
	r.History = append(r.History, queue.Attempt{Error: "connection refused"})
	_, raw = build(t, goldenOptions(), m, bodyOf(origLF), failedNews)
	status = readParts(t, raw)[1].body
	assert.NotContains(t, status, "Remote-MTA")
	assert.Contains(t, status, "Diagnostic-Code: smtp; 550 5.4.7 delivery time expired\r\n")
}

// TestWillRetryUntilOnlyOnDelays: RFC 3464, section 2.3.9: the field MUST
// NOT appear but in delay notices; Last-Attempt-Date MUST NOT appear when
// there was no attempt (2.3.7).
func TestWillRetryUntilOnlyOnDelays(t *testing.T) {
	m := failedMsg()
	m.Recipients[0].LastAttempt = time.Time{}
	_, raw := build(t, goldenOptions(), m, bodyOf(origLF), []queue.News{{Index: 0, Kind: "failed", WillRetryUntil: goldenNow}})
	status := readParts(t, raw)[1].body
	assert.NotContains(t, status, "Will-Retry-Until")
	assert.NotContains(t, status, "Last-Attempt-Date")
}

// TestReturnedContent: what the third part holds, and how it is encoded.
func TestReturnedContent(t *testing.T) {
	longLine := "From: a@example.org\r\nSubject: long\r\n\r\n" + strings.Repeat("x", 1500) + "\r\n"
	withNUL := "From: a@example.org\r\nSubject: nul\r\n\r\na\x00b\r\n"
	eightBitHeader := "From: a@example.org\r\nSubject: caf\xc3\xa9\r\n\r\nbody\r\n"
	noBlank := "From: a@example.org\nSubject: only headers"
	for _, c := range []struct {
		name     string
		body     string
		ret      string
		global   bool
		kind     string
		typ, cte string
		returned string
		eightBit bool
	}{
		{"no RET: headers", origLF, "", false, "failed", "text/rfc822-headers", "", headerSection(origLF), false},
		{"RET=full, any case", origLF, "full", false, "failed", "message/rfc822", "", crlfOf(origLF), false},
		{"RET=FULL, delayed: headers", origLF, "FULL", false, "delayed", "text/rfc822-headers", "", headerSection(origLF), false},
		{"RET=FULL, delivered: headers", origLF, "FULL", false, "delivered", "text/rfc822-headers", "", headerSection(origLF), false},
		{"line over 998: headers", longLine, "FULL", false, "failed", "text/rfc822-headers", "", headerSection(longLine), false},
		{"NUL: headers", withNUL, "FULL", false, "failed", "text/rfc822-headers", "", headerSection(withNUL), false},
		{"global, line over 998: whole, quoted-printable", longLine, "FULL", true, "failed", "message/global", "quoted-printable", crlfOf(longLine), false},
		{"8-bit header without SMTPUTF8: quoted-printable", eightBitHeader, "HDRS", false, "failed", "text/rfc822-headers", "quoted-printable", headerSection(eightBitHeader), false},
		{"8-bit message, RET=FULL: 8bit", eightBitHeader, "FULL", false, "failed", "message/rfc822", "8bit", crlfOf(eightBitHeader), true},
		{"no empty line: all of it is the header", noBlank, "HDRS", false, "failed", "text/rfc822-headers", "", crlfOf(noBlank) + "\r\n", false},
		{"empty body", "", "FULL", false, "failed", "message/rfc822", "", "", false},
		{"only an empty line", "\r\n", "HDRS", false, "failed", "text/rfc822-headers", "", "", false},
	} {
		t.Run(c.name, func(t *testing.T) {
			m := failedMsg()
			m.Ret, m.SMTPUTF8 = c.ret, c.global
			m.Recipients[0].State = queue.Deferred
			n, raw := build(t, goldenOptions(), m, bodyOf(c.body), []queue.News{{Index: 0, Kind: c.kind}})
			parts := readParts(t, raw)
			require.Len(t, parts, 3)
			assert.Equal(t, c.typ, parts[2].typ)
			assert.Equal(t, c.cte, parts[2].cte)
			assert.Equal(t, c.returned, parts[2].body)
			assert.Equal(t, c.eightBit, n.Message.EightBit)
		})
	}
}

// TestUnreadableBody: with no body, the notice returns nothing and says
// so; the rest is whole.
func TestUnreadableBody(t *testing.T) {
	_, raw := build(t, goldenOptions(), failedMsg(), nil, failedNews)
	parts := readParts(t, raw)
	require.Len(t, parts, 2)
	assert.Equal(t, "message/delivery-status", parts[1].typ)
	assert.NotContains(t, parts[0].body, "attached")
}

// TestLongFields: fields fold within 998 octets, whatever their length,
// and unfold to what they were.
func TestLongFields(t *testing.T) {
	m := failedMsg()
	word := strings.Repeat("w", 2500)
	text := "first " + word + " last " + strings.Repeat("word ", 300) + "end"
	m.Recipients[0].LastReply = &transport.Reply{Code: 550, Enhanced: "5.0.0", Lines: []string{text}}
	_, raw := build(t, goldenOptions(), m, bodyOf(origLF), failedNews)
	parts := readParts(t, raw)
	// go-message unfolds a field: each cut in the long word becomes a
	// space.
	got := parseFields(t, parts[1].body)[1]["Diagnostic-Code"]
	assert.Equal(t, 2, strings.Count(got, "w w"), "a 2500-octet word is cut twice")
	for strings.Contains(got, "w w") {
		got = strings.Replace(got, "w w", "ww", 1)
	}
	assert.Equal(t, "smtp; 550 5.0.0 "+text, got)
	assert.Contains(t, parts[0].body, "w"+strings.Repeat("w", 998), "the human-readable part keeps the word whole (quoted-printable)")
}

// parseFields reads the groups of a delivery status with go-message.
func parseFields(t *testing.T, s string) []map[string]string {
	t.Helper()
	var groups []map[string]string
	for _, g := range strings.Split(strings.TrimSuffix(s, "\r\n"), "\r\n\r\n") {
		e, err := gomessage.Read(strings.NewReader(g + "\r\n\r\n"))
		require.NoError(t, err)
		m := map[string]string{}
		for f := e.Header.Fields(); f.Next(); {
			m[f.Key()] = f.Value()
		}
		groups = append(groups, m)
	}
	return groups
}

// TestBoundaryClash: a boundary that occurs in the returned message is not
// used (RFC 2046, section 5.1.1).
func TestBoundaryClash(t *testing.T) {
	body := origCRLF + "--=_first\r\nmore\r\n"
	m := failedMsg()
	m.Ret = "FULL"
	tries := []string{"=_first", "=_second"}
	o := goldenOptions()
	o.Boundary = func() string { b := tries[0]; tries = tries[1:]; return b }
	_, raw := build(t, o, m, bodyOf(body), failedNews)
	assert.Contains(t, string(raw), `boundary="=_second"`)
	parts := readParts(t, raw)
	require.Len(t, parts, 3)
	assert.Equal(t, crlfOf(body), parts[2].body)

	o.Boundary = func() string { return "=_first" }
	_, err := Build(o, m, bodyOf(body), failedNews)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "boundary")

	// The default boundaries are random, and differ.
	a, b := (&Options{}).boundary(), (&Options{}).boundary()
	assert.NotEqual(t, a, b)
	assert.True(t, validBoundary(a), a)
}

// TestTemplate: a template of one's own, its subject, and a broken one,
// which falls back to the default text.
func TestTemplate(t *testing.T) {
	tmpl, err := ParseTemplate(`{{define "subject"}}Échec : {{len .Failed}} destinataire{{end}}` +
		`Votre message {{.Subject}} n'a pas pu être remis :{{range .Recipients}} {{.Address}} ({{.Status}}){{end}}`)
	require.NoError(t, err)
	o := goldenOptions()
	o.Template = tmpl
	_, raw := build(t, o, failedMsg(), bodyOf(origLF), failedNews)
	e, err := gomessage.Read(bytes.NewReader(raw))
	require.NoError(t, err)
	assert.Contains(t, e.Header.Get("Subject"), "=?utf-8?q?", "a non-ASCII subject is encoded (RFC 2047)")
	parts := readParts(t, raw)
	assert.Equal(t, "quoted-printable", parts[0].cte)
	assert.Equal(t, "Votre message Quarterly report n'a pas pu être remis : bob@example.net (5.1.1)\r\n", parts[0].body)

	_, err = ParseTemplate(`{{.NoSuchField}}`)
	require.Error(t, err, "a template naming a field Data lacks fails when parsed")
	assert.Contains(t, err.Error(), "NoSuchField")
	_, err = ParseTemplate(`{{if}}`)
	require.Error(t, err)

	// A template that fails only on some data: the default text is sent,
	// and the failure logged.
	broken := template.Must(template.New("x").Funcs(funcs).Parse(`{{index .Recipients 5}}`))
	core, logs := observer.New(zapcore.ErrorLevel)
	o.Template, o.Logger = broken, zap.New(core)
	_, raw = build(t, o, failedMsg(), bodyOf(origLF), failedNews)
	assert.Contains(t, readParts(t, raw)[0].body, "delivery failed permanently")
	assert.Equal(t, 1, logs.Len())
}

// TestDefaultTemplateKinds: the default text and subject for each kind.
func TestDefaultTemplateKinds(t *testing.T) {
	want := map[string][]string{
		"failed":    {"Undelivered Mail Returned to Sender", "delivery failed permanently", "delivery failed: the message could not be"},
		"delayed":   {"Delayed Mail (still being retried)", "delayed; the mail system will keep trying", "you need not send it again"},
		"delivered": {"Successful Mail Delivery Report", "delivered to the mailbox"},
		"relayed":   {"Relayed Mail Delivery Report", "relayed to mx.example.net", "does not send delivery reports"},
		"expanded":  {"Successful Mail Delivery Report", "expanded"},
		"mixed":     {"Undelivered Mail Returned to Sender", "delivery failed permanently", "delayed;", "delivered to the mailbox", "relayed to"},
	}
	for _, d := range samples() {
		subject, text, err := execute(defaultTemplate, d)
		require.NoError(t, err)
		if d.QueueID == "" {
			// The sample with nothing known but the recipient.
			assert.Equal(t, "This is the mail system at mail.example.org, with news of your message.\n\n"+
				"It could not be delivered to the recipient below.\nThe mail system has given up and will not try again.\n\n"+
				"<x>: delivery failed permanently.\n", text)
			continue
		}
		for _, s := range want[d.Kind] {
			assert.Contains(t, subject+"\n"+text, s, d.Kind)
		}
	}
}

// TestGroup: news split by kind, one notice each.
func TestGroup(t *testing.T) {
	news := []queue.News{{Index: 0, Kind: "delayed"}, {Index: 1, Kind: "failed"}, {Index: 2, Kind: "delayed"}, {Index: 3, Kind: "relayed"}}
	assert.Equal(t, [][]queue.News{
		{{Index: 1, Kind: "failed"}},
		{{Index: 0, Kind: "delayed"}, {Index: 2, Kind: "delayed"}},
		{{Index: 3, Kind: "relayed"}},
	}, Group(news))
	assert.Nil(t, Group(nil))
}

// TestNoticeReadsBodyLazily: the returned content is read from the body as
// the notice is read, not when it is built.
func TestNoticeReadsBodyLazily(t *testing.T) {
	m := failedMsg()
	m.Ret = "FULL"
	body := &countingBody{Body: bodyOf(origLF)}
	n, err := Build(goldenOptions(), m, body, failedNews)
	require.NoError(t, err)
	afterBuild := body.n
	_, err = io.ReadAll(n.Body)
	require.NoError(t, err)
	assert.Equal(t, int64(len(origLF)), body.n-afterBuild, "the whole message is read again as the notice is read")
}

type countingBody struct {
	queue.Body
	n int64
}

func (b *countingBody) ReadAt(p []byte, off int64) (int, error) {
	n, err := b.Body.ReadAt(p, off)
	b.n += int64(n)
	return n, err
}

// TestDescribe: the fields of a notice without the notice, for an event.
func TestDescribe(t *testing.T) {
	d, err := Describe(goldenOptions(), failedMsg(), failedNews)
	require.NoError(t, err)
	require.Len(t, d.Recipients, 1)
	r := d.Recipients[0]
	assert.Equal(t, "failed", d.Kind)
	assert.Equal(t, "bob@example.net", r.Address)
	assert.Equal(t, "5.1.1", r.Status)
	assert.Equal(t, "mx.example.net", r.RemoteMTA)
	assert.Equal(t, "550 5.1.1 no such user", r.Reply)
	m := failedMsg()
	m.From = ""
	_, err = Describe(goldenOptions(), m, failedNews)
	require.ErrorIs(t, err, ErrNullSender)
}
