package dsn

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"io"
	"net/textproto"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	gomessage "github.com/emersion/go-message"
	gomail "github.com/emersion/go-message/mail"
	gotextproto "github.com/emersion/go-message/textproto"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/seed7b014b84/caddy-smtp/internal/peertest"
	"github.com/seed7b014b84/caddy-smtp/queue"
	"github.com/seed7b014b84/caddy-smtp/transport"
)

var update = flag.Bool("update", false, "rewrite the golden notices in testdata/")

// memBody is a queue.Body in memory.
type memBody struct{ *bytes.Reader }

func (memBody) Close() error { return nil }

func bodyOf(s string) queue.Body { return memBody{bytes.NewReader([]byte(s))} }

var (
	goldenNow     = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	goldenArrived = goldenNow.Add(-4*time.Hour - 30*time.Second)
	goldenLast    = goldenNow.Add(-2 * time.Minute)
)

func goldenOptions() Options {
	return Options{
		ReportingMTA: "mail.example.org",
		Now:          func() time.Time { return goldenNow },
		Boundary:     func() string { return "=_dsn_0123456789abcdef" },
	}
}

func init() {
	// Fixed IDs for the golden files; every test in this package gets them.
	newID = func(time.Time) string { return "06an3b4g00000000dsn0" }
}

// The original messages: one with LF line ends (as `caddy sendmail` may
// store it), one with CRLF, one in UTF-8 (SMTPUTF8).
const (
	origLF = "From: Alice <alice@example.org>\n" +
		"To: Bob <bob@example.net>\n" +
		"Subject: Quarterly report\n" +
		"Date: Sat, 01 Mar 2025 07:59:00 +0000\n" +
		"Message-ID: <report-1@example.org>\n" +
		"MIME-Version: 1.0\n" +
		"Content-Type: text/plain; charset=us-ascii\n" +
		"\n" +
		"Hello Bob,\n" +
		"\n" +
		"From the figures attached, the quarter went well.\n" +
		".\n" +
		"-- \n" +
		"Alice\n"
	origCRLF = "From: Carol <carol@example.org>\r\n" +
		"To: dave@example.net, erin@example.net\r\n" +
		"Subject: Lunch on Friday?\r\n" +
		"Date: Fri, 28 Feb 2025 09:00:00 +0100\r\n" +
		"Message-ID: <lunch-7@example.org>\r\n" +
		"\r\n" +
		"Shall we?\r\n"
	origUTF8 = "From: Jürgen <jürgen@bücher.example>\r\n" +
		"To: 用户 <用户@例子.example>\r\n" +
		"Subject: Grüße aus Köln\r\n" +
		"Date: Sat, 01 Mar 2025 07:59:00 +0000\r\n" +
		"Message-ID: <gruss-3@bücher.example>\r\n" +
		"MIME-Version: 1.0\r\n" +
		"Content-Type: text/plain; charset=utf-8\r\n" +
		"Content-Transfer-Encoding: 8bit\r\n" +
		"\r\n" +
		"Schöne Grüße!\r\n"
)

// crlfOf normalizes line ends to CRLF, the way a notice returns content.
func crlfOf(s string) string {
	s = strings.ReplaceAll(s, "\r\n", "\n")
	s = strings.ReplaceAll(s, "\r", "\n")
	return strings.ReplaceAll(s, "\n", "\r\n")
}

// headerSection returns the header section of a message, CRLF ended,
// without the empty line.
func headerSection(s string) string {
	s = crlfOf(s)
	if i := strings.Index(s, "\r\n\r\n"); i >= 0 {
		return s[:i+2]
	}
	return s
}

type field = [2]string

// goldenCase is one notice and everything it must say.
type goldenCase struct {
	name string
	msg  *queue.Message
	body string
	news []queue.News

	subject      string
	statusType   string
	perMessage   []field
	perRecipient [][]field
	returnedType string
	returnedCTE  string
	returned     string   // the returned part's content, decoded
	text         []string // sentences the human-readable part must have
	eightBit     bool
	smtputf8     bool
	references   string
}

