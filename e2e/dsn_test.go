package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net"
	"net/mail"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/seed7b014b84/caddy-smtp/internal/peertest"
)

// The end-to-end tests of delivery status notifications (RFC 3461-3464):
// the built binary, real servers as next hops (smtp-sink, Dovecot LMTP,
// Postfix), and the notices read back with Python's email package.

// dsnE2EMail is one message a dsnE2EStore received.
type dsnE2EMail struct {
	From string
	To   []string
	Data []byte
	At   time.Time
}

// dsnE2EStore is the sender's mail server: an SMTP server (emersion/go-smtp,
// one of the peers PEERS.md lists) that keeps every message byte for byte
// as it came. smtp-sink's dump files turn CR LF into LF, so
// they could not show that a returned message is the original byte for
// byte. It offers no DSN.
type dsnE2EStore struct {
	Port int

	mu   sync.Mutex
	msgs []dsnE2EMail
}

// dsnE2EStartStore starts a store on a fresh loopback port; it is closed
// when the test ends.
func dsnE2EStartStore(t *testing.T) *dsnE2EStore {
	t.Helper()
	st := &dsnE2EStore{Port: peertest.FreePort(t)}
	ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", st.Port))
	require.NoError(t, err)
	srv := smtp.NewServer(smtp.BackendFunc(func(*smtp.Conn) (smtp.Session, error) {
		return &dsnE2ESession{st: st}, nil
	}))
	srv.Domain = "home.example.org"
	srv.ReadTimeout, srv.WriteTimeout = time.Minute, time.Minute
	srv.MaxMessageBytes = 64 << 20
	srv.MaxRecipients = 100
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return st
}

// messages returns the messages received so far, in order.
func (st *dsnE2EStore) messages() []dsnE2EMail {
	st.mu.Lock()
	defer st.mu.Unlock()
	return append([]dsnE2EMail(nil), st.msgs...)
}

