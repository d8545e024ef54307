// Package httpsend is the HTTP handler `http.handlers.smtp_send`: it takes
// a message in an HTTP POST and hands it to the smtp app's Deliver,
// answering with the delivery report as JSON. It is a package of its own
// because it is an HTTP module, with its own request format, apart from the
// delivery engine.
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
// The answer is the delivery report as JSON, with status 200 when every
// recipient was delivered, 207 when some were and some were not, 503 (with
// Retry-After) when none was and some may be later, and 422 when every
// recipient failed for good. A malformed request gets 400 with the field at
// fault, a message over max_size 413.
type Handler struct {
	// MaxSize is the largest message accepted, in bytes. Default: 25 MiB.
	MaxSize int64 `json:"max_size,omitempty"`

	app    delivery.Sender
	logger *zap.Logger
}

// DefaultMaxSize is the largest message accepted by default.
const DefaultMaxSize = 25 << 20

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
	app, err := ctx.App("smtp")
	if err != nil {
		return fmt.Errorf("getting the smtp app: %w", err)
	}
	sender, ok := app.(delivery.Sender)
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
	msg, err := h.message(r)
	if err != nil {
		var re *requestError
		if errors.As(err, &re) {
			return writeJSON(w, re.status, map[string]string{"error": re.msg})
		}
		return caddyhttp.Error(http.StatusInternalServerError, err)
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

// message reads the request into a message.
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
		return f.message(h.app.DefaultHostname())
	}
	from, to := r.URL.Query().Get("from"), r.URL.Query()["to"]
	if v := r.Header.Get("SMTP-From"); v != "" && from == "" {
		from = v
	}
	if v := r.Header.Get("SMTP-To"); v != "" && len(to) == 0 {
		for _, a := range strings.Split(v, ",") {
			to = append(to, strings.TrimSpace(a))
		}
	}
	msg, err := envelope(from, to)
	if err != nil {
		return nil, err
	}
	if len(bytes.TrimSpace(body)) == 0 {
		return nil, badRequest("body: empty message")
	}
	msg.Body, msg.Size = bytes.NewReader(body), int64(len(body))
	msg.EightBit = !isASCII(body)
	return msg, nil
}

// envelope checks the sender and recipients.
func envelope(from string, to []string) (*delivery.Message, error) {
	sender, err := addrSpec("from", from, true)
	if err != nil {
		return nil, err
	}
	if len(to) == 0 {
		return nil, badRequest("to: at least one recipient")
	}
	msg := &delivery.Message{From: sender}
	for i, t := range to {
		a, err := addrSpec(fmt.Sprintf("to[%d]", i), t, false)
		if err != nil {
			return nil, err
		}
		msg.To = append(msg.To, transport.Recipient{Addr: a})
	}
	return msg, nil
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