func goldenCases() []goldenCase {
	rejected := &transport.Reply{Code: 550, Enhanced: "5.1.1", Lines: []string{"<bob@example.net>: Recipient address rejected: User unknown in virtual mailbox table"}}
	noEnhanced := &transport.Reply{Code: 550, Lines: []string{"mailbox unavailable"}}
	expired := &transport.Reply{Code: 550, Enhanced: "5.4.7", Local: true,
		Lines: []string{"delivery time expired; last error: dial tcp 192.0.2.7:25: connect: connection refused"}}
	greylisted := &transport.Reply{Code: 451, Enhanced: "4.7.1", Lines: []string{"<frank@example.net>: Recipient address rejected: Greylisted, see", "https://postgrey.example.net/help/example.net"}}
	dnsFailed := &transport.Reply{Code: 451, Local: true, Lines: []string{"lookup example.com on 127.0.0.53:53: server misbehaving"}}
	saved := &transport.Reply{Code: 250, Enhanced: "2.0.0", Lines: []string{"<heidi@example.net> vHxqA3tRx2e8KgAAcWZWbA Saved"}}
	queued := &transport.Reply{Code: 250, Enhanced: "2.0.0", Lines: []string{"Ok: queued as 4Z1b2c3D4eF"}}
	multi := &transport.Reply{Code: 554, Enhanced: "5.7.1", Lines: []string{
		"Service unavailable; Client host [198.51.100.23] blocked using zen.spamhaus.example;",
		"see https://www.spamhaus.example/query/ip/198.51.100.23 for the reason and how to get the listing removed,",
		"then send the message again"}}
	utf8Reply := &transport.Reply{Code: 550, Enhanced: "5.1.1", Lines: []string{"用户不存在 (no such user)"}}

	return []goldenCase{
		{
			name: "failed-full",
			msg: &queue.Message{ID: "06an34yy0000000000a1", From: "alice@example.org", Arrived: goldenArrived, Ret: "FULL",
				Recipients: []queue.Recipient{{Addr: "bob@example.net", State: queue.Failed, Attempts: 1, LastAttempt: goldenLast,
					Host: "mx.example.net", Address: "192.0.2.25:25", LastError: "rejected", LastReply: rejected}}},
			body:       origLF,
			news:       []queue.News{{Index: 0, Kind: "failed"}},
			subject:    "Undelivered Mail Returned to Sender",
			statusType: "message/delivery-status",
			perMessage: []field{{"Reporting-MTA", "dns; mail.example.org"}, {"Arrival-Date", "Sat, 01 Mar 2025 07:59:30 +0000"}},
			perRecipient: [][]field{{
				{"Final-Recipient", "rfc822;bob@example.net"},
				{"Action", "failed"},
				{"Status", "5.1.1"},
				{"Remote-MTA", "dns; mx.example.net"},
				{"Diagnostic-Code", "smtp; 550 5.1.1 <bob@example.net>: Recipient address rejected: User unknown in virtual mailbox table"},
				{"Last-Attempt-Date", "Sat, 01 Mar 2025 11:58:00 +0000"},
			}},
			returnedType: "message/rfc822", returnedCTE: "7bit", returned: crlfOf(origLF),
			text: []string{
				`"Quarterly report", accepted on Sat, 01 Mar 2025 07:59:30 +0000`,
				"It could not be delivered to the recipient below.",
				"<bob@example.net>: delivery failed permanently.",
				"The server mx.example.net answered: 550 5.1.1 <bob@example.net>:",
				"Your message is attached.",
			},
			references: "<report-1@example.org>",
		},
		{
			name: "failed-hdrs",
			msg: &queue.Message{ID: "06an34yy0000000000a2", From: "carol@example.org", Arrived: goldenArrived, Ret: "HDRS",
				Recipients: []queue.Recipient{
					{Addr: "dave@example.net", State: queue.Failed, Attempts: 1, LastAttempt: goldenLast, Host: "mx1.example.net",
						LastError: "rejected", LastReply: noEnhanced},
					{Addr: "erin@example.net", State: queue.Failed, Attempts: 12, LastAttempt: goldenLast, Host: "mx2.example.net",
						LastError: "expired", LastDetail: "dial tcp 192.0.2.7:25: connect: connection refused", LastReply: expired},
				}},
			body:       origCRLF,
			news:       []queue.News{{Index: 0, Kind: "failed"}, {Index: 1, Kind: "failed"}},
			subject:    "Undelivered Mail Returned to Sender",
			statusType: "message/delivery-status",
			perMessage: []field{{"Reporting-MTA", "dns; mail.example.org"}, {"Arrival-Date", "Sat, 01 Mar 2025 07:59:30 +0000"}},
			perRecipient: [][]field{{
				{"Final-Recipient", "rfc822;dave@example.net"},
				{"Action", "failed"},
				{"Status", "5.0.0"},
				{"Remote-MTA", "dns; mx1.example.net"},
				{"Diagnostic-Code", "smtp; 550 mailbox unavailable"},
				{"Last-Attempt-Date", "Sat, 01 Mar 2025 11:58:00 +0000"},
			}, {
				{"Final-Recipient", "rfc822;erin@example.net"},
				{"Action", "failed"},
				{"Status", "5.4.7"},
				{"Diagnostic-Code", "smtp; 550 5.4.7 delivery time expired; last error: dial tcp 192.0.2.7:25: connect: connection refused"},
				{"Last-Attempt-Date", "Sat, 01 Mar 2025 11:58:00 +0000"},
			}},
			returnedType: "text/rfc822-headers", returnedCTE: "7bit", returned: headerSection(origCRLF),
			text: []string{
				"It could not be delivered to the 2 recipients below.",
				"<dave@example.net>: delivery failed permanently.",
				"<erin@example.net>: delivery failed: the message could not be",
				"delivered in time, after 12 attempts.",
				"The mail system here reported: 550 5.4.7 delivery time expired;",
				"The header of your message is attached.",
			},
			references: "<lunch-7@example.org>",
		},
		{
			name: "delayed",
			msg: &queue.Message{ID: "06an34yy0000000000a3", From: "alice@example.org", Arrived: goldenArrived, Ret: "FULL",
				Recipients: []queue.Recipient{
					{Addr: "frank@example.net", State: queue.Deferred, Attempts: 4, LastAttempt: goldenLast, Host: "mx.example.net",
						LastError: "rejected", LastReply: greylisted},
					{Addr: "grace@example.com", State: queue.Deferred, Attempts: 4, LastAttempt: goldenLast, LastError: "dns",
						LastDetail: "lookup example.com on 127.0.0.53:53: server misbehaving", LastReply: dnsFailed},
				}},
			body: origLF,
			news: []queue.News{
				{Index: 0, Kind: "delayed", WillRetryUntil: goldenArrived.Add(120 * time.Hour)},
				{Index: 1, Kind: "delayed", WillRetryUntil: goldenArrived.Add(120 * time.Hour)},
			},
			subject:    "Delayed Mail (still being retried)",
			statusType: "message/delivery-status",
			perMessage: []field{{"Reporting-MTA", "dns; mail.example.org"}, {"Arrival-Date", "Sat, 01 Mar 2025 07:59:30 +0000"}},
			perRecipient: [][]field{{
				{"Final-Recipient", "rfc822;frank@example.net"},
				{"Action", "delayed"},
				{"Status", "4.7.1"},
				{"Remote-MTA", "dns; mx.example.net"},
				{"Diagnostic-Code", "smtp; 451 4.7.1 <frank@example.net>: Recipient address rejected: Greylisted, see https://postgrey.example.net/help/example.net"},
				{"Last-Attempt-Date", "Sat, 01 Mar 2025 11:58:00 +0000"},
				{"Will-Retry-Until", "Thu, 06 Mar 2025 07:59:30 +0000"},
			}, {
				{"Final-Recipient", "rfc822;grace@example.com"},
				{"Action", "delayed"},
				{"Status", "4.4.4"},
				{"Diagnostic-Code", "smtp; 451 lookup example.com on 127.0.0.53:53: server misbehaving"},
				{"Last-Attempt-Date", "Sat, 01 Mar 2025 11:58:00 +0000"},
				{"Will-Retry-Until", "Thu, 06 Mar 2025 07:59:30 +0000"},
			}},
			// RET=FULL is for failures (RFC 3461, section 4.3).
			returnedType: "text/rfc822-headers", returnedCTE: "7bit", returned: headerSection(origLF),
			text: []string{
				"It has not been delivered yet to the 2 recipients below.",
				"you need not send it again",
				"<frank@example.net>: delayed; the mail system will keep trying",
				"until Thu, 06 Mar 2025 07:59:30 +0000.",
				"The mail system here reported: 451 lookup example.com on",
			},
			references: "<report-1@example.org>",
		},
		{
			name: "delivered-lmtp",
			msg: &queue.Message{ID: "06an34yy0000000000a4", From: "alice@example.org", Arrived: goldenArrived,
				Recipients: []queue.Recipient{{Addr: "heidi@example.net", Notify: []string{"SUCCESS", "FAILURE"}, State: queue.Delivered,
					Attempts: 1, LastAttempt: goldenLast, Host: "lmtp.example.net", Protocol: "lmtp", LastReply: saved}}},
			body:       origLF,
			news:       []queue.News{{Index: 0, Kind: "delivered"}},
			subject:    "Successful Mail Delivery Report",
			statusType: "message/delivery-status",
			perMessage: []field{{"Reporting-MTA", "dns; mail.example.org"}, {"Arrival-Date", "Sat, 01 Mar 2025 07:59:30 +0000"}},
			perRecipient: [][]field{{
				{"Final-Recipient", "rfc822;heidi@example.net"},
				{"Action", "delivered"},
				{"Status", "2.0.0"},
				{"Remote-MTA", "dns; lmtp.example.net"},
				{"Diagnostic-Code", "smtp; 250 2.0.0 <heidi@example.net> vHxqA3tRx2e8KgAAcWZWbA Saved"},
				{"Last-Attempt-Date", "Sat, 01 Mar 2025 11:58:00 +0000"},
			}},
			returnedType: "text/rfc822-headers", returnedCTE: "7bit", returned: headerSection(origLF),
			text: []string{
				"It was delivered to the recipient below.",
				"<heidi@example.net>: delivered to the mailbox.",
			},
			references: "<report-1@example.org>",
		},
		{
			name: "relayed",
			msg: &queue.Message{ID: "06an34yy0000000000a5", From: "alice@example.org", Arrived: goldenArrived, Ret: "FULL",
				Recipients: []queue.Recipient{{Addr: "ivan@example.net", Notify: []string{"SUCCESS"}, State: queue.Delivered,
					Attempts: 1, LastAttempt: goldenLast, Host: "192.0.2.25", Protocol: "smtp", LastReply: queued}}},
			body:       origLF,
			news:       []queue.News{{Index: 0, Kind: "relayed"}},
			subject:    "Relayed Mail Delivery Report",
			statusType: "message/delivery-status",
			perMessage: []field{{"Reporting-MTA", "dns; mail.example.org"}, {"Arrival-Date", "Sat, 01 Mar 2025 07:59:30 +0000"}},
			perRecipient: [][]field{{
				{"Final-Recipient", "rfc822;ivan@example.net"},
				{"Action", "relayed"},
				{"Status", "2.0.0"},
				{"Remote-MTA", "dns; [192.0.2.25]"},
				{"Diagnostic-Code", "smtp; 250 2.0.0 Ok: queued as 4Z1b2c3D4eF"},
				{"Last-Attempt-Date", "Sat, 01 Mar 2025 11:58:00 +0000"},
			}},
			returnedType: "text/rfc822-headers", returnedCTE: "7bit", returned: headerSection(origLF),
			text: []string{
				"It was handed on to the server of the recipient below.",
				"That server does not send delivery reports",
				"<ivan@example.net>: relayed to [192.0.2.25].",
			},
			references: "<report-1@example.org>",
		},
		{
			name: "mixed-orcpt-envid",
			msg: &queue.Message{ID: "06an34yy0000000000a6", From: "carol@example.org", Arrived: goldenArrived, Ret: "HDRS", EnvID: "QQ314159",
				Recipients: []queue.Recipient{
					{Addr: "judy@example.net", ORCPT: "Judy.Smith@Example.NET", State: queue.Failed, Attempts: 1, LastAttempt: goldenLast,
						Host: "mx.example.net", LastError: "rejected", LastReply: multi},
					{Addr: "kim@example.net", State: queue.Pending}, // no news: not reported
					{Addr: "leo@example.net", ORCPT: "leo@example.net", State: queue.Deferred, Attempts: 2, LastAttempt: goldenLast,
						Host: "mx.example.net", LastError: "connection", LastDetail: "dial tcp 192.0.2.30:25: i/o timeout",
						LastReply: &transport.Reply{Code: 451, Enhanced: "4.4.1", Local: true, Lines: []string{"no host of example.net answered"}}},
				}},
			body: origCRLF,
			news: []queue.News{
				{Index: 0, Kind: "failed"},
				{Index: 2, Kind: "delayed", WillRetryUntil: goldenArrived.Add(120 * time.Hour)},
			},
			subject:    "Undelivered Mail Returned to Sender",
			statusType: "message/delivery-status",
			perMessage: []field{{"Original-Envelope-Id", "QQ314159"}, {"Reporting-MTA", "dns; mail.example.org"}, {"Arrival-Date", "Sat, 01 Mar 2025 07:59:30 +0000"}},
			perRecipient: [][]field{{
				{"Original-Recipient", "rfc822;Judy.Smith@Example.NET"},
				{"Final-Recipient", "rfc822;judy@example.net"},
				{"Action", "failed"},
				{"Status", "5.7.1"},
				{"Remote-MTA", "dns; mx.example.net"},
				{"Diagnostic-Code", "smtp; " + multi.String()},
				{"Last-Attempt-Date", "Sat, 01 Mar 2025 11:58:00 +0000"},
			}, {
				{"Original-Recipient", "rfc822;leo@example.net"},
				{"Final-Recipient", "rfc822;leo@example.net"},
				{"Action", "delayed"},
				{"Status", "4.4.1"},
				{"Diagnostic-Code", "smtp; 451 4.4.1 no host of example.net answered"},
				{"Last-Attempt-Date", "Sat, 01 Mar 2025 11:58:00 +0000"},
				{"Will-Retry-Until", "Thu, 06 Mar 2025 07:59:30 +0000"},
			}},
			returnedType: "text/rfc822-headers", returnedCTE: "7bit", returned: headerSection(origCRLF),
			text: []string{
				"Its envelope ID is QQ314159.",
				"<judy@example.net>: delivery failed permanently.",
				"<leo@example.net>: delayed; the mail system will keep trying",
			},
			references: "<lunch-7@example.org>",
		},
		{
			name: "smtputf8-headers",
			msg: &queue.Message{ID: "06an34yy0000000000a7", From: "alice@example.org", Arrived: goldenArrived, SMTPUTF8: true, EightBit: true,
				Recipients: []queue.Recipient{{Addr: "用户@例子.example", ORCPT: "用户@例子.example", State: queue.Failed, Attempts: 1,
					LastAttempt: goldenLast, Host: "mx.xn--fsqu00a.example", LastError: "rejected", LastReply: utf8Reply}}},
			body:       origUTF8,
			news:       []queue.News{{Index: 0, Kind: "failed"}},
			subject:    "Undelivered Mail Returned to Sender",
			statusType: "message/global-delivery-status",
			perMessage: []field{{"Reporting-MTA", "dns; mail.example.org"}, {"Arrival-Date", "Sat, 01 Mar 2025 07:59:30 +0000"}},
			perRecipient: [][]field{{
				{"Original-Recipient", "utf-8;用户@例子.example"},
				{"Final-Recipient", "utf-8;用户@例子.example"},
				{"Action", "failed"},
				{"Status", "5.1.1"},
				{"Remote-MTA", "dns; mx.xn--fsqu00a.example"},
				{"Diagnostic-Code", "smtp; 550 5.1.1 用户不存在 (no such user)"},
				{"Last-Attempt-Date", "Sat, 01 Mar 2025 11:58:00 +0000"},
			}},
			returnedType: "message/global-headers", returnedCTE: "8bit", returned: headerSection(origUTF8),
			text: []string{
				`"Grüße aus Köln", accepted on`,
				"<用户@例子.example>: delivery failed permanently.",
				"The header of your message is attached.",
			},
			eightBit: true,
		},
		{
			name: "smtputf8-full",
			msg: &queue.Message{ID: "06an34yy0000000000a8", From: "jürgen@bücher.example", Arrived: goldenArrived, SMTPUTF8: true, EightBit: true,
				Ret: "FULL", EnvID: "Köln-1",
				Recipients: []queue.Recipient{{Addr: "用户@例子.example", State: queue.Failed, Attempts: 1,
					LastAttempt: goldenLast, Host: "mx.xn--fsqu00a.example", LastError: "rejected", LastReply: utf8Reply}}},
			body:       origUTF8,
			news:       []queue.News{{Index: 0, Kind: "failed"}},
			subject:    "Undelivered Mail Returned to Sender",
			statusType: "message/global-delivery-status",
			perMessage: []field{{"Original-Envelope-Id", "K?ln-1"}, {"Reporting-MTA", "dns; mail.example.org"}, {"Arrival-Date", "Sat, 01 Mar 2025 07:59:30 +0000"}},
			perRecipient: [][]field{{
				{"Final-Recipient", "utf-8;用户@例子.example"},
				{"Action", "failed"},
				{"Status", "5.1.1"},
				{"Remote-MTA", "dns; mx.xn--fsqu00a.example"},
				{"Diagnostic-Code", "smtp; 550 5.1.1 用户不存在 (no such user)"},
				{"Last-Attempt-Date", "Sat, 01 Mar 2025 11:58:00 +0000"},
			}},
			returnedType: "message/global", returnedCTE: "8bit", returned: crlfOf(origUTF8),
			text:     []string{"Your message is attached."},
			eightBit: true, smtputf8: true,
		},
	}
}

