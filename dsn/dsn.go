// Package dsn makes delivery status notifications (DSNs): the messages that
// tell a sender what became of mail the queue could not deliver, is still
// trying to deliver, or handed to a server that will not report on it. It
// owns their format and nothing else: the queue decides when a notice is
// due (queue.News) and queues what Build returns.
//
// A notice follows RFC 3464 and RFC 6522: a multipart/report with
// report-type=delivery-status and three parts,
//
//  1. a human-readable text/plain part in UTF-8, from a Go template
//     (Options.Template; Data is what it is executed with),
//  2. a message/delivery-status part: per message, Original-Envelope-Id
//     (when ENVID was given), Reporting-MTA and Arrival-Date; per
//     recipient, Original-Recipient (when ORCPT was given),
//     Final-Recipient, Action, Status, Remote-MTA, Diagnostic-Code,
//     Last-Attempt-Date and Will-Retry-Until,
//  3. the returned content: the whole message as message/rfc822, or its
//     header section as text/rfc822-headers.
//
// A message sent with SMTPUTF8 gets the internationalized types of RFC 6533
// instead: message/global-delivery-status, and message/global or
// message/global-headers.
//
// The choices where the RFCs leave room, or where the queue's data needs
// a reading of them:
//
//   - ENVID and ORCPT are reported decoded from xtext, as the queue keeps
//     them (RFC 3461, section 6.3; section 4.4 requires the decoded ENVID to
//     be printable US-ASCII precisely because it is carried into the DSN).
//     A value that is not printable ASCII anyway (the HTTP entry path takes
//     any string) has its control characters dropped, and the ENVID its
//     non-ASCII characters replaced by "?"; a non-ASCII ORCPT is reported
//     with the "utf-8" address type of RFC 6533, section 3.
//   - A reply this app made up (transport.Reply.Local: a DNS failure, no
//     host reachable, an expired message) is reported as Diagnostic-Code
//     "smtp; <code> <text>" with no Remote-MTA field: RFC 3464, section
//     2.3.6, says the absence of Remote-MTA means the Reporting MTA issued
//     the diagnostic, and section 2.3.5 forbids Remote-MTA when no remote
//     MTA gave the answer. Only a server's own reply comes with Remote-MTA.
//   - Status is the reply's enhanced status code when it has a valid one
//     whose class matches the reply code (RFC 3463, RFC 2034 section 4);
//     otherwise it is derived: the class from the reply code (or from the
//     action when there is no reply: 5 failed, 4 delayed, 2 delivered and
//     relayed), the subject and detail from the kind of failure (X.4.7 for
//     an expired message, X.4.4 for DNS, X.4.1 for a host that did not
//     answer, X.7.0 for TLS, DANE and MTA-STS, X.3.5 for a configuration
//     error, X.0.0 otherwise).
//   - The whole message is returned only when RET=FULL was asked and the
//     notice reports a failure: RFC 3461, section 4.3, defines FULL for
//     "failed" DSNs. Delay and success notices, and RET=HDRS or no RET
//     (section 4.3 leaves the choice to the MTA), return the header section
//     only. A message that cannot be carried as message/rfc822 (a line over
//     998 octets or a NUL: RFC 2046, section 5.2.1, allows no encoding for
//     it) is returned as headers too, as RFC 3461, section 6.2, lets an MTA
//     do; message/global may be encoded, so an SMTPUTF8 message is then
//     returned whole in quoted-printable. Size alone never limits it: a
//     50 MiB message asked back whole is returned whole.
//   - Raw 8-bit header fields in a message sent without SMTPUTF8 (broken
//     headers) are returned as text/rfc822-headers in quoted-printable, as
//     RFC 6522, section 4, says; the notice stays 7-bit. A body that
//     cannot be read is not returned (the third part is optional, RFC 3464,
//     section 2.1).
//   - For an SMTPUTF8 message the report-type is global-delivery-status:
//     RFC 6522, section 3, makes report-type the subtype of the second
//     part. Addresses are "rfc822;" when ASCII and "utf-8;" otherwise,
//     raw in message/global-delivery-status and as utf-8-addr-xtext in
//     message/delivery-status (RFC 6533, section 3).
//   - Line ends of the returned content are made CRLF (a bare LF or CR
//     becomes CRLF, as the transport does when it sends a message), and the
//     content ends with CRLF; otherwise it is returned byte for byte.
//   - A notice about a message whose sender is the null sender is never made
//     (RFC 5321, section 4.5.5): Build returns ErrNullSender.
//   - The notice goes from the null sender to the original sender, with
//     From: Mail Delivery System <MAILER-DAEMON@host> and Auto-Submitted:
//     auto-replied (RFC 3834, section 5).
package dsn

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strings"
	"text/template"
	"time"

	"go.uber.org/zap"

	"github.com/seed7b014b84/caddy-smtp/queue"
)

