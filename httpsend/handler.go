// Package httpsend is the HTTP handler `http.handlers.smtp_send`: it takes
// a message in an HTTP POST and puts it in the smtp app's queue, answering
// with its queue ID (or, in deliver mode, makes one delivery attempt and
// answers with the report). It is a package of its own because it is an
// HTTP module, with its own request format, apart from the delivery
// engine.
//
// It authenticates nobody: put it behind Caddy's own authentication
// (basic_auth, forward_auth, a remote_ip matcher).
package httpsend

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/mail"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/seed7b014b84/caddy-smtp/delivery"
	"github.com/seed7b014b84/caddy-smtp/transport"
)

func init() {
	caddy.RegisterModule(Handler{})
}

// Handler sends one message per POST request.
//
// The request is either a raw RFC 5322 message (any Content-Type but
// application/json), with the envelope in the query (`?from=a@b&to=c@d&to=e@f`)
// or in the headers `SMTP-From` and `SMTP-To` (comma-separated), or a small
// JSON form (Content-Type: application/json):
//
//	{"from": "app@example.org", "to": ["user@example.net"], "subject": "Hi",
//	 "text": "Hello", "headers": {"Reply-To": "help@example.org"}}
//
// A raw message's lines may be at most 998 octets long (RFC 5322), not
// counting the line end (LF or CRLF). No field of the form, and no address
// of the envelope, may hold CR, LF or NUL, but text, whose lines end with
// LF or CRLF. The form's message is 7-bit: header fields folded, words that
// are not ASCII encoded (RFC 2047), and the text quoted-printable when it
// is not ASCII or has a line over 998 octets.
//
// In queue mode (the default) the message streams into the smtp app's
// queue, and the answer, once it is on stable storage, is 202 with
// {"id": "<queue ID>"}: the queue delivers it, retries it and reports on it
// (delivery status notifications to the sender). A queue that is full
// answers 507, one that cannot be reached 503 with Retry-After; a recipient
// whose domain does not exist or takes no mail makes the request 422,
// naming it, and nothing is queued.
//
// In deliver mode the message is delivered at once, one attempt, and the
// answer is the delivery report as JSON, with status 200 when every
// recipient was delivered, 207 when some were and some were not, 503 (with
// Retry-After) when none was and some may be later, and 422 when every
// recipient failed for good; nothing is kept, so the caller must retry
// what was deferred.
//
// In both, a malformed request gets 400 with the field at fault, a message
// over max_size 413, a request past max_concurrent 503 with Retry-After.
type Handler struct {
	// Mode is "queue" (take the message into the queue, answer 202 with its
	// ID) or "deliver" (one delivery attempt now, answer with the report).
	// Default: "queue".
	Mode string `json:"mode,omitempty"`

	// MaxSize is the largest message accepted, in bytes. Default: 25 MiB.
	MaxSize int64 `json:"max_size,omitempty"`

	// MaxRecipients is the most recipients one request may name; a request
	// with more gets 400. Default: 100 (Postfix's smtpd_recipient_limit is
	// 1000 per message; a web application sending more at once is better
	// served by several requests, each with its own report).
	MaxRecipients int `json:"max_recipients,omitempty"`

	// MaxConcurrent is the most requests this handler works on at once,
	// from reading the message to its answer; a request past it gets 503
	// with Retry-After at once, without its body being read. In deliver
	// mode each request holds its message (up to max_size) in memory while
	// it is delivered; in queue mode it streams. Default: 64.
	MaxConcurrent int `json:"max_concurrent,omitempty"`

	app    smtpApp
	logger *zap.Logger
	// slots has room for MaxConcurrent requests.
	slots chan struct{}
}

// smtpApp is what the handler needs of the smtp app.
type smtpApp interface {
	delivery.Sender
	delivery.Queuer
}

// The modes.
const (
	ModeQueue   = "queue"
	ModeDeliver = "deliver"
)

// Defaults of the handler's limits.
const (
	DefaultMaxSize       = 25 << 20
	DefaultMaxRecipients = 100
	DefaultMaxConcurrent = 64
)