// TestGolden builds each kind of notice, compares it with its golden file
// (go test -update rewrites them), and has two MIME parsers, Python's email
// package and go-message, read back every field.
func TestGolden(t *testing.T) {
	for _, c := range goldenCases() {
		t.Run(c.name, func(t *testing.T) {
			n, err := Build(goldenOptions(), c.msg, bodyOf(c.body), c.news)
			require.NoError(t, err)
			raw, err := io.ReadAll(n.Body)
			require.NoError(t, err)

			path := filepath.Join("testdata", c.name+".eml")
			if *update {
				require.NoError(t, os.WriteFile(path, raw, 0o644))
			}
			golden, err := os.ReadFile(path)
			require.NoError(t, err, "run go test -update to write the golden files")
			assert.Equal(t, string(golden), string(raw), "the notice differs from %s (go test -update rewrites it)", path)

			checkNotice(t, c, n, raw)
			checkGoMessage(t, c, raw)
			checkPython(t, c, raw)
		})
	}
}

// checkNotice checks the envelope and the lines of a notice.
func checkNotice(t *testing.T, c goldenCase, n queue.Notice, raw []byte) {
	m := n.Message
	assert.Equal(t, "06an3b4g00000000dsn0", m.ID)
	assert.Equal(t, "", m.From, "a notice is sent from the null sender")
	require.Len(t, m.Recipients, 1)
	assert.Equal(t, c.msg.From, m.Recipients[0].Addr)
	assert.Equal(t, queue.Pending, m.Recipients[0].State)
	assert.Empty(t, m.Recipients[0].Notify, "a failed notice must still produce the queue's double-bounce event")
	assert.Equal(t, "dsn", m.Source)
	assert.Equal(t, goldenNow, m.Arrived)
	assert.Equal(t, goldenNow, m.NextAttempt)
	assert.Equal(t, c.eightBit, m.EightBit, "EightBit")
	assert.Equal(t, c.smtputf8, m.SMTPUTF8, "SMTPUTF8")
	checkLines(t, raw, c.eightBit)
}