// Options is how notices are made.
type Options struct {
	// ReportingMTA is this app's host name: it names the Reporting-MTA,
	// the From address (MAILER-DAEMON@ReportingMTA) and the Message-ID's
	// domain. Required; an ASCII name (an A-label for an IDN).
	ReportingMTA string
	// Template makes the human-readable part; it is executed with a *Data.
	// A template named "subject" in it, when defined, makes the Subject.
	// nil uses the package's default, in English (DefaultTemplate). A
	// template that fails to execute is logged and the default used
	// instead, so that a broken template never loses a bounce.
	Template *template.Template
	// Now returns the current time (for tests); nil is time.Now. Dates in
	// the notice are written in its location.
	Now func() time.Time
	// Boundary returns the MIME boundary (for tests); nil makes a random
	// one. It is called again if the boundary occurs in the content.
	Boundary func() string
	// Logger logs template failures; nil logs nothing.
	Logger *zap.Logger
}

// ErrNullSender is returned for a message whose sender is the null sender:
// such a message (a notice itself) never gets a notice.
var ErrNullSender = errors.New("dsn: the message's sender is the null sender; no notice is sent about it")

// maxPath is the longest sender address a notice is sent to (RFC 5321,
// section 4.5.3.1.3: a path is at most 256 octets, with its brackets).
const maxPath = 254

// Build makes the notice that tells m's sender the news of some of its
// recipients. news may mix kinds (RFC 3464 allows one report to carry
// failed and delayed recipients together); the queue's rule that one
// notice reports one kind is the caller's (see Group). body is m's body,
// or nil when it cannot be read (the notice then returns no content); it
// must stay open until the notice's Body has been read to its end, since
// that Body streams the returned content from it: a large original is never
// held in memory. The returned part of body is read twice: once by Build,
// to choose its encoding (the whole message only when it is returned), and
// once as the notice is read.
//
// The notice is a new queue.Message (a fresh ID, the null sender, m.From as
// its one recipient, Source "dsn", due now) with EightBit and SMTPUTF8 set
// as its content needs.
func Build(o Options, m *queue.Message, body queue.Body, news []queue.News) (queue.Notice, error) {
	if m == nil {
		return queue.Notice{}, errors.New("dsn: no message")
	}
	if m.From == "" {
		return queue.Notice{}, ErrNullSender
	}
	if len(m.From) > maxPath || strings.ContainsFunc(m.From, func(r rune) bool { return isControl(r) || r == '<' || r == '>' }) {
		return queue.Notice{}, fmt.Errorf("dsn: the sender address of message %s cannot be written in a header field", m.ID)
	}
	host := o.ReportingMTA
	if host == "" || strings.ContainsFunc(host, func(r rune) bool { return r <= ' ' || r >= 0x7f || r == '<' || r == '>' || r == '@' }) {
		return queue.Notice{}, fmt.Errorf("dsn: the reporting MTA name %q is not a host name", host)
	}
	now := o.now()
	global := m.SMTPUTF8
	data, err := describe(o, m, news, now)
	if err != nil {
		return queue.Notice{}, err
	}

	// The boundary must occur in no part (RFC 2046, section 5.1.1): a
	// random one never does, but the returned message is checked anyway.
	var (
		boundary, subject, text string
		orig                    *original
	)
	for try := 0; ; try++ {
		if try == 5 {
			return queue.Notice{}, fmt.Errorf("dsn: every MIME boundary tried occurs in the notice about message %s", m.ID)
		}
		boundary = o.boundary()
		if !validBoundary(boundary) {
			return queue.Notice{}, fmt.Errorf("dsn: %q is not a valid MIME boundary", boundary)
		}
		delim := "--" + boundary
		orig, err = inspect(m, body, data.Failed != nil, delim)
		if err != nil {
			return queue.Notice{}, err
		}
		data.Subject, data.MessageID, data.Returned = orig.subject, orig.messageID, orig.returned()
		subject, text = o.render(data)
		if !orig.clash && !strings.Contains(text, delim) && !strings.Contains(subject, delim) {
			break
		}
	}

	id := newID(now)
	var head bytes.Buffer
	p := &printer{w: &head}
	p.field("From", "Mail Delivery System <MAILER-DAEMON@"+host+">")
	p.field("To", "<"+m.From+">")
	p.field("Subject", encodeSubject(subject))
	p.field("Date", formatDate(now, now))
	p.field("Message-ID", "<"+id+"@"+host+">")
	if orig.messageID != "" {
		p.field("References", orig.messageID)
	}
	p.field("Auto-Submitted", "auto-replied")
	p.field("MIME-Version", "1.0")
	reportType := "delivery-status"
	if global {
		reportType = "global-delivery-status"
	}
	p.field("Content-Type", "multipart/report; report-type="+reportType+"; boundary=\""+boundary+"\"")
	p.line("")
	p.line("This is a MIME-encapsulated message: a delivery status notification.")

	// Part 1: the human-readable text.
	p.line("")
	p.line("--" + boundary)
	p.field("Content-Description", "Notification")
	p.field("Content-Type", "text/plain; charset=utf-8")
	textBody, textCTE := encodeText(text)
	p.field("Content-Transfer-Encoding", textCTE)
	p.line("")
	head.WriteString(textBody)

	// Part 2: the delivery status.
	p.line("")
	p.line("--" + boundary)
	p.field("Content-Description", "Delivery report")
	statusType := "message/delivery-status"
	if global {
		statusType = "message/global-delivery-status"
	}
	status := deliveryStatus(data, global, now)
	eightBit := !isASCII(status)
	p.field("Content-Type", statusType)
	if eightBit {
		p.field("Content-Transfer-Encoding", "8bit")
	}
	p.line("")
	head.WriteString(status)

	// Part 3: the returned content.
	var content io.Reader
	if orig.part != nil {
		part := orig.part
		p.line("")
		p.line("--" + boundary)
		p.field("Content-Description", part.description)
		p.field("Content-Type", part.contentType)
		if part.cte != "7bit" {
			p.field("Content-Transfer-Encoding", part.cte)
		}
		p.line("")
		eightBit = eightBit || part.cte == "8bit"
		content = newContentReader(io.NewSectionReader(body, 0, part.size), part.cte == "quoted-printable")
	}
	tail := "\r\n--" + boundary + "--\r\n"

	notice := &queue.Message{
		ID:          id,
		From:        "",
		Recipients:  []queue.Recipient{{Addr: m.From, State: queue.Pending, NextAttempt: now}},
		Arrived:     now,
		NextAttempt: now,
		Source:      "dsn",
		// The envelope and the notice's own header need SMTPUTF8 only for
		// a non-ASCII sender (its To field); UTF-8 in the parts needs
		// 8BITMIME alone (RFC 6532, section 3.7; RFC 6533, section 6).
		EightBit: eightBit || !isASCII(m.From),
		SMTPUTF8: !isASCII(m.From),
	}
	readers := []io.Reader{bytes.NewReader(head.Bytes())}
	if content != nil {
		readers = append(readers, content)
	}
	readers = append(readers, strings.NewReader(tail))
	return queue.Notice{Message: notice, Body: io.MultiReader(readers...)}, nil
}

