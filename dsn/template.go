package dsn

import (
	"bytes"
	_ "embed"
	"errors"
	"fmt"
	"strings"
	"text/template"
	"time"

	"go.uber.org/zap"
)

// Data is what the human-readable part's template is executed with
// (queue.dsn_template): the notice's facts, as the delivery-status part
// gives them. Times are in the notice's location (Options.Now's); a zero
// time means unknown.
type Data struct {
	// Kind is the action of every recipient reported ("failed",
	// "delayed", "delivered", "relayed" or "expanded"), or "mixed".
	Kind string `json:"kind"`
	// ReportingMTA is this app's host name.
	ReportingMTA string `json:"reporting_mta,omitempty"`
	// Sender is the envelope sender: the notice's recipient.
	Sender string `json:"sender,omitempty"`
	// QueueID is the original message's queue ID.
	QueueID string `json:"queue_id,omitempty"`
	// EnvID is the envelope ID the sender gave (DSN ENVID), or "".
	EnvID string `json:"envid,omitempty"`
	// Arrived is when the queue accepted the message.
	Arrived time.Time `json:"arrived,omitzero"`
	// Subject is the original's Subject, decoded (RFC 2047), and MessageID
	// its Message-ID; "" when it has none (or its body cannot be read).
	Subject   string `json:"subject,omitempty"`
	MessageID string `json:"message_id,omitempty"`
	// Returned is what the notice returns of the original: "message" (the
	// whole of it), "headers" (its header section) or "" (nothing: the
	// body could not be read).
	Returned string `json:"returned,omitempty"`
	// Now is when the notice is made.
	Now time.Time `json:"now,omitzero"`
	// Recipients are the recipients reported, in the order of the news;
	// Failed, Delayed, Delivered, Relayed and Expanded are the same,
	// split by action.
	Recipients                                    []Recipient `json:"recipients"`
	Failed, Delayed, Delivered, Relayed, Expanded []Recipient `json:"-"`
}

// add adds r to the notice's recipients, and to the list of its action.
func (d *Data) add(r Recipient) {
	d.Recipients = append(d.Recipients, r)
	switch r.Action {
	case "failed":
		d.Failed = append(d.Failed, r)
	case "delayed":
		d.Delayed = append(d.Delayed, r)
	case "delivered":
		d.Delivered = append(d.Delivered, r)
	case "relayed":
		d.Relayed = append(d.Relayed, r)
	case "expanded":
		d.Expanded = append(d.Expanded, r)
	}
}

// Recipient is one recipient reported.
type Recipient struct {
	// Address is the recipient's address (Final-Recipient), and
	// OriginalAddress the one the sender gave as ORCPT, or "".
	Address         string `json:"address"`
	OriginalAddress string `json:"original_address,omitempty"`
	// Action is failed, delayed, delivered, relayed or expanded.
	Action string `json:"action"`
	// Status is the RFC 3463 status code ("5.1.1").
	Status string `json:"status"`
	// Reply is the reply that decided the outcome, on one line ("550 5.1.1
	// no such user"), or "" when there was none. LocalReply is true when
	// this app made it up (no server answered: DNS failed, no host could
	// be reached, the message expired); RemoteMTA is the server that gave
	// it otherwise.
	Reply      string `json:"reply,omitempty"`
	LocalReply bool   `json:"local_reply,omitempty"`
	RemoteMTA  string `json:"remote_mta,omitempty"`
	// Detail is the error of the last failed attempt, in this app's words
	// (with the host), or "".
	Detail string `json:"detail,omitempty"`
	// Expired is true for a recipient that failed because the message
	// stayed in the queue too long.
	Expired bool `json:"expired,omitempty"`
	// Attempts is how many delivery attempts were made.
	Attempts int `json:"attempts,omitempty"`
	// LastAttempt is when the last attempt began.
	LastAttempt time.Time `json:"last_attempt,omitzero"`
	// WillRetryUntil is, for a delayed recipient, when the queue gives up.
	WillRetryUntil time.Time `json:"will_retry_until,omitzero"`
}

// DefaultTemplate is the text of the default human-readable part, in
// English. It defines "subject" too.
//
//go:embed default.tmpl
var DefaultTemplate string

// defaultTemplate is DefaultTemplate parsed.
var defaultTemplate = template.Must(ParseTemplate(DefaultTemplate))

// funcs are the functions a template may call besides the built-in ones:
// date formats a time as RFC 5322 does ("Mon, 02 Jan 2006 15:04:05
// -0700"); wrap wraps text at spaces to lines of at most n characters,
// each line after the first indented with the given prefix.
var funcs = template.FuncMap{
	"date": func(t time.Time) string { return t.Format("Mon, 02 Jan 2006 15:04:05 -0700") },
	"wrap": wrap,
}