// checkLines checks that every line ends with CRLF and is at most 998
// octets, and that an all-7-bit notice has no 8-bit byte.
func checkLines(t *testing.T, raw []byte, eightBit bool) {
	t.Helper()
	require.True(t, bytes.HasSuffix(raw, []byte("\r\n")), "the notice ends with CRLF")
	for i, l := range bytes.Split(raw[:len(raw)-2], []byte("\r\n")) {
		assert.LessOrEqual(t, len(l), 998, "line %d is too long", i+1)
		assert.NotContains(t, string(l), "\r", "line %d has a bare CR", i+1)
		assert.NotContains(t, string(l), "\n", "line %d has a bare LF", i+1)
		if !eightBit {
			for _, b := range l {
				require.Less(t, b, byte(0x80), "line %d has an 8-bit byte in a 7-bit notice", i+1)
			}
		}
	}
}

// parsedNotice is what a parser read from a notice.
type parsedNotice struct {
	header      map[string]string // top-level fields, unfolded (Subject decoded)
	from, to    [][2]string       // the addresses of From and To: name, address
	mediaType   string
	reportType  string
	types       []string // the parts' media types
	ctes        []string
	text        string // the human-readable part, decoded
	textCharset string
	blocks      [][]field // the delivery status' groups of fields
	returned    string    // the third part's content, decoded
}