// Describe returns what a notice about m would say of its recipients with
// news, without reading the message: the per-message and per-recipient
// fields of the delivery status (for an event in place of a notice). It
// fails as Build does, ErrNullSender included.
func Describe(o Options, m *queue.Message, news []queue.News) (*Data, error) {
	if m == nil {
		return nil, errors.New("dsn: no message")
	}
	if m.From == "" {
		return nil, ErrNullSender
	}
	return describe(o, m, news, o.now())
}

// Group splits news by kind, one group per notice as the queue sends them:
// failed, delayed, delivered, relayed, expanded, in that order, each in the
// order given.
func Group(news []queue.News) [][]queue.News {
	var groups [][]queue.News
	for _, kind := range kinds {
		var g []queue.News
		for _, n := range news {
			if n.Kind == kind {
				g = append(g, n)
			}
		}
		if g != nil {
			groups = append(groups, g)
		}
	}
	var other []queue.News
	for _, n := range news {
		if !knownKind(n.Kind) {
			other = append(other, n)
		}
	}
	if other != nil {
		groups = append(groups, other) // Build reports the unknown kind
	}
	return groups
}

// newID makes queue IDs; tests fix it.
var newID = queue.NewID

// kinds are the kinds of news, most severe first; they are RFC 3464's
// action values (section 2.3.3).
var kinds = []string{"failed", "delayed", "delivered", "relayed", "expanded"}

func knownKind(k string) bool {
	for _, kind := range kinds {
		if k == kind {
			return true
		}
	}
	return false
}

func (o *Options) now() time.Time {
	if o.Now != nil {
		return o.Now()
	}
	return time.Now()
}

func (o *Options) boundary() string {
	if o.Boundary != nil {
		return o.Boundary()
	}
	// "=_" cannot occur in quoted-printable content (RFC 2045, section
	// 6.7 encodes "="), and the random part cannot be guessed by whoever
	// writes the returned message.
	var b [15]byte
	_, _ = rand.Read(b[:])
	return "=_dsn_" + hex.EncodeToString(b[:])
}

// validBoundary reports whether b is a boundary RFC 2046 (section 5.1.1)
// allows: 1 to 70 bchars, not ending in a space.
func validBoundary(b string) bool {
	if b == "" || len(b) > 70 || b[len(b)-1] == ' ' {
		return false
	}
	for i := 0; i < len(b); i++ {
		c := b[i]
		switch {
		case c >= '0' && c <= '9', c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z':
		case strings.IndexByte("'()+_,-./:=? ", c) >= 0:
		default:
			return false
		}
	}
	return true
}
