// Package adminapi is the admin API module `admin.api.smtp`: the smtp
// app's queue on Caddy's admin endpoint, as `admin.api.reverse_proxy` puts
// the reverse proxy's upstreams there. It takes messages into the queue
// (POST /smtp/queue, which `caddy sendmail` uses), and lists, shows and
// acts on queued messages. It reaches the running smtp app through Caddy's
// active config, so it follows reloads, and it is subject to the admin
// endpoint's own access rules (its listener, origin checks and remote
// admin identities).
package adminapi

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/mail"
	"strings"

	"github.com/caddyserver/caddy/v2"

	"github.com/seed7b014b84/caddy-smtp/delivery"
	"github.com/seed7b014b84/caddy-smtp/queue"
	"github.com/seed7b014b84/caddy-smtp/queueapi"
	"github.com/seed7b014b84/caddy-smtp/transport"
)

func init() {
	caddy.RegisterModule(API{})
}

// API is the admin API module.
type API struct{}

// CaddyModule returns the Caddy module information.
func (API) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "admin.api.smtp",
		New: func() caddy.Module { return new(API) },
	}
}

// App is what the API needs of the smtp app.
type App interface {
	delivery.Queuer
	// QueueRunning returns the running queue, nil before the app started.
	QueueRunning() *queue.Queue
	// MaxMessageSize is the largest message the queue takes from modules
	// and the admin API.
	MaxMessageSize() int64
}

// Routes returns the API's routes, all under /smtp/.
func (a API) Routes() []caddy.AdminRoute {
	return []caddy.AdminRoute{
		{Pattern: "/smtp/queue", Handler: caddy.AdminHandlerFunc(a.handleQueue)},
		{Pattern: "/smtp/queue/", Handler: caddy.AdminHandlerFunc(a.handleQueue)},
	}
}

// app returns the running config's smtp app.
func app() (App, error) {
	ctx := caddy.ActiveContext()
	if ctx.Context == nil {
		return nil, apiError(http.StatusServiceUnavailable, errors.New("no config is running"))
	}
	raw, err := ctx.AppIfConfigured("smtp")
	if err != nil {
		return nil, apiError(http.StatusNotFound, errors.New("the running config has no smtp app"))
	}
	a, ok := raw.(App)
	if !ok {
		return nil, apiError(http.StatusInternalServerError, fmt.Errorf("the smtp app (%T) has no queue", raw))
	}
	return a, nil
}

func apiError(status int, err error) error {
	return caddy.APIError{HTTPStatus: status, Err: err, Message: err.Error()}
}

// handleQueue serves /smtp/queue and what is under it.
func (a API) handleQueue(w http.ResponseWriter, r *http.Request) error {
	smtp, err := app()
	if err != nil {
		return err
	}
	rest := strings.Trim(strings.TrimPrefix(r.URL.Path, "/smtp/queue"), "/")
	if rest == "" && r.Method == http.MethodPost {
		return submit(w, r, smtp)
	}
	return manage(w, r, smtp, rest)
}