// checkParsed compares what a parser read with what c says.
func checkParsed(t *testing.T, c goldenCase, p parsedNotice, parser string) {
	t.Helper()
	assert.Equal(t, [][2]string{{"Mail Delivery System", "MAILER-DAEMON@mail.example.org"}}, p.from, parser)
	assert.Equal(t, [][2]string{{"", c.msg.From}}, p.to, parser)
	assert.Equal(t, c.subject, p.header["Subject"], parser)
	assert.Equal(t, "Sat, 01 Mar 2025 12:00:00 +0000", p.header["Date"], parser)
	assert.Equal(t, "<06an3b4g00000000dsn0@mail.example.org>", p.header["Message-Id"], parser)
	assert.Equal(t, "auto-replied", p.header["Auto-Submitted"], parser)
	assert.Equal(t, "1.0", p.header["Mime-Version"], parser)
	assert.Equal(t, c.references, p.header["References"], parser)
	assert.Equal(t, "multipart/report", p.mediaType, parser)
	assert.Equal(t, strings.TrimPrefix(c.statusType, "message/"), p.reportType, parser+": report-type is the second part's subtype (RFC 6522, section 3)")
	assert.Equal(t, []string{"text/plain", c.statusType, c.returnedType}, p.types, parser)
	require.Len(t, p.ctes, 3, parser)
	assert.Equal(t, c.returnedCTE, p.ctes[2], parser)
	assert.Equal(t, "utf-8", p.textCharset, parser)
	for _, s := range c.text {
		assert.Contains(t, p.text, s, parser+": the human-readable part")
	}
	want := append([][]field{c.perMessage}, c.perRecipient...)
	assert.Equal(t, want, p.blocks, parser+": the delivery status")
	assert.Equal(t, c.returned, p.returned, parser+": the returned content (CRLF line ends)")
}