// busyRetryAfter is the Retry-After, in seconds, of a request refused for
// max_concurrent.
const busyRetryAfter = "5"

// CaddyModule returns the Caddy module information.
func (Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.smtp_send",
		New: func() caddy.Module { return new(Handler) },
	}
}

// Provision finds the smtp app and sets defaults.
func (h *Handler) Provision(ctx caddy.Context) error {
	h.logger = ctx.Logger()
	if h.MaxSize == 0 {
		h.MaxSize = DefaultMaxSize
	}
	if h.MaxSize < 0 {
		return fmt.Errorf("max_size: %d is negative", h.MaxSize)
	}
	if h.MaxRecipients == 0 {
		h.MaxRecipients = DefaultMaxRecipients
	}
	if h.MaxRecipients < 0 {
		return fmt.Errorf("max_recipients: %d is negative", h.MaxRecipients)
	}
	if h.MaxConcurrent == 0 {
		h.MaxConcurrent = DefaultMaxConcurrent
	}
	if h.MaxConcurrent < 0 {
		return fmt.Errorf("max_concurrent: %d is negative", h.MaxConcurrent)
	}
	switch h.Mode {
	case "":
		h.Mode = ModeQueue
	case ModeQueue, ModeDeliver:
	default:
		return fmt.Errorf("mode: %q is not queue or deliver", h.Mode)
	}
	h.slots = make(chan struct{}, h.MaxConcurrent)
	app, err := ctx.App("smtp")
	if err != nil {
		return fmt.Errorf("getting the smtp app: %w", err)
	}
	sender, ok := app.(smtpApp)
	if !ok {
		return fmt.Errorf("the smtp app (%T) cannot deliver messages", app)
	}
	h.app = sender
	return nil
}

// requestError is a fault of the request, answered with its status.
type requestError struct {
	status int
	msg    string
}

func (e *requestError) Error() string { return e.msg }

func badRequest(format string, args ...any) error {
	return &requestError{status: http.StatusBadRequest, msg: fmt.Sprintf(format, args...)}
}

// ServeHTTP sends the message and answers with the report.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, _ caddyhttp.Handler) error {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		return writeJSON(w, http.StatusMethodNotAllowed, map[string]string{"error": "use POST"})
	}
	select {
	case h.slots <- struct{}{}:
		defer func() { <-h.slots }()
	default:
		h.logger.Debug("request refused: max_concurrent reached",
			zap.String("remote", r.RemoteAddr), zap.Int("max_concurrent", h.MaxConcurrent))
		w.Header().Set("Retry-After", busyRetryAfter)
		return writeJSON(w, http.StatusServiceUnavailable, map[string]string{
			"error": fmt.Sprintf("busy: %d requests are being handled (max_concurrent); try again later", h.MaxConcurrent)})
	}
	if h.Mode == ModeQueue {
		return h.enqueue(w, r)
	}
	msg, err := h.message(r)
	if err != nil {
		return h.requestFailed(w, err)
	}
	report, err := h.app.Deliver(r.Context(), msg)
	if err != nil {
		return writeJSON(w, http.StatusBadRequest, map[string]string{"error": err.Error()})
	}
	delivered, deferred, failed := report.Counts()
	status := http.StatusOK
	switch {
	case delivered > 0 && (deferred > 0 || failed > 0):
		status = http.StatusMultiStatus
	case delivered == 0 && deferred > 0:
		w.Header().Set("Retry-After", "300")
		status = http.StatusServiceUnavailable
	case delivered == 0:
		status = http.StatusUnprocessableEntity
	}
	return writeJSON(w, status, report)
}

// requestFailed answers a request that went wrong: with its status when
// it is the request's fault, else 500.
func (h *Handler) requestFailed(w http.ResponseWriter, err error) error {
	var re *requestError
	if errors.As(err, &re) {
		return writeJSON(w, re.status, map[string]string{"error": re.msg})
	}
	return caddyhttp.Error(http.StatusInternalServerError, err)
}