// submit takes a message into the queue: POST /smtp/queue with the raw
// message (RFC 5322) as the body and the envelope in the query
// (?from=a@b&to=c@d&to=...), as `caddy sendmail` sends it. It answers 202
// with {"id": "..."} once the message is on stable storage.
func submit(w http.ResponseWriter, r *http.Request, smtp App) error {
	ct, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if ct == "application/json" || ct == "application/x-www-form-urlencoded" || ct == "multipart/form-data" {
		return apiError(http.StatusUnsupportedMediaType, fmt.Errorf("the body is the message itself (Content-Type: message/rfc822), not %s", ct))
	}
	q := r.URL.Query()
	from := q.Get("from")
	if from != "" {
		a, err := addr("from", from)
		if err != nil {
			return err
		}
		from = a
	}
	to := q["to"]
	if len(to) == 0 {
		return apiError(http.StatusBadRequest, errors.New("to: at least one recipient"))
	}
	msg := &delivery.Message{From: from, Source: "sendmail", EightBit: false}
	if s := q.Get("source"); s != "" {
		msg.Source = s
	}
	var notify []string
	if n := q.Get("notify"); n != "" {
		for _, v := range strings.Split(strings.ToUpper(n), ",") {
			switch v = strings.TrimSpace(v); v {
			case "NEVER", "SUCCESS", "FAILURE", "DELAY":
				notify = append(notify, v)
			default:
				return apiError(http.StatusBadRequest, fmt.Errorf("notify: %q is not NEVER, SUCCESS, FAILURE or DELAY", v))
			}
		}
	}
	switch ret := strings.ToUpper(q.Get("ret")); ret {
	case "", "FULL", "HDRS":
		msg.Ret = ret
	default:
		return apiError(http.StatusBadRequest, fmt.Errorf("ret: %q is not FULL or HDRS", q.Get("ret")))
	}
	if envid := q.Get("envid"); envid != "" {
		if len(envid) > 100 || strings.ContainsFunc(envid, func(r rune) bool { return r < '!' || r > '~' }) {
			return apiError(http.StatusBadRequest, errors.New("envid: at most 100 printable ASCII characters"))
		}
		msg.EnvID = envid
	}
	for i, t := range to {
		a, err := addr(fmt.Sprintf("to[%d]", i), t)
		if err != nil {
			return err
		}
		msg.To = append(msg.To, transport.Recipient{Addr: a, Notify: notify})
	}
	limit := smtp.MaxMessageSize()
	body := &limitedBody{r: r.Body, left: limit}
	msg.Reader = body
	id, err := smtp.Enqueue(r.Context(), msg)
	switch {
	case body.over:
		return apiError(http.StatusRequestEntityTooLarge, fmt.Errorf("the message is over %d bytes (queue.max_message_size)", limit))
	case errors.Is(err, delivery.ErrQueueFull):
		return apiError(http.StatusInsufficientStorage, err)
	case errors.Is(err, delivery.ErrQueueUnavailable):
		return apiError(http.StatusServiceUnavailable, err)
	case err != nil:
		return apiError(http.StatusBadRequest, err)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusAccepted)
	return json.NewEncoder(w).Encode(map[string]string{"id": id})
}

// addr checks an envelope address: a@b, without anything that could end
// a command line.
func addr(field, s string) (string, error) {
	if strings.ContainsAny(s, "\r\n\x00") {
		return "", apiError(http.StatusBadRequest, fmt.Errorf("%s: a line break or NUL in an address", field))
	}
	a, err := mail.ParseAddress(s)
	if err != nil {
		return "", apiError(http.StatusBadRequest, fmt.Errorf("%s: %q is not an address: %v", field, s, err))
	}
	return a.Address, nil
}

// limitedBody fails a body over its limit.
type limitedBody struct {
	r    io.Reader
	left int64
	over bool
}

func (l *limitedBody) Read(p []byte) (int, error) {
	if l.left <= 0 {
		var one [1]byte
		if n, _ := l.r.Read(one[:]); n > 0 {
			l.over = true
			return 0, errors.New("message too large")
		}
		return 0, io.EOF
	}
	if int64(len(p)) > l.left {
		p = p[:l.left]
	}
	n, err := l.r.Read(p)
	l.left -= int64(n)
	return n, err
}

// manage serves the queue's listing and actions (package queueapi).
func manage(w http.ResponseWriter, r *http.Request, smtp App, rest string) error {
	q := smtp.QueueRunning()
	if q == nil {
		return apiError(http.StatusServiceUnavailable, errors.New("the queue is not running"))
	}
	err := queueapi.Serve(w, r, q, rest)
	var e *queueapi.Error
	if errors.As(err, &e) {
		return apiError(e.Status, e)
	}
	return err
}

// Interface guards
var (
	_ caddy.AdminRouter = API{}
	_ caddy.Module      = API{}
)