// checkGoMessage reads the notice with github.com/emersion/go-message.
func checkGoMessage(t *testing.T, c goldenCase, raw []byte) {
	e, err := gomessage.Read(bytes.NewReader(raw))
	require.NoError(t, err)
	p := parsedNotice{header: map[string]string{}}
	for f := e.Header.Fields(); f.Next(); {
		p.header[canonical(f.Key())] = f.Value()
	}
	mh := gomail.Header{Header: e.Header}
	subject, err := mh.Subject()
	require.NoError(t, err)
	for _, k := range []string{"From", "To"} {
		list, err := mh.AddressList(k)
		require.NoError(t, err, k)
		var as [][2]string
		for _, a := range list {
			as = append(as, [2]string{a.Name, a.Address})
		}
		if k == "From" {
			p.from = as
		} else {
			p.to = as
		}
	}
	p.header["Subject"] = subject
	var params map[string]string
	p.mediaType, params, err = e.Header.ContentType()
	require.NoError(t, err)
	p.reportType = params["report-type"]
	mr := e.MultipartReader()
	require.NotNil(t, mr)
	for i := 0; ; i++ {
		part, err := mr.NextPart()
		if errors.Is(err, io.EOF) {
			break
		}
		require.NoError(t, err)
		typ, params, err := part.Header.ContentType()
		require.NoError(t, err)
		p.types = append(p.types, typ)
		cte := part.Header.Get("Content-Transfer-Encoding")
		if cte == "" {
			cte = "7bit"
		}
		p.ctes = append(p.ctes, cte)
		body, err := io.ReadAll(part.Body)
		require.NoError(t, err)
		switch i {
		case 0:
			p.text, p.textCharset = string(body), params["charset"]
		case 1:
			br := bufio.NewReader(bytes.NewReader(body))
			for {
				if _, err := br.Peek(1); err != nil {
					break
				}
				h, err := gotextproto.ReadHeader(br)
				require.NoError(t, err)
				var block []field
				for f := h.Fields(); f.Next(); {
					block = append(block, field{canonicalDSN(f.Key()), f.Value()})
				}
				p.blocks = append(p.blocks, block)
			}
		case 2:
			p.returned = string(body)
		}
	}
	checkParsed(t, c, p, "go-message")
}