// wait waits until the store holds at least n messages and returns them.
func (st *dsnE2EStore) wait(t *testing.T, n int, timeout time.Duration) []dsnE2EMail {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		got := st.messages()
		if len(got) >= n {
			return got
		}
		if time.Now().After(deadline) {
			t.Fatalf("the sender's server holds %d of %d messages after %v", len(got), n, timeout)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// dsnE2ESession is one SMTP session of a dsnE2EStore.
type dsnE2ESession struct {
	st  *dsnE2EStore
	cur dsnE2EMail
}

func (s *dsnE2ESession) Reset()        { s.cur = dsnE2EMail{} }
func (s *dsnE2ESession) Logout() error { return nil }

func (s *dsnE2ESession) Mail(from string, _ *smtp.MailOptions) error {
	s.cur = dsnE2EMail{From: from}
	return nil
}

func (s *dsnE2ESession) Rcpt(to string, _ *smtp.RcptOptions) error {
	s.cur.To = append(s.cur.To, to)
	return nil
}

func (s *dsnE2ESession) Data(r io.Reader) error {
	b, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	m := s.cur
	m.Data, m.At = b, time.Now()
	s.st.mu.Lock()
	s.st.msgs = append(s.st.msgs, m)
	s.st.mu.Unlock()
	return nil
}

// dsnE2ERemote is a named remote of the smtp app: a server on a loopback
// port, speaking SMTP or (lmtp) LMTP.
type dsnE2ERemote struct {
	name string
	port int
	lmtp bool
}

// dsnE2EConfig is a Caddyfile whose smtp app (host name out.example.org)
// routes by next_hop (the lines of its block) to the remotes, with the
// queue settings given (lines of the queue block), and a submission
// listener on 127.0.0.1:submit that relays for loopback clients.
func dsnE2EConfig(submit int, nextHop string, remotes []dsnE2ERemote, queue string) string {
	var rs strings.Builder
	for _, r := range remotes {
		fmt.Fprintf(&rs, "\t\tremote %s {\n\t\t\taddress 127.0.0.1\n\t\t\tport %d\n", r.name, r.port)
		if r.lmtp {
			rs.WriteString("\t\t\tprotocol lmtp\n")
		}
		rs.WriteString("\t\t}\n")
	}
	return fmt.Sprintf(`{
	admin off
	debug
	smtp {
		hostname out.example.org
		resolver udp://127.0.0.1:1
		next_hop {
%s
		}
%s		queue {
%s
		}
	}
	layer4 {
		127.0.0.1:%d {
			route {
				smtp_submission {
					relay_networks 127.0.0.0/8
				}
			}
		}
	}
}
`, nextHop, rs.String(), queue, submit)
}

// dsnE2EWithEvents adapts a Caddyfile to JSON with the events app added
// (with no handler), so that the smtp app emits its events and Caddy logs
// each at debug level on the logger "events".
func dsnE2EWithEvents(t *testing.T, caddyfile string) string {
	t.Helper()
	return adaptJSON(t, caddyfile, func(cfg map[string]any) {
		cfg["apps"].(map[string]any)["events"] = map[string]any{}
	})
}

// dsnE2ESubmit submits msg in one transaction with the whole arguments
// of MAIL ("<a@b> RET=FULL") and of each RCPT ("<c@d> NOTIFY=SUCCESS"),
// and returns the queue ID.
func dsnE2ESubmit(t *testing.T, addr, mailArgs string, rcptArgs []string, msg string) string {
	t.Helper()
	s, err := dialSubmitter(addr)
	require.NoError(t, err)
	defer s.close()
	code, text, err := s.cmd("MAIL FROM:%s", mailArgs)
	require.NoError(t, err)
	require.Equal(t, 250, code, "MAIL FROM:%s: %s", mailArgs, text)
	for _, r := range rcptArgs {
		code, text, err = s.cmd("RCPT TO:%s", r)
		require.NoError(t, err)
		require.Equal(t, 250, code, "RCPT TO:%s: %s", r, text)
	}
	code, text, err = s.cmd("DATA")
	require.NoError(t, err)
	require.Equal(t, 354, code, text)
	w := s.tp.DotWriter()
	_, err = io.WriteString(w, msg)
	require.NoError(t, err)
	require.NoError(t, w.Close())
	code, text, err = s.read()
	require.NoError(t, err)
	id, ok := queuedID(code, text)
	require.True(t, ok, "%d %s", code, text)
	return id
}

// dsnE2EPart is one top-level part of a notice as Python's email package
// read it.
type dsnE2EPart struct {
	Type    string
	Defects []string
	// Blocks are the groups of fields of a message/delivery-status part:
	// the per-message group, then one per recipient.
	Blocks [][][2]string
	// Text is a text/* part's decoded content.
	Text string
	// InnerHeader is the header of a message/rfc822 part's message.
	InnerHeader [][2]string `json:"inner_header"`
}

// dsnE2ENotice is a notice the sender's server received, parsed.
type dsnE2ENotice struct {
	Mail       dsnE2EMail
	Defects    []string
	Type       string
	ReportType string `json:"report_type"`
	Header     [][2]string
	Parts      []dsnE2EPart
	// Raw holds the top-level parts' bodies exactly as they are in the
	// notice (Go's mime/multipart, which decodes nothing with
	// NextRawPart), and RawTypes their Content-Types.
	Raw      [][]byte `json:"-"`
	RawTypes []string `json:"-"`
}

// dsnE2EParse parses a notice with Python's email package
// (testdata/dsn/parse_notice.py), and splits its parts raw with Go's
// mime/multipart.
func dsnE2EParse(t *testing.T, m dsnE2EMail) dsnE2ENotice {
	t.Helper()
	file := filepath.Join(t.TempDir(), "notice.eml")
	require.NoError(t, os.WriteFile(file, m.Data, 0o644))
	cmd := exec.Command("python3", "testdata/dsn/parse_notice.py", file)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	require.NoError(t, err, "parse_notice.py: %s", stderr.String())
	var n dsnE2ENotice
	require.NoError(t, json.Unmarshal(out, &n))
	if d := os.Getenv("E2E_LOGDIR"); d != "" {
		// A failed test keeps its notices next to Caddy's log.
		t.Cleanup(func() {
			if t.Failed() {
				name := fmt.Sprintf("%s-notice-%d.eml", strings.ReplaceAll(t.Name(), "/", "_"), m.At.UnixNano())
				_ = os.WriteFile(filepath.Join(d, name), m.Data, 0o644)
			}
		})
	}
	n.Mail = m

	msg, err := mail.ReadMessage(bytes.NewReader(m.Data))
	require.NoError(t, err)
	_, params, err := mime.ParseMediaType(msg.Header.Get("Content-Type"))
	require.NoError(t, err)
	mr := multipart.NewReader(msg.Body, params["boundary"])
	for i := 0; i < 10; i++ {
		p, err := mr.NextRawPart()
		if err == io.EOF {
			break
		}
		require.NoError(t, err)
		b, err := io.ReadAll(p)
		require.NoError(t, err)
		n.Raw = append(n.Raw, b)
		n.RawTypes = append(n.RawTypes, p.Header.Get("Content-Type"))
	}
	return n
}

// header returns the notice's header field name ("" when absent).
func (n dsnE2ENotice) header(name string) string { return dsnE2EField(n.Header, name) }

// part returns the first part of the type, or fails the test.
func (n dsnE2ENotice) part(t *testing.T, ctype string) dsnE2EPart {
	t.Helper()
	for _, p := range n.Parts {
		if p.Type == ctype {
			return p
		}
	}
	t.Fatalf("the notice has no %s part: %s", ctype, n.Mail.Data)
	return dsnE2EPart{}
}

// status returns the per-message fields and the per-recipient groups.
func (n dsnE2ENotice) status(t *testing.T) ([][2]string, [][][2]string) {
	t.Helper()
	p := n.part(t, "message/delivery-status")
	require.GreaterOrEqual(t, len(p.Blocks), 2, "a per-message group and at least one per-recipient group")
	return p.Blocks[0], p.Blocks[1:]
}

// kind is the notice's action and Final-Recipient of its first recipient
// ("failed gone@refuse.test"), which tell the notices of a test apart.
func (n dsnE2ENotice) kind(t *testing.T) string {
	t.Helper()
	_, rcpts := n.status(t)
	return dsnE2EField(rcpts[0], "Action") + " " + strings.TrimPrefix(dsnE2EField(rcpts[0], "Final-Recipient"), "rfc822;")
}

// dsnE2EField returns the first field called name ("" when absent).
func dsnE2EField(fields [][2]string, name string) string {
	for _, f := range fields {
		if strings.EqualFold(f[0], name) {
			return f[1]
		}
	}
	return ""
}

// dsnE2EDate parses an RFC 5322 date field.
func dsnE2EDate(t *testing.T, name, v string) time.Time {
	t.Helper()
	d, err := mail.ParseDate(v)
	require.NoError(t, err, "%s: %q", name, v)
	return d
}

// dsnE2ENear asserts that a date field (seconds) is within slack of want.
func dsnE2ENear(t *testing.T, name string, want, got time.Time, slack time.Duration) {
	t.Helper()
	d := got.Sub(want)
	assert.True(t, d > -slack && d < slack, "%s: %v, want %v (±%v)", name, got, want, slack)
}

// dsnE2ECheckEnvelope asserts what every notice to sender has: sent from
// the null sender to the sender only, a multipart/report of type
// delivery-status that Python reads without defects, from the mailer
// daemon of out.example.org, marked auto-replied.
func dsnE2ECheckEnvelope(t *testing.T, n dsnE2ENotice, sender string) {
	t.Helper()
	assert.Equal(t, "", n.Mail.From, "a notice comes from the null sender")
	assert.Equal(t, []string{sender}, n.Mail.To)
	assert.Empty(t, n.Defects)
	assert.Equal(t, "multipart/report", n.Type)
	assert.Equal(t, "delivery-status", n.ReportType)
	assert.Contains(t, n.header("From"), "<MAILER-DAEMON@out.example.org>")
	to, err := mail.ParseAddress(n.header("To"))
	if assert.NoError(t, err, "To: %q", n.header("To")) {
		assert.Equal(t, sender, to.Address)
	}
	assert.Equal(t, "auto-replied", n.header("Auto-Submitted"))
	for _, p := range n.Parts {
		assert.Empty(t, p.Defects, "%s", p.Type)
	}
	// RFC 6522: the human-readable part first, then the report.
	if assert.GreaterOrEqual(t, len(n.Parts), 2) {
		assert.Equal(t, "text/plain", n.Parts[0].Type)
		assert.Equal(t, "message/delivery-status", n.Parts[1].Type)
	}
	if assert.Equal(t, len(n.Parts), len(n.Raw), "Python and mime/multipart see the same parts") {
		for i, p := range n.Parts {
			mt, _, err := mime.ParseMediaType(n.RawTypes[i])
			assert.NoError(t, err)
			assert.Equal(t, p.Type, mt, "part %d", i)
		}
	}
}

// dsnE2ECheckRecipient asserts the per-recipient fields of a recipient
// that a remote (at 127.0.0.1) answered with reply.
func dsnE2ECheckRecipient(t *testing.T, g [][2]string, action, rcpt, orcpt, reply string) {
	t.Helper()
	assert.Equal(t, action, dsnE2EField(g, "Action"))
	assert.Equal(t, "rfc822;"+rcpt, dsnE2EField(g, "Final-Recipient"))
	if orcpt != "" {
		assert.Equal(t, "rfc822;"+orcpt, dsnE2EField(g, "Original-Recipient"))
	} else {
		assert.Empty(t, dsnE2EField(g, "Original-Recipient"), "no ORCPT, no Original-Recipient")
	}
	assert.Equal(t, "dns; [127.0.0.1]", dsnE2EField(g, "Remote-MTA"))
	assert.Equal(t, "smtp; "+reply, dsnE2EField(g, "Diagnostic-Code"))
	// The Status is the reply's enhanced status code when it has one
	// (RFC 3463), of the action's class.
	status := dsnE2EField(g, "Status")
	class := map[string]string{"failed": "5", "delayed": "4", "relayed": "2", "delivered": "2"}[action]
	assert.Regexp(t, `^`+class+`\.\d{1,3}\.\d{1,3}$`, status)
	if m := regexp.MustCompile(`^\d{3} (\d\.\d{1,3}\.\d{1,3}) `).FindStringSubmatch(reply); m != nil {
		assert.Equal(t, m[1], status, "the reply's enhanced status code")
	}
}

// dsnE2EReceived matches the Received header the submission listener
// adds in front of a submitted message.
var dsnE2EReceived = regexp.MustCompile(`^Received: from client\.example\.org \(\[127\.0\.0\.1\]\)\r\n\tby out\.example\.org \(caddy-smtp\) with E?SMTP id \S+\r\n(?:\t[^\r\n]*\r\n)+$`)

// dsnE2ECheckReturned asserts that ret, a returned message or header, is
// the submitted one (orig) behind the one Received header the submission
// listener added: byte for byte.
func dsnE2ECheckReturned(t *testing.T, ret, orig []byte, what string) {
	t.Helper()
	require.True(t, bytes.HasSuffix(ret, orig), "%s: the returned bytes end with the submitted ones:\n%q\nwant suffix\n%q", what, ret, orig)
	assert.Regexp(t, dsnE2EReceived, string(ret[:len(ret)-len(orig)]), "%s: only the Received header is added", what)
}

// dsnE2EDeliveryLines returns the queue's log lines of message id that
// record an outcome for rcpt (deferred, failed, expired, delivered).
func dsnE2EDeliveryLines(p *caddyProc, id, rcpt string) []logEntry {
	var out []logEntry
	for _, e := range linesOf(p, id, "") {
		if e.str("rcpt") == rcpt {
			out = append(out, e)
		}
	}
	return out
}

// dsnE2ENoticeLog returns the smtp app's "notice queued" lines about
// message id.
func dsnE2ENoticeLog(p *caddyProc, id string) []logEntry {
	var out []logEntry
	for _, e := range p.entries() {
		if e.Msg == "notice queued" && e.str("id") == id {
			out = append(out, e)
		}
	}
	return out
}

// dsnE2EEvents returns the events named name that Caddy's events app
// logged (at debug level, logger "events"), by their data.
func dsnE2EEvents(p *caddyProc, name string) []map[string]any {
	var out []map[string]any
	for _, e := range p.entries() {
		if e.Logger == "events" && e.Msg == "event" && e.str("name") == name {
			data, _ := e.F["data"].(map[string]any)
			out = append(out, data)
		}
	}
	return out
}

// dsnE2EMessage is the original of the notices: CR LF line ends, a
// folded header field, a line that starts with a dot (stuffed on the
// wire), trailing white space, and a signature separator.
const dsnE2EMessage = "From: App <app@example.org>\r\n" +
	"To: Gone <gone@refuse.test>, Later <later@defer.test>\r\n" +
	"Subject: Invoice 42 for the quarter\r\n" +
	"Message-ID: <dsn-e2e-1@example.org>\r\n" +
	"Date: Sat, 01 Mar 2025 07:59:00 +0000\r\n" +
	"X-Folded: first part\r\n\tsecond part\r\n" +
	"MIME-Version: 1.0\r\n" +
	"Content-Type: text/plain; charset=us-ascii\r\n" +
	"\r\n" +
	"Hello,\r\n" +
	".a line that starts with a dot\r\n" +
	"trailing white space   \r\n" +
	"\r\n" +
	"-- \r\n" +
	"App\r\n"

// dsnE2EStartMX starts a Postfix that plays the recipients' server: it
// takes mail for refuse.test and defer.test, refuses unknown users for
// good (550 5.1.1 User unknown) and defers later@defer.test every time
// (451 4.7.1, as greylisting would).
func dsnE2EStartMX(t *testing.T) *peertest.Postfix {
	t.Helper()
	return peertest.StartPostfix(t, peertest.PostfixOptions{
		Hostname: "mx.refuse.test",
		Domains:  []string{"refuse.test", "defer.test"},
		NoTLS:    true,
		Extra: map[string]string{
			"local_recipient_maps":         "inline:{keep=x, later=x, keep@refuse.test=x, later@defer.test=x}",
			"smtpd_recipient_restrictions": "check_recipient_access inline:{{later@defer.test=451 4.7.1 Greylisted, please try again later}}",
		},
	})
}

// TestDSNE2EFailureAndDelay sends a message with two recipients (RET=FULL,
// ENVID, an ORCPT each) to Postfix, which refuses one at RCPT (550 5.1.1
// User unknown) and defers the other (451 4.7.1) on every try until the
// message expires (retry 2s, expire 10s), with a delay notice due at 4s.
// A second message (RET=HDRS, no ENVID, no ORCPT) is refused, and a third
// (NOTIFY=NEVER) too. The sender's domain goes to a server that keeps what
// it gets byte for byte. Exactly four notices arrive, each once, in order:
// the failures of the first recipient and of the second message, the
// delay of the second recipient, then its failure by expiry. Python's
// email package reads each as RFC 3464 says, with every field's value
// checked against the queue's log; RET=FULL returns the whole message byte
// for byte (in a failure), RET=HDRS and delays only its header.
func TestDSNE2EFailureAndDelay(t *testing.T) {
	peertest.Need(t, "python3")
	mx := dsnE2EStartMX(t)
	home := dsnE2EStartStore(t)
	submit := peertest.FreePort(t)
	const expire, notify = 10 * time.Second, 4 * time.Second
	p := startCaddy(t, "Caddyfile", dsnE2EConfig(submit, `
			if "rcpt_domain in ['refuse.test', 'defer.test']" mx
			else home`,
		[]dsnE2ERemote{{"mx", mx.SMTPPort, false}, {"home", home.Port, false}},
		"\t\t\tretry 2s\n\t\t\texpire 10s\n\t\t\tnotify 4s"))
	addr := fmt.Sprintf("127.0.0.1:%d", submit)

	id1 := dsnE2ESubmit(t, addr, "<app@example.org> RET=FULL ENVID=e2e-envid-1",
		[]string{"<gone@refuse.test> ORCPT=rfc822;Gone.Original@example.net", "<later@defer.test> NOTIFY=FAILURE,DELAY ORCPT=rfc822;later-orig@example.net"},
		dsnE2EMessage)
	msg2 := strings.Replace(dsnE2EMessage, "dsn-e2e-1@", "dsn-e2e-2@", 1)
	id2 := dsnE2ESubmit(t, addr, "<app@example.org> RET=HDRS", []string{"<gone2@refuse.test>"}, msg2)
	id3 := dsnE2ESubmit(t, addr, "<app@example.org> RET=FULL", []string{"<quiet@refuse.test> NOTIFY=NEVER"},
		strings.Replace(dsnE2EMessage, "dsn-e2e-1@", "dsn-e2e-3@", 1))

	// The last notice comes when the message expires, at 10 s.
	home.wait(t, 4, expire+20*time.Second)
	// Anything more would come now: a retry's worth and more.
	time.Sleep(3 * time.Second)
	got := home.messages()
	require.Len(t, got, 4, "four notices, each once")

	arrived := map[string]time.Time{}
	for _, id := range []string{id1, id2, id3} {
		q := linesOf(p, id, "queued")
		require.Len(t, q, 1, id)
		arrived[id] = q[0].TS
	}
	byKind := map[string]dsnE2ENotice{}
	var order []string
	for _, m := range got {
		n := dsnE2EParse(t, m)
		k := n.kind(t)
		require.NotContains(t, byKind, k, "a notice twice")
		byKind[k] = n
		order = append(order, k)
	}
	// The two immediate failures come in either order; then the delay,
	// then the expiry.
	assert.ElementsMatch(t, []string{"failed gone@refuse.test", "failed gone2@refuse.test"}, order[:2])
	assert.Equal(t, []string{"delayed later@defer.test", "failed later@defer.test"}, order[2:])
	assert.Empty(t, dsnE2ENoticeLog(p, id3), "NOTIFY=NEVER: no notice")

	// The replies Postfix gave, as the queue logged them.
	refused := dsnE2EDeliveryLines(p, id1, "gone@refuse.test")
	require.Len(t, refused, 1)
	require.Equal(t, "failed", refused[0].Msg)
	refusedReply := refused[0].str("reply")
	require.Regexp(t, `^550 5\.1\.1 <gone@refuse\.test>: Recipient address rejected: User unknown`, refusedReply)
	later := dsnE2EDeliveryLines(p, id1, "later@defer.test")
	require.GreaterOrEqual(t, len(later), 3, "deferred, retried, expired")
	require.Equal(t, "expired", later[len(later)-1].Msg)
	deferredReply := later[0].str("reply")
	require.Regexp(t, `^451 4\.7\.1 <later@defer\.test>: Recipient address rejected: Greylisted`, deferredReply)
	for _, e := range later[:len(later)-1] {
		assert.Equal(t, deferredReply, e.str("reply"), "every attempt got the same reply")
	}

	// The whole original: the submitted bytes behind the Received header.
	orig1 := []byte(dsnE2EMessage)
	hdr1, _ := peertest.SplitMessage(orig1)

	t.Run("failed", func(t *testing.T) {
		n, ok := byKind["failed gone@refuse.test"]
		require.True(t, ok, "no notice \"failed gone@refuse.test\"")
		dsnE2ECheckEnvelope(t, n, "app@example.org")
		assert.Equal(t, "<dsn-e2e-1@example.org>", n.header("References"))
		msgFields, rcpts := n.status(t)
		assert.Equal(t, "dns; out.example.org", dsnE2EField(msgFields, "Reporting-MTA"))
		assert.Equal(t, "e2e-envid-1", dsnE2EField(msgFields, "Original-Envelope-Id"))
		dsnE2ENear(t, "Arrival-Date", arrived[id1], dsnE2EDate(t, "Arrival-Date", dsnE2EField(msgFields, "Arrival-Date")), 1500*time.Millisecond)
		require.Len(t, rcpts, 1, "only the recipient that failed")
		dsnE2ECheckRecipient(t, rcpts[0], "failed", "gone@refuse.test", "Gone.Original@example.net", refusedReply)
		dsnE2ENear(t, "Last-Attempt-Date", refused[0].TS, dsnE2EDate(t, "Last-Attempt-Date", dsnE2EField(rcpts[0], "Last-Attempt-Date")), 1500*time.Millisecond)
		assert.Empty(t, dsnE2EField(rcpts[0], "Will-Retry-Until"), "a failure is not retried")
		// RET=FULL: the whole message, byte for byte.
		require.Len(t, n.Parts, 3)
		assert.Equal(t, "message/rfc822", n.Parts[2].Type)
		dsnE2ECheckReturned(t, n.Raw[2], orig1, "RET=FULL")
		assert.Equal(t, "Invoice 42 for the quarter", dsnE2EField(n.Parts[2].InnerHeader, "Subject"))
		text := n.Parts[0].Text
		assert.Contains(t, text, "gone@refuse.test")
		assert.Contains(t, text, "Invoice 42 for the quarter")
		assert.Contains(t, strings.Join(strings.Fields(text), " "), strings.Join(strings.Fields(refusedReply), " "), "the text quotes the reply")
	})

	t.Run("failed_hdrs", func(t *testing.T) {
		n, ok := byKind["failed gone2@refuse.test"]
		require.True(t, ok, "no notice \"failed gone2@refuse.test\"")
		dsnE2ECheckEnvelope(t, n, "app@example.org")
		msgFields, rcpts := n.status(t)
		assert.Equal(t, "dns; out.example.org", dsnE2EField(msgFields, "Reporting-MTA"))
		assert.Empty(t, dsnE2EField(msgFields, "Original-Envelope-Id"), "no ENVID, no Original-Envelope-Id")
		dsnE2ENear(t, "Arrival-Date", arrived[id2], dsnE2EDate(t, "Arrival-Date", dsnE2EField(msgFields, "Arrival-Date")), 1500*time.Millisecond)
		require.Len(t, rcpts, 1)
		l := dsnE2EDeliveryLines(p, id2, "gone2@refuse.test")
		require.Len(t, l, 1)
		dsnE2ECheckRecipient(t, rcpts[0], "failed", "gone2@refuse.test", "", l[0].str("reply"))
		// RET=HDRS: the header only.
		require.Len(t, n.Parts, 3)
		assert.Equal(t, "text/rfc822-headers", n.Parts[2].Type)
		hdr2, _ := peertest.SplitMessage([]byte(msg2))
		dsnE2ECheckReturned(t, n.Raw[2], hdr2, "RET=HDRS")
	})

	t.Run("delayed", func(t *testing.T) {
		n, ok := byKind["delayed later@defer.test"]
		require.True(t, ok, "no notice \"delayed later@defer.test\"")
		dsnE2ECheckEnvelope(t, n, "app@example.org")
		age := n.Mail.At.Sub(arrived[id1])
		assert.GreaterOrEqual(t, age, notify-200*time.Millisecond, "the delay notice is due at 4s")
		assert.Less(t, age, expire, "the delay notice comes before the expiry")
		msgFields, rcpts := n.status(t)
		assert.Equal(t, "dns; out.example.org", dsnE2EField(msgFields, "Reporting-MTA"))
		assert.Equal(t, "e2e-envid-1", dsnE2EField(msgFields, "Original-Envelope-Id"))
		dsnE2ENear(t, "Arrival-Date", arrived[id1], dsnE2EDate(t, "Arrival-Date", dsnE2EField(msgFields, "Arrival-Date")), 1500*time.Millisecond)
		require.Len(t, rcpts, 1, "only the recipient still pending")
		g := rcpts[0]
		// The last deferral before the notice.
		var last logEntry
		for _, e := range later {
			if e.Msg == "deferred" && !e.TS.After(n.Mail.At) {
				last = e
			}
		}
		require.NotEmpty(t, last.Msg, "a deferral before the delay notice")
		dsnE2ECheckRecipient(t, g, "delayed", "later@defer.test", "later-orig@example.net", last.str("reply"))
		dsnE2ENear(t, "Will-Retry-Until", arrived[id1].Add(expire), dsnE2EDate(t, "Will-Retry-Until", dsnE2EField(g, "Will-Retry-Until")), 1500*time.Millisecond)
		dsnE2ENear(t, "Last-Attempt-Date", last.TS, dsnE2EDate(t, "Last-Attempt-Date", dsnE2EField(g, "Last-Attempt-Date")), 1500*time.Millisecond)
		// A delay returns the header only, even with RET=FULL.
		require.Len(t, n.Parts, 3)
		assert.Equal(t, "text/rfc822-headers", n.Parts[2].Type)
		dsnE2ECheckReturned(t, n.Raw[2], hdr1, "delay")
	})

	t.Run("expired", func(t *testing.T) {
		n, ok := byKind["failed later@defer.test"]
		require.True(t, ok, "no notice \"failed later@defer.test\"")
		dsnE2ECheckEnvelope(t, n, "app@example.org")
		age := n.Mail.At.Sub(arrived[id1])
		assert.GreaterOrEqual(t, age, expire-200*time.Millisecond, "failed at the expiry, not before")
		msgFields, rcpts := n.status(t)
		assert.Equal(t, "e2e-envid-1", dsnE2EField(msgFields, "Original-Envelope-Id"))
		require.Len(t, rcpts, 1)
		g := rcpts[0]
		exp := later[len(later)-1]
		assert.Equal(t, "failed", dsnE2EField(g, "Action"))
		assert.Equal(t, "rfc822;later@defer.test", dsnE2EField(g, "Final-Recipient"))
		assert.Equal(t, "rfc822;later-orig@example.net", dsnE2EField(g, "Original-Recipient"))
		assert.Regexp(t, `^5\.\d{1,3}\.\d{1,3}$`, dsnE2EField(g, "Status"))
		// RFC 3464, sections 2.3.5 and 2.3.6: a recipient that was
		// attempted over SMTP is reported with the server that answered
		// and its reply, the 451 here, also when it failed by expiry.
		assert.Equal(t, "dns; [127.0.0.1]", dsnE2EField(g, "Remote-MTA"), "the server whose reply is quoted")
		assert.Equal(t, "smtp; "+deferredReply, dsnE2EField(g, "Diagnostic-Code"), "the server's last reply")
		assert.Contains(t, exp.str("reply"), deferredReply, "the queue logged the expiry with the last reply")
		assert.Empty(t, dsnE2EField(g, "Will-Retry-Until"))
		require.Len(t, n.Parts, 3)
		assert.Equal(t, "message/rfc822", n.Parts[2].Type)
		dsnE2ECheckReturned(t, n.Raw[2], orig1, "expired RET=FULL")
	})
}

// dsnE2EWaitOutcomes waits until every message in ids has a final outcome
// logged for each of its recipients (delivered or failed), n lines in
// all.
func dsnE2EWaitOutcomes(t *testing.T, p *caddyProc, n int, timeout time.Duration, ids ...string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		done := 0
		for _, id := range ids {
			done += len(linesOf(p, id, "delivered")) + len(linesOf(p, id, "failed")) + len(linesOf(p, id, "expired"))
		}
		if done >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d final outcomes after %v", done, n, timeout)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestDSNE2ESuccess asks for success notices (NOTIFY=SUCCESS): a message
// relayed to a server that does not offer DSN (smtp-sink -N) gets a
// "relayed" notice, one delivered over LMTP (Dovecot) a "delivered"
// notice; one relayed to a server that offers DSN (smtp-sink) gets none,
// since that server reports from then on and has the parameters (it
// logged NOTIFY and ORCPT), and one without NOTIFY gets none either.
func TestDSNE2ESuccess(t *testing.T) {
	peertest.Need(t, "python3")
	noDSN := peertest.StartSink(t, peertest.SinkOptions{Flags: []string{"-N"}})
	withDSN := peertest.StartSink(t, peertest.SinkOptions{})
	lmtp := peertest.StartDovecot(t, peertest.DovecotOptions{NoTLS: true})
	home := dsnE2EStartStore(t)
	submit := peertest.FreePort(t)
	p := startCaddy(t, "Caddyfile", dsnE2EConfig(submit, `
			if "rcpt_domain == 'relay.test'" nodsn
			if "rcpt_domain == 'dsn.test'" withdsn
			if "rcpt_domain == 'example.test'" lmtp
			else home`,
		[]dsnE2ERemote{{"nodsn", noDSN.Port, false}, {"withdsn", withDSN.Port, false}, {"lmtp", lmtp.Port, true}, {"home", home.Port, false}},
		"\t\t\tretry 2s\n\t\t\texpire 1m"))
	addr := fmt.Sprintf("127.0.0.1:%d", submit)

	msg := func(n int) string {
		return strings.Replace(dsnE2EMessage, "dsn-e2e-1@", fmt.Sprintf("dsn-e2e-success-%d@", n), 1)
	}
	idRelayed := dsnE2ESubmit(t, addr, "<app@example.org> ENVID=succ-relayed",
		[]string{"<r@relay.test> NOTIFY=SUCCESS ORCPT=rfc822;r-orig@example.net"}, msg(1))
	idDelivered := dsnE2ESubmit(t, addr, "<app@example.org> RET=FULL",
		[]string{"<alice@example.test> NOTIFY=SUCCESS,FAILURE"}, msg(2))
	idPassed := dsnE2ESubmit(t, addr, "<app@example.org>",
		[]string{"<d@dsn.test> NOTIFY=SUCCESS ORCPT=rfc822;d-orig@example.net"}, msg(3))
	idQuiet := dsnE2ESubmit(t, addr, "<app@example.org>", []string{"<q@relay.test>"}, msg(4))

	dsnE2EWaitOutcomes(t, p, 4, 30*time.Second, idRelayed, idDelivered, idPassed, idQuiet)
	for _, id := range []string{idRelayed, idDelivered, idPassed, idQuiet} {
		require.Len(t, linesOf(p, id, "delivered"), 1, "%s delivered", id)
	}
	home.wait(t, 2, 20*time.Second)
	time.Sleep(1500 * time.Millisecond) // a third would come now
	got := home.messages()
	require.Len(t, got, 2, "a relayed and a delivered notice, nothing for the others")
	byKind := map[string]dsnE2ENotice{}
	for _, m := range got {
		n := dsnE2EParse(t, m)
		byKind[n.kind(t)] = n
	}
	assert.Empty(t, dsnE2ENoticeLog(p, idPassed), "the next hop offers DSN: it reports")
	assert.Empty(t, dsnE2ENoticeLog(p, idQuiet), "no NOTIFY: no success notice")

	// The server that offers DSN got the parameters.
	passed := withDSN.Messages(t)
	require.Len(t, passed, 1)
	require.Len(t, passed[0].RcptArgs, 1)
	assert.Contains(t, passed[0].RcptArgs[0], "NOTIFY=SUCCESS")
	assert.Contains(t, passed[0].RcptArgs[0], "ORCPT=rfc822;d-orig@example.net")

	t.Run("relayed", func(t *testing.T) {
		n, ok := byKind["relayed r@relay.test"]
		require.True(t, ok, "a relayed notice: %v", byKind)
		dsnE2ECheckEnvelope(t, n, "app@example.org")
		msgFields, rcpts := n.status(t)
		assert.Equal(t, "dns; out.example.org", dsnE2EField(msgFields, "Reporting-MTA"))
		assert.Equal(t, "succ-relayed", dsnE2EField(msgFields, "Original-Envelope-Id"))
		require.Len(t, rcpts, 1)
		l := linesOf(p, idRelayed, "delivered")[0]
		require.Regexp(t, `^250 `, l.str("reply"))
		dsnE2ECheckRecipient(t, rcpts[0], "relayed", "r@relay.test", "r-orig@example.net", l.str("reply"))
		require.Len(t, n.Parts, 3)
		assert.Equal(t, "text/rfc822-headers", n.Parts[2].Type, "a success notice returns the header only")
		hdr, _ := peertest.SplitMessage([]byte(msg(1)))
		dsnE2ECheckReturned(t, n.Raw[2], hdr, "relayed")
		// The sink without DSN got no DSN parameters.
		relayed := noDSN.Messages(t)
		require.Len(t, relayed, 2)
		for _, m := range relayed {
			assert.NotContains(t, m.RcptArgs[0], "NOTIFY=")
		}
	})

	t.Run("delivered", func(t *testing.T) {
		n, ok := byKind["delivered alice@example.test"]
		require.True(t, ok, "a delivered notice: %v", byKind)
		dsnE2ECheckEnvelope(t, n, "app@example.org")
		msgFields, rcpts := n.status(t)
		assert.Equal(t, "dns; out.example.org", dsnE2EField(msgFields, "Reporting-MTA"))
		assert.Empty(t, dsnE2EField(msgFields, "Original-Envelope-Id"))
		require.Len(t, rcpts, 1)
		l := linesOf(p, idDelivered, "delivered")[0]
		require.Regexp(t, `^250 `, l.str("reply"))
		dsnE2ECheckRecipient(t, rcpts[0], "delivered", "alice@example.test", "", l.str("reply"))
		require.Len(t, n.Parts, 3)
		assert.Equal(t, "text/rfc822-headers", n.Parts[2].Type, "a success notice returns the header only, even with RET=FULL")
		hdr, _ := peertest.SplitMessage([]byte(msg(2)))
		dsnE2ECheckReturned(t, n.Raw[2], hdr, "delivered")
		assert.Len(t, lmtp.Messages(t, "alice@example.test"), 1, "Dovecot stored the message")
	})
}

// TestDSNE2EDoubleBounce: a message from the null sender that fails gets
// no notice (there is no one to send it to, and a notice about a notice
// could loop) but one smtp.double_bounce event; and a notice that fails
// (its recipient, the sender of the original, is refused) is not answered
// with another notice either, but with one smtp.double_bounce event.
func TestDSNE2EDoubleBounce(t *testing.T) {
	mx := dsnE2EStartMX(t)
	submit := peertest.FreePort(t)
	p := startCaddy(t, "caddy.json", dsnE2EWithEvents(t, dsnE2EConfig(submit, `
			else mx`,
		[]dsnE2ERemote{{"mx", mx.SMTPPort, false}},
		"\t\t\tretry 2s\n\t\t\texpire 1m")))
	addr := fmt.Sprintf("127.0.0.1:%d", submit)

	// A bounce (from <>) to a recipient that is refused.
	idNull := dsnE2ESubmit(t, addr, "<>", []string{"<gone@refuse.test>"}, strings.Replace(dsnE2EMessage, "dsn-e2e-1@", "dsn-e2e-null@", 1))
	// A message whose sender is itself refused: its notice fails too.
	idOrig := dsnE2ESubmit(t, addr, "<nobody@refuse.test>", []string{"<gone2@refuse.test>"}, strings.Replace(dsnE2EMessage, "dsn-e2e-1@", "dsn-e2e-orig@", 1))

	// Three messages fail: the bounce, the message, and its notice.
	deadline := time.Now().Add(30 * time.Second)
	for len(p.queueLog("failed")) < 3 || len(dsnE2EEvents(p, "smtp.double_bounce")) < 2 {
		require.True(t, time.Now().Before(deadline), "%d failures, %d double bounces after 30s",
			len(p.queueLog("failed")), len(dsnE2EEvents(p, "smtp.double_bounce")))
		time.Sleep(100 * time.Millisecond)
	}
	time.Sleep(2 * time.Second) // anything more would come now

	require.Len(t, linesOf(p, idNull, "failed"), 1)
	assert.Empty(t, dsnE2ENoticeLog(p, idNull), "no notice about a bounce")
	notices := dsnE2ENoticeLog(p, idOrig)
	require.Len(t, notices, 1, "the original message gets its notice")
	idNotice := notices[0].str("notice")
	require.Len(t, linesOf(p, idNotice, "failed"), 1, "the notice to nobody@refuse.test fails")
	assert.Empty(t, dsnE2ENoticeLog(p, idNotice), "no notice about a notice")
	// Exactly three messages were ever in the queue: no notice was made
	// for the bounce or for the failed notice.
	ids := map[string]bool{}
	for _, e := range p.queueLog("") {
		if id := e.str("id"); id != "" {
			ids[id] = true
		}
	}
	assert.Len(t, ids, 3, "the bounce, the message and its notice: %v", ids)
	var made int
	for _, e := range p.entries() {
		if e.Msg == "notice queued" {
			made++
		}
	}
	assert.Equal(t, 1, made, "one notice made in all")
	assert.Len(t, p.queueLog("failed"), 3)

	events := dsnE2EEvents(p, "smtp.double_bounce")
	require.Len(t, events, 2, "one event per failed bounce")
	byID := map[string]map[string]any{}
	for _, e := range events {
		byID[fmt.Sprint(e["id"])] = e
	}
	for id, rcpt := range map[string]string{idNull: "gone@refuse.test", idNotice: "nobody@refuse.test"} {
		e, ok := byID[id]
		if assert.True(t, ok, "an event for %s: %v", id, events) {
			assert.Equal(t, rcpt, e["rcpt"])
			assert.Regexp(t, `^550 5\.1\.1 `, e["reply"])
		}
	}
	// The app's own log says so too, as a warning.
	var warnings int
	for _, e := range p.entries() {
		if e.Msg == "double bounce: a notice could not be delivered" && e.Level == "warn" {
			warnings++
		}
	}
	assert.Equal(t, 2, warnings)
}

// TestDSNE2EParametersPassed: to a next hop that offers DSN (Postfix),
// the DSN parameters go along: Postfix logs the MAIL and RCPT commands it
// received (debug_peer_list) with RET, ENVID, NOTIFY and ORCPT as
// submitted, and acts on them: NOTIFY=SUCCESS makes it send its own
// success notice ("sender delivery status notification"). The app sends
// none of its own for what Postfix reports.
func TestDSNE2EParametersPassed(t *testing.T) {
	mx := peertest.StartPostfix(t, peertest.PostfixOptions{
		NoTLS: true,
		Extra: map[string]string{
			// Log the SMTP conversation with loopback clients.
			"debug_peer_list":  "127.0.0.1",
			"debug_peer_level": "2",
		},
	})
	home := dsnE2EStartStore(t)
	submit := peertest.FreePort(t)
	p := startCaddy(t, "Caddyfile", dsnE2EConfig(submit, `
			if "rcpt_domain == 'example.test'" mx
			else home`,
		[]dsnE2ERemote{{"mx", mx.SMTPPort, false}, {"home", home.Port, false}},
		"\t\t\tretry 2s\n\t\t\texpire 1m"))
	addr := fmt.Sprintf("127.0.0.1:%d", submit)

	id := dsnE2ESubmit(t, addr, "<app@example.org> RET=HDRS ENVID=e2e-passed-1",
		[]string{"<bob@example.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;orig@example.org", "<carol@example.test> NOTIFY=NEVER"},
		strings.Replace(dsnE2EMessage, "dsn-e2e-1@", "dsn-e2e-passed@", 1))
	delivered := p.waitQueueLog("delivered", 2, 30*time.Second)
	for _, l := range delivered {
		assert.Equal(t, id, l.str("id"))
	}

	// Postfix's log: the commands as it received them, then its own
	// success notice for bob.
	var log string
	deadline := time.Now().Add(20 * time.Second)
	for {
		log = mx.Log()
		if strings.Contains(log, "sender delivery status notification") || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	received := func(cmd string) string {
		for _, line := range strings.Split(log, "\n") {
			if _, after, ok := strings.Cut(line, "< unknown[127.0.0.1]: "); ok && strings.HasPrefix(after, cmd) {
				return after
			}
		}
		return ""
	}
	mailCmd := received("MAIL FROM:")
	require.NotEmpty(t, mailCmd, "Postfix logged no MAIL command:\n%s", tail(log, 4000))
	assert.Contains(t, mailCmd, "RET=HDRS")
	assert.Contains(t, mailCmd, "ENVID=e2e-passed-1")
	bob := received("RCPT TO:<bob@example.test>")
	assert.Contains(t, bob, " NOTIFY=SUCCESS,FAILURE", "Postfix received NOTIFY")
	assert.Contains(t, bob, " ORCPT=rfc822;orig@example.org", "Postfix received ORCPT")
	assert.Contains(t, received("RCPT TO:<carol@example.test>"), " NOTIFY=NEVER")
	assert.Regexp(t, `sender delivery status notification: [0-9A-Za-z]+`, log, "Postfix acted on NOTIFY=SUCCESS")

	// The app leaves the reporting to Postfix.
	time.Sleep(1500 * time.Millisecond)
	assert.Empty(t, dsnE2ENoticeLog(p, id))
	assert.Empty(t, home.messages(), "no notice of the app's own")
}
