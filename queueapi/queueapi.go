// Package queueapi is the queue's management API over HTTP: listing and
// showing queued messages with filters, actions on one message or on every
// message a filter selects, the summary by destination and age, hold rules,
// pause and resume. It is one piece of code behind two doors: the admin
// API module (admin.api.smtp, under /smtp/queue/) and the queue page's
// HTTP handler (http.handlers.smtp_queue, under its own path), so that
// both answer alike.
package queueapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/seed7b014b84/caddy-smtp/queue"
	"github.com/seed7b014b84/caddy-smtp/transport"
)

// Error is an answer other than success: its HTTP status and message.
type Error struct {
	Status int
	Msg    string
}

func (e *Error) Error() string { return e.Msg }

func errorf(status int, format string, args ...any) error {
	return &Error{Status: status, Msg: fmt.Sprintf(format, args...)}
}

// Serve answers a request on the queue q; rest is the path under the
// queue's root ("", "summary", "holds", "ID", "ID/body", "retry", ...).
// Errors are *Error.
func Serve(w http.ResponseWriter, r *http.Request, q *queue.Queue, rest string) error {
	ctx := r.Context()
	parts := strings.Split(strings.Trim(rest, "/"), "/")
	if parts[0] == "" {
		parts = nil
	}
	method := r.Method
	switch {
	case len(parts) == 0 && method == http.MethodGet:
		return list(ctx, w, r, q)
	case len(parts) == 1 && parts[0] == "summary" && method == http.MethodGet:
		s, err := q.Summarize(ctx)
		if err != nil {
			return errorf(http.StatusServiceUnavailable, "%v", err)
		}
		return writeJSON(w, http.StatusOK, s)
	case len(parts) >= 1 && parts[0] == "holds":
		return holds(ctx, w, r, q, parts[1:])
	case len(parts) == 1 && (parts[0] == "pause" || parts[0] == "resume"):
		if method != http.MethodPost {
			return errorf(http.StatusMethodNotAllowed, "use POST")
		}
		if parts[0] == "pause" {
			q.Pause()
		} else {
			q.Resume()
		}
		return writeJSON(w, http.StatusOK, map[string]bool{"paused": q.Paused()})
	case len(parts) == 1 && method == http.MethodGet && queue.ValidID(parts[0]):
		m, err := q.Store().Get(ctx, parts[0])
		if err != nil {
			return notFound(err, parts[0])
		}
		return writeJSON(w, http.StatusOK, detailOf(m, time.Now()))
	case len(parts) == 2 && parts[1] == "body" && method == http.MethodGet && queue.ValidID(parts[0]):
		return body(ctx, w, q, parts[0])
	case len(parts) == 1 && method == http.MethodDelete && queue.ValidID(parts[0]):
		return act(ctx, w, r, q, queue.ActDelete, &queue.Filter{IDs: parts[:1]})
	case len(parts) == 2 && method == http.MethodPost && queue.ValidID(parts[0]):
		a, err := queue.ParseAction(parts[1])
		if err != nil {
			return errorf(http.StatusNotFound, "%v", err)
		}
		return act(ctx, w, r, q, a, &queue.Filter{IDs: parts[:1]})
	case (len(parts) == 1 && method == http.MethodPost) || (len(parts) == 0 && method == http.MethodDelete):
		name := "delete"
		if method == http.MethodPost {
			name = parts[0]
		}
		a, err := queue.ParseAction(name)
		if err != nil {
			return errorf(http.StatusNotFound, "no such route: %v", err)
		}
		f, err := ParseFilter(r)
		if err != nil {
			return err
		}
		if f.IsZero() && r.URL.Query().Get("all") != "true" {
			return errorf(http.StatusBadRequest, "%s every message: say all=true, or give a filter", a)
		}
		return act(ctx, w, r, q, a, f)
	}
	return errorf(http.StatusNotFound, "no such route: %s %s", method, rest)
}

func notFound(err error, id string) error {
	if errors.Is(err, queue.ErrNotFound) {
		return errorf(http.StatusNotFound, "no message %s in the queue", id)
	}
	return errorf(http.StatusServiceUnavailable, "%v", err)
}

// act does an action and answers {"touched": N}.
func act(ctx context.Context, w http.ResponseWriter, r *http.Request, q *queue.Queue, a queue.Action, f *queue.Filter) error {
	reason := r.URL.Query().Get("reason")
	if err := noControls("reason", reason); err != nil {
		return err
	}
	res, err := q.Act(context.WithoutCancel(ctx), f, a, reason)
	if err != nil {
		return errorf(http.StatusServiceUnavailable, "%v", err)
	}
	if len(f.IDs) == 1 && res.Touched == 0 {
		if _, err := q.Store().Get(ctx, f.IDs[0]); err != nil {
			return notFound(err, f.IDs[0])
		}
	}
	return writeJSON(w, http.StatusOK, res)
}

// maxLimit bounds a page of the listing.
const maxLimit = 1000