// enqueue streams the request's message into the queue and answers 202
// with its ID once it is on stable storage.
func (h *Handler) enqueue(w http.ResponseWriter, r *http.Request) error {
	var msg *delivery.Message
	var lines *lineChecker
	body := &sizeLimit{r: r.Body, left: h.MaxSize}
	ct, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if ct == "application/json" {
		f, err := readForm(body, h.MaxSize)
		if err != nil {
			return h.requestFailed(w, h.readFailure(err, body, nil))
		}
		defer f.Close()
		text, encoding, err := f.body()
		if err != nil {
			return h.requestFailed(w, err)
		}
		m, header, err := f.header(h.app.DefaultHostname(), h.MaxRecipients, encoding)
		if err != nil {
			return h.requestFailed(w, err)
		}
		if int64(len(header))+f.textLen > h.MaxSize {
			return h.requestFailed(w, tooLarge(h.MaxSize))
		}
		msg = m
		msg.Reader = io.MultiReader(bytes.NewReader(header), text)
	} else {
		from, to := envelopeOf(r)
		sender, rcpts, err := addresses(from, to, h.MaxRecipients)
		if err != nil {
			return h.requestFailed(w, err)
		}
		msg = envelope(sender, rcpts)
		q := r.URL.Query()
		var notify []string
		if n := q.Get("notify"); n != "" {
			notify = strings.Split(n, ",")
		}
		if err := dsnParams(msg, notify, q.Get("ret"), q.Get("envid")); err != nil {
			return h.requestFailed(w, err)
		}
		lines = &lineChecker{r: body, line: 1}
		msg.Reader = lines
	}
	msg.Source = "http"
	if refused := h.refusedRecipients(r, msg); refused != nil {
		return writeJSON(w, http.StatusUnprocessableEntity, refused)
	}
	id, err := h.app.Enqueue(r.Context(), msg)
	switch {
	case err == nil:
		return writeJSON(w, http.StatusAccepted, map[string]string{"id": id})
	case errors.Is(err, delivery.ErrQueueFull):
		h.logger.Warn("queue full: message refused for now", zap.Error(err))
		w.Header().Set("Retry-After", "60")
		return writeJSON(w, http.StatusInsufficientStorage, map[string]string{"error": err.Error()})
	case errors.Is(err, delivery.ErrQueueUnavailable):
		h.logger.Error("queue unavailable: message refused for now", zap.Error(err))
		w.Header().Set("Retry-After", "60")
		return writeJSON(w, http.StatusServiceUnavailable, map[string]string{"error": err.Error()})
	}
	return h.requestFailed(w, h.readFailure(err, body, lines))
}

// refusedRecipients checks the recipients the app can tell will never be
// delivered to (a domain that does not exist, or takes no mail), and
// returns what to answer, or nil when none is.
func (h *Handler) refusedRecipients(r *http.Request, msg *delivery.Message) map[string]any {
	checker, ok := h.app.(delivery.RecipientChecker)
	if !ok {
		return nil
	}
	var refused []map[string]any
	for _, rc := range msg.To {
		if rep := checker.CheckRecipient(r.Context(), msg.From, rc.Addr); rep != nil {
			refused = append(refused, map[string]any{"rcpt": rc.Addr, "reply": rep})
		}
	}
	if refused == nil {
		return nil
	}
	return map[string]any{"error": "some recipients can never be delivered to; nothing was queued", "recipients": refused}
}

// readFailure names what went wrong reading the body into the queue: a
// message over max_size (413), a line too long (400 naming it), an empty
// message, a body that could not be read, or another fault (400).
func (h *Handler) readFailure(err error, body *sizeLimit, lines *lineChecker) error {
	var re *requestError
	var tl *lineTooLong
	var rd *readError
	switch {
	case body.over || errors.Is(err, errTooLarge):
		return tooLarge(h.MaxSize)
	case errors.As(err, &tl):
		return badRequest("body: line %d is %d octets long or more, over the limit of %d (RFC 5322)", tl.line, tl.n, MaxLineLength)
	case errors.Is(err, errEmpty):
		return badRequest("body: empty message")
	case errors.As(err, &re):
		return re
	case errors.As(err, &rd):
		return badRequest("%v", rd)
	case lines != nil && lines.readErr != nil:
		return badRequest("reading the request: %v", lines.readErr)
	}
	return badRequest("%v", err)
}