// pythonParse is the JSON that testdata/parse_dsn.py prints.
type pythonParse struct {
	Defects    []string    `json:"defects"`
	Header     [][2]string `json:"header"`
	From       [][2]string `json:"from"`
	To         [][2]string `json:"to"`
	Type       string      `json:"type"`
	ReportType string      `json:"report_type"`
	Parts      []struct {
		Type        string        `json:"type"`
		Charset     string        `json:"charset"`
		CTE         string        `json:"cte"`
		Defects     []string      `json:"defects"`
		Blocks      [][][2]string `json:"blocks"`
		Body        string        `json:"body"`
		Text        string        `json:"text"`
		InnerHeader [][2]string   `json:"inner_header"`
	} `json:"parts"`
}

// checkPython reads the notice with Python's email package
// (email.message_from_bytes with policy=email.policy.default).
func checkPython(t *testing.T, c goldenCase, raw []byte) {
	peertest.Need(t, "python3")
	path := filepath.Join(t.TempDir(), "notice.eml")
	require.NoError(t, os.WriteFile(path, raw, 0o600))
	out, err := exec.Command("python3", filepath.Join("testdata", "parse_dsn.py"), path).Output()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		t.Fatalf("parse_dsn.py: %v\n%s", err, ee.Stderr)
	}
	require.NoError(t, err)
	var py pythonParse
	require.NoError(t, json.Unmarshal(out, &py), "%s", out)
	assert.Empty(t, py.Defects, "Python found defects in the notice")
	p := parsedNotice{header: map[string]string{}, mediaType: py.Type, reportType: py.ReportType, from: py.From, to: py.To}
	for _, f := range py.Header {
		p.header[canonical(f[0])] = f[1]
	}
	for i, part := range py.Parts {
		assert.Empty(t, part.Defects, "Python found defects in part %d", i+1)
		p.types = append(p.types, part.Type)
		p.ctes = append(p.ctes, part.CTE)
		body, err := base64.StdEncoding.DecodeString(part.Body)
		require.NoError(t, err)
		switch i {
		case 0:
			p.text, p.textCharset = part.Text, part.Charset
		case 1:
			for _, b := range part.Blocks {
				var block []field
				for _, f := range b {
					block = append(block, field{canonicalDSN(f[0]), f[1]})
				}
				p.blocks = append(p.blocks, block)
			}
		case 2:
			p.returned = string(body)
			if c.returnedType == "message/global-headers" {
				// Python reads it as a message with no body: written back,
				// it ends with the empty line.
				p.returned = strings.TrimSuffix(p.returned, "\r\n")
			}
		}
	}
	checkParsed(t, c, p, "python")
}

// canonical spells a field name as go-message does (textproto's canonical
// form), so that both parsers' results compare.
func canonical(k string) string {
	return textproto.CanonicalMIMEHeaderKey(k)
}

// canonicalDSN spells a delivery status field's name as the notice does.
func canonicalDSN(k string) string {
	for _, n := range []string{"Original-Envelope-Id", "Reporting-MTA", "Arrival-Date", "Original-Recipient", "Final-Recipient",
		"Action", "Status", "Remote-MTA", "Diagnostic-Code", "Last-Attempt-Date", "Will-Retry-Until"} {
		if strings.EqualFold(k, n) {
			return n
		}
	}
	return k
}