// ParseTemplate parses a template for the human-readable part (the
// functions date and wrap are available; see Data) and tries it on a
// sample of each kind of notice, so that a template that names a field
// Data does not have fails when the config is loaded, not when a bounce is
// due.
func ParseTemplate(text string) (*template.Template, error) {
	t, err := template.New("dsn").Funcs(funcs).Option("missingkey=error").Parse(text)
	if err != nil {
		return nil, fmt.Errorf("dsn template: %w", err)
	}
	for _, d := range samples() {
		if _, _, err := execute(t, d); err != nil {
			return nil, fmt.Errorf("dsn template, for a %s notice: %w", d.Kind, err)
		}
	}
	return t, nil
}

// render returns the subject and the text of the human-readable part, from
// o.Template, or from the default when there is none or it fails.
func (o *Options) render(d *Data) (subject, text string) {
	if o.Template != nil {
		s, t, err := execute(o.Template, d)
		if err == nil {
			return s, t
		}
		if o.Logger != nil {
			o.Logger.Error("dsn template failed; the default text is sent instead", zap.String("id", d.QueueID), zap.Error(err))
		}
	}
	s, t, err := execute(defaultTemplate, d)
	if err != nil {
		// The default template is tried on every kind at start-up, so
		// this is not expected; the delivery status part still says all.
		return defaultSubject(d), "This is the mail system at " + d.ReportingMTA +
			". The delivery report below tells what became of your message.\n"
	}
	return s, t
}

// execute runs t (and its "subject", when defined) on d.
func execute(t *template.Template, d *Data) (subject, text string, err error) {
	var b bytes.Buffer
	if err := t.Execute(&b, d); err != nil {
		return "", "", err
	}
	text = b.String()
	if st := t.Lookup("subject"); st != nil {
		var s bytes.Buffer
		if err := st.Execute(&s, d); err != nil {
			return "", "", err
		}
		subject = strings.TrimSpace(s.String())
	}
	if subject == "" {
		subject = defaultSubject(d)
	}
	if strings.TrimSpace(text) == "" {
		return "", "", errors.New("the template makes no text")
	}
	return subject, text, nil
}

// defaultSubject is the subject of a template that defines none.
func defaultSubject(d *Data) string {
	switch {
	case d.Failed != nil:
		return "Undelivered Mail Returned to Sender"
	case d.Delayed != nil:
		return "Delayed Mail (still being retried)"
	}
	return "Successful Mail Delivery Report"
}

// wrap wraps s at spaces to lines of at most width characters (a longer
// word stays whole), the lines after the first starting with indent.
func wrap(width int, indent, s string) string {
	var b strings.Builder
	n := 0
	for _, w := range strings.Fields(s) {
		switch {
		case n == 0:
		case n+1+len(w) > width:
			b.WriteString("\n")
			b.WriteString(indent)
			n = len(indent)
		default:
			b.WriteString(" ")
			n++
		}
		b.WriteString(w)
		n += len(w)
	}
	return b.String()
}

// samples returns a notice of each kind, and a mixed one, to try a
// template on.
func samples() []*Data {
	t := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	failed := Recipient{Address: "a@example.net", OriginalAddress: "a@example.net", Action: "failed", Status: "5.1.1",
		Reply: "550 5.1.1 no such user", RemoteMTA: "mx.example.net", Attempts: 1, LastAttempt: t}
	expired := Recipient{Address: "b@example.net", Action: "failed", Status: "5.4.7", Reply: "550 5.4.7 delivery time expired",
		LocalReply: true, Expired: true, Detail: "connection refused", Attempts: 9, LastAttempt: t}
	delayed := Recipient{Address: "c@example.net", Action: "delayed", Status: "4.4.1", Reply: "451 4.4.1 no answer",
		LocalReply: true, Attempts: 3, LastAttempt: t, WillRetryUntil: t.Add(96 * time.Hour)}
	delivered := Recipient{Address: "d@example.net", Action: "delivered", Status: "2.0.0", Reply: "250 2.0.0 saved",
		RemoteMTA: "lmtp.example.net", Attempts: 1, LastAttempt: t}
	relayed := Recipient{Address: "e@example.net", Action: "relayed", Status: "2.0.0", Reply: "250 2.0.0 queued",
		RemoteMTA: "mx.example.net", Attempts: 1, LastAttempt: t}
	expanded := Recipient{Address: "f@example.net", Action: "expanded", Status: "2.0.0", Attempts: 1}
	base := func(kind string, rs ...Recipient) *Data {
		d := &Data{Kind: kind, ReportingMTA: "mail.example.org", Sender: "s@example.org", QueueID: "0000000000000000000a",
			EnvID: "env", Arrived: t, Subject: "Hello", MessageID: "<m@example.org>", Returned: "headers", Now: t}
		for _, r := range rs {
			d.add(r)
		}
		return d
	}
	return []*Data{
		base("failed", failed, expired),
		base("delayed", delayed),
		base("delivered", delivered),
		base("relayed", relayed),
		base("expanded", expanded),
		base("mixed", failed, delayed, delivered, relayed, expanded),
		{Kind: "failed", ReportingMTA: "mail.example.org", Sender: "s@example.org", Now: t, Recipients: []Recipient{{Address: "x", Action: "failed", Status: "5.0.0"}},
			Failed: []Recipient{{Address: "x", Action: "failed", Status: "5.0.0"}}},
	}
}