func tooLarge(max int64) error {
	return &requestError{status: http.StatusRequestEntityTooLarge, msg: fmt.Sprintf("message over max_size (%d bytes)", max)}
}

// envelopeOf reads the envelope of a raw message: from the query, else the
// SMTP-From and SMTP-To headers.
func envelopeOf(r *http.Request) (from string, to []string) {
	from, to = r.URL.Query().Get("from"), r.URL.Query()["to"]
	if v := r.Header.Get("SMTP-From"); v != "" && from == "" {
		from = v
	}
	if v := r.Header.Get("SMTP-To"); v != "" && len(to) == 0 {
		for _, a := range strings.Split(v, ",") {
			to = append(to, strings.TrimSpace(a))
		}
	}
	return from, to
}

// sizeLimit fails a body over its limit.
type sizeLimit struct {
	r    io.Reader
	left int64
	over bool
}

func (s *sizeLimit) Read(p []byte) (int, error) {
	if s.left <= 0 {
		var one [1]byte
		if n, _ := s.r.Read(one[:]); n > 0 {
			s.over = true
			return 0, errTooLarge
		}
		return 0, io.EOF
	}
	if int64(len(p)) > s.left {
		p = p[:s.left]
	}
	n, err := s.r.Read(p)
	s.left -= int64(n)
	if err != nil && err != io.EOF {
		err = &readError{err: err}
	}
	return n, err
}

// lineChecker passes a raw message on, failing at its first line longer
// than MaxLineLength (not counting LF or CRLF), and at its end when it was
// empty (white space only).
type lineChecker struct {
	r       io.Reader
	line    int
	lineLen int
	cr      bool
	n       int64
	content bool
	readErr error
}

// lineTooLong names the first line too long.
type lineTooLong struct{ line, n int }

func (e *lineTooLong) Error() string { return fmt.Sprintf("line %d is too long", e.line) }

var errEmpty = errors.New("empty message")

func (l *lineChecker) Read(p []byte) (int, error) {
	n, err := l.r.Read(p)
	for _, c := range p[:n] {
		l.n++
		if c != ' ' && c != '\t' && c != '\r' && c != '\n' {
			l.content = true
		}
		if c == '\n' {
			l.line, l.lineLen, l.cr = l.line+1, 0, false
			continue
		}
		if l.cr {
			l.lineLen++ // a CR not before LF is an octet of its line
		}
		l.cr = c == '\r'
		if !l.cr {
			l.lineLen++
		}
		if l.lineLen > MaxLineLength {
			return 0, &lineTooLong{line: l.line, n: l.lineLen}
		}
	}
	if err == io.EOF && !l.content {
		return n, errEmpty
	}
	if err != nil && err != io.EOF {
		l.readErr = err
	}
	return n, err
}

// message reads the request into a message (deliver mode).
func (h *Handler) message(r *http.Request) (*delivery.Message, error) {
	body, err := io.ReadAll(io.LimitReader(r.Body, h.MaxSize+1))
	if err != nil {
		return nil, badRequest("reading the request: %v", err)
	}
	if int64(len(body)) > h.MaxSize {
		return nil, &requestError{status: http.StatusRequestEntityTooLarge, msg: fmt.Sprintf("message over max_size (%d bytes)", h.MaxSize)}
	}
	ct, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if ct == "application/json" {
		var f form
		dec := json.NewDecoder(bytes.NewReader(body))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&f); err != nil {
			return nil, badRequest("json form: %v", strings.TrimPrefix(err.Error(), "json: "))
		}
		return f.message(h.app.DefaultHostname(), h.MaxRecipients)
	}
	from, to := envelopeOf(r)
	sender, rcpts, err := addresses(from, to, h.MaxRecipients)
	if err != nil {
		return nil, err
	}
	msg := envelope(sender, rcpts)
	if len(bytes.TrimSpace(body)) == 0 {
		return nil, badRequest("body: empty message")
	}
	if err := checkLines(body); err != nil {
		return nil, err
	}
	msg.Body, msg.Size = bytes.NewReader(body), int64(len(body))
	msg.EightBit = !isASCII(body)
	return msg, nil
}