// list answers GET with the messages the filter selects, a page at a
// time: {"messages": [...], "next": CURSOR}.
func list(ctx context.Context, w http.ResponseWriter, r *http.Request, q *queue.Queue) error {
	f, err := ParseFilter(r)
	if err != nil {
		return err
	}
	limit := 100
	if v := r.URL.Query().Get("limit"); v != "" {
		if limit, err = strconv.Atoi(v); err != nil || limit < 1 || limit > maxLimit {
			return errorf(http.StatusBadRequest, "limit: %q is not a number from 1 to %d", v, maxLimit)
		}
	}
	cursor := r.URL.Query().Get("cursor")
	if cursor != "" && !queue.ValidID(cursor) {
		return errorf(http.StatusBadRequest, "cursor: %q is not a cursor this API gave", cursor)
	}
	msgs, next, err := q.Store().List(ctx, f, limit, cursor)
	if err != nil {
		return errorf(http.StatusServiceUnavailable, "%v", err)
	}
	now := time.Now()
	out := make([]MessageView, len(msgs))
	for i, m := range msgs {
		out[i] = viewOf(m, now)
	}
	return writeJSON(w, http.StatusOK, map[string]any{"messages": out, "next": next})
}

// body answers a message's body, as message/rfc822.
func body(ctx context.Context, w http.ResponseWriter, q *queue.Queue, id string) error {
	m, err := q.Store().Get(ctx, id)
	if err != nil {
		return notFound(err, id)
	}
	b, err := q.Body(ctx, m)
	if err != nil {
		return notFound(err, id)
	}
	defer b.Close()
	w.Header().Set("Content-Type", "message/rfc822")
	w.Header().Set("Content-Length", strconv.FormatInt(b.Size(), 10))
	w.Header().Set("Content-Disposition", `attachment; filename="`+id+`.eml"`)
	_, err = io.Copy(w, io.NewSectionReader(b, 0, b.Size()))
	return err
}

// holds serves the hold rules: GET lists them, POST adds one (a JSON
// object: sender_domain, recipient_domain, destination, comment,
// expires as RFC 3339 or expires_in as a duration), DELETE holds/ID
// removes one.
func holds(ctx context.Context, w http.ResponseWriter, r *http.Request, q *queue.Queue, rest []string) error {
	switch {
	case len(rest) == 0 && r.Method == http.MethodGet:
		rules, err := q.HoldRules(ctx)
		if err != nil {
			return errorf(http.StatusServiceUnavailable, "%v", err)
		}
		if rules == nil {
			rules = []queue.HoldRule{}
		}
		return writeJSON(w, http.StatusOK, map[string]any{"holds": rules})
	case len(rest) == 0 && r.Method == http.MethodPost:
		var in struct {
			queue.HoldRule
			ExpiresIn caddy.Duration `json:"expires_in,omitempty"`
		}
		dec := json.NewDecoder(io.LimitReader(r.Body, 64<<10))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&in); err != nil {
			return errorf(http.StatusBadRequest, "hold rule: %v", strings.TrimPrefix(err.Error(), "json: "))
		}
		h := in.HoldRule
		for field, v := range map[string]string{"sender_domain": h.SenderDomain, "recipient_domain": h.RecipientDomain,
			"destination": h.Destination, "comment": h.Comment, "id": h.ID} {
			if err := noControls(field, v); err != nil {
				return err
			}
		}
		if in.ExpiresIn < 0 {
			return errorf(http.StatusBadRequest, "expires_in: negative")
		}
		if in.ExpiresIn > 0 {
			h.Expires = time.Now().Add(time.Duration(in.ExpiresIn))
		}
		h.SenderDomain = strings.ToLower(strings.TrimPrefix(h.SenderDomain, "@"))
		h.RecipientDomain = strings.ToLower(strings.TrimPrefix(h.RecipientDomain, "@"))
		rule, res, err := q.AddHold(context.WithoutCancel(ctx), h)
		if err != nil {
			return errorf(http.StatusBadRequest, "%v", err)
		}
		return writeJSON(w, http.StatusCreated, map[string]any{"hold": rule, "touched": res.Touched})
	case len(rest) == 1 && r.Method == http.MethodDelete:
		found, res, err := q.RemoveHold(context.WithoutCancel(ctx), rest[0])
		if err != nil {
			return errorf(http.StatusServiceUnavailable, "%v", err)
		}
		if !found {
			return errorf(http.StatusNotFound, "no hold rule %q", rest[0])
		}
		return writeJSON(w, http.StatusOK, res)
	}
	return errorf(http.StatusNotFound, "no such route: %s holds/%s", r.Method, strings.Join(rest, "/"))
}