// addresses reads the sender (nil for the null sender of a bounce) and the
// recipients, at most maxRcpt of them.
func addresses(from string, to []string, maxRcpt int) (*mail.Address, []*mail.Address, error) {
	sender, err := address("from", from, true)
	if err != nil {
		return nil, nil, err
	}
	switch {
	case len(to) == 0:
		return nil, nil, badRequest("to: at least one recipient")
	case len(to) > maxRcpt:
		return nil, nil, badRequest("to: %d recipients, over max_recipients (%d)", len(to), maxRcpt)
	}
	rcpts := make([]*mail.Address, len(to))
	for i, t := range to {
		if rcpts[i], err = address(fmt.Sprintf("to[%d]", i), t, false); err != nil {
			return nil, nil, err
		}
	}
	return sender, rcpts, nil
}

// envelope returns a message with the envelope of these addresses.
func envelope(from *mail.Address, to []*mail.Address) *delivery.Message {
	msg := &delivery.Message{To: make([]transport.Recipient, len(to))}
	if from != nil {
		msg.From = from.Address
	}
	for i, a := range to {
		msg.To[i] = transport.Recipient{Addr: a.Address}
	}
	return msg
}

// address reads an address ("a@b" or "Name <a@b>"). The sender may be
// empty (a bounce): then it is nil.
func address(field, s string, emptyOK bool) (*mail.Address, error) {
	if err := noControls(field, s); err != nil {
		return nil, err
	}
	s = strings.TrimSpace(s)
	if s == "" {
		if emptyOK {
			return nil, nil
		}
		return nil, badRequest("%s: empty address", field)
	}
	a, err := mail.ParseAddress(s)
	if err != nil {
		return nil, badRequest("%s: %q is not an address: %v", field, s, err)
	}
	if len(a.Address) > maxAddressLength {
		return nil, badRequest("%s: an address of %d octets, over the limit of %d (RFC 5321)", field, len(a.Address), maxAddressLength)
	}
	return a, nil
}

// maxAddressLength is the longest address SMTP carries: a path is at most
// 256 octets with its angle brackets (RFC 5321, section 4.5.3.1.3).
const maxAddressLength = 254

// noControls refuses CR, LF and NUL in a field that goes into a header or
// the envelope: a line break there would end the header (or the SMTP
// command) and start another of the sender's choosing.
func noControls(field, s string) error {
	if i := strings.IndexAny(s, "\r\n\x00"); i >= 0 {
		return badRequest("%s: %s at byte %d: CR, LF and NUL are not allowed", field, charName(s[i]), i)
	}
	return nil
}

func charName(c byte) string {
	switch c {
	case '\r':
		return "CR"
	case '\n':
		return "LF"
	case 0:
		return "NUL"
	}
	return fmt.Sprintf("%q", c)
}

// MaxLineLength is the longest line a message may have, in octets without
// its line end (RFC 5322, section 2.1.1).
const MaxLineLength = 998

// checkLines refuses a message with a line over MaxLineLength, naming the
// first such line. A line ends with LF or CRLF.
func checkLines(body []byte) error {
	for n := 1; len(body) > 0; n++ {
		line := body
		if i := bytes.IndexByte(body, '\n'); i >= 0 {
			line, body = body[:i], body[i+1:]
		} else {
			body = nil
		}
		line = bytes.TrimSuffix(line, []byte("\r"))
		if len(line) > MaxLineLength {
			return badRequest("body: line %d is %d octets long, over the limit of %d (RFC 5322)", n, len(line), MaxLineLength)
		}
	}
	return nil
}

func writeJSON(w http.ResponseWriter, status int, v any) error {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	return json.NewEncoder(w).Encode(v)
}

func isASCII(b []byte) bool {
	for _, c := range b {
		if c >= 0x80 {
			return false
		}
	}
	return true
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
)