// ParseFilter reads a filter from a request's query: from, to, domain,
// destination, state (pending, deferred, held, failed), held (true,
// false), older_than and younger_than (durations: 1h, 2d), next_before (a
// duration from now, or an RFC 3339 time), source, id (repeated).
func ParseFilter(r *http.Request) (*queue.Filter, error) {
	q := r.URL.Query()
	f := &queue.Filter{From: q.Get("from"), To: q.Get("to"), Domain: strings.ToLower(q.Get("domain")),
		Destination: q.Get("destination"), Source: q.Get("source")}
	for field, v := range map[string]string{"from": f.From, "to": f.To, "domain": f.Domain, "destination": f.Destination, "source": f.Source} {
		if err := noControls(field, v); err != nil {
			return nil, err
		}
	}
	if v := q.Get("state"); v != "" {
		switch s := queue.State(v); s {
		case queue.Pending, queue.Deferred, queue.Held, queue.Failed:
			f.State = s
		default:
			return nil, errorf(http.StatusBadRequest, "state: %q is not pending, deferred, held or failed", v)
		}
	}
	if v := q.Get("held"); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return nil, errorf(http.StatusBadRequest, "held: %q is not true or false", v)
		}
		f.Held = &b
	}
	now := time.Now()
	for _, d := range []struct {
		key string
		set func(time.Duration)
	}{
		{"older_than", func(d time.Duration) { f.ArrivedBefore = now.Add(-d) }},
		{"younger_than", func(d time.Duration) { f.ArrivedAfter = now.Add(-d) }},
	} {
		if v := q.Get(d.key); v != "" {
			dur, err := caddy.ParseDuration(v)
			if err != nil || dur < 0 {
				return nil, errorf(http.StatusBadRequest, "%s: %q is not a duration (such as 30m or 2d)", d.key, v)
			}
			d.set(dur)
		}
	}
	if v := q.Get("next_before"); v != "" {
		if t, err := time.Parse(time.RFC3339, v); err == nil {
			f.NextBefore = t
		} else if dur, err := caddy.ParseDuration(v); err == nil {
			f.NextBefore = now.Add(dur)
		} else {
			return nil, errorf(http.StatusBadRequest, "next_before: %q is neither an RFC 3339 time nor a duration", v)
		}
	}
	for i, id := range q["id"] {
		if !queue.ValidID(id) {
			return nil, errorf(http.StatusBadRequest, "id[%d]: %q is not a queue ID", i, id)
		}
		f.IDs = append(f.IDs, id)
	}
	return f, nil
}

func noControls(field, s string) error {
	if strings.ContainsFunc(s, func(r rune) bool { return r < ' ' || r == 0x7f }) {
		return errorf(http.StatusBadRequest, "%s: a control character", field)
	}
	return nil
}

// MessageView is a message in the listing.
type MessageView struct {
	ID          string          `json:"id"`
	From        string          `json:"from"`
	Size        int64           `json:"size"`
	Arrived     time.Time       `json:"arrived"`
	Age         string          `json:"age"`
	State       queue.State     `json:"state"`
	Source      string          `json:"source,omitempty"`
	HoldReason  string          `json:"hold_reason,omitempty"`
	NextAttempt time.Time       `json:"next_attempt,omitzero"`
	Priority    int             `json:"priority,omitempty"`
	Recipients  []RecipientView `json:"recipients"`
}

// RecipientView is a recipient in the listing.
type RecipientView struct {
	Addr        string           `json:"addr"`
	State       queue.State      `json:"state"`
	Attempts    int              `json:"attempts"`
	NextAttempt time.Time        `json:"next_attempt,omitzero"`
	LastError   string           `json:"last_error,omitempty"`
	LastReply   *transport.Reply `json:"last_reply,omitempty"`
	LastDetail  string           `json:"last_detail,omitempty"`
	Destination string           `json:"destination,omitempty"`
	// History is shown by the message's own page.
	History []queue.Attempt `json:"attempts_made,omitempty"`
}

// DetailView is one message, with its envelope and each recipient's
// attempts.
type DetailView struct {
	MessageView
	EnvID      string `json:"envid,omitempty"`
	Ret        string `json:"ret,omitempty"`
	EightBit   bool   `json:"eight_bit,omitempty"`
	SMTPUTF8   bool   `json:"smtputf8,omitempty"`
	RequireTLS bool   `json:"require_tls,omitempty"`
}

func viewOf(m *queue.Message, now time.Time) MessageView {
	v := MessageView{ID: m.ID, From: m.From, Size: m.Size, Arrived: m.Arrived, State: m.State(), Source: m.Source,
		HoldReason: m.HoldReason, NextAttempt: m.NextAttempt, Priority: m.Priority,
		Age: now.Sub(m.Arrived).Round(time.Second).String()}
	for _, r := range m.Recipients {
		v.Recipients = append(v.Recipients, RecipientView{Addr: r.Addr, State: r.State, Attempts: r.Attempts,
			NextAttempt: r.NextAttempt, LastError: r.LastError, LastReply: r.LastReply, LastDetail: r.LastDetail,
			Destination: r.Destination})
	}
	return v
}

func detailOf(m *queue.Message, now time.Time) DetailView {
	d := DetailView{MessageView: viewOf(m, now), EnvID: m.EnvID, Ret: m.Ret, EightBit: m.EightBit,
		SMTPUTF8: m.SMTPUTF8, RequireTLS: m.RequireTLS}
	for i, r := range m.Recipients {
		d.Recipients[i].History = r.History
	}
	return d
}

func writeJSON(w http.ResponseWriter, status int, v any) error {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	return json.NewEncoder(w).Encode(v)
}
