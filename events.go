package caddysmtp

import (
	"sync/atomic"

	"github.com/caddyserver/caddy/v2/modules/caddyevents"

	"github.com/seed7b014b84/caddy-smtp/transport"
)

// The events Deliver emits, one per recipient outcome, with the report's
// fields as data: usable as `events { on smtp.failed exec ... }`.
const (
	EventDelivered = "smtp.delivered"
	EventDeferred  = "smtp.deferred"
	EventFailed    = "smtp.failed"
)

// running is the smtp app of the running config. A delivery that began
// under an older config (still finishing after a reload) logs and emits its
// events through the current app, not through the old one whose context is
// cancelled.
var running atomic.Pointer[App]

// current returns the app to log and emit through: the running one, or a
// itself when none is started (as in tests and on the command line).
func (a *App) current() *App {
	if r := running.Load(); r != nil {
		return r
	}
	return a
}

// provisionEvents finds the events app, when the config has one.
func (a *App) provisionEvents() {
	if app, err := a.ctx.AppIfConfigured("events"); err == nil {
		a.events, _ = app.(*caddyevents.App)
	}
}

// emit sends the event of one recipient's outcome.
func (a *App) emit(msg *Message, rr RecipientReport) {
	cur := a.current()
	if cur.events == nil {
		return
	}
	name := EventDeferred
	switch rr.Status {
	case transport.Delivered:
		name = EventDelivered
	case transport.Failed:
		name = EventFailed
	}
	if !cur.events.ShouldEmit(name) {
		return
	}
	data := map[string]any{
		"from": msg.From, "rcpt": rr.Rcpt, "status": rr.Status.String(), "route": rr.Route,
		"host": rr.Host, "address": rr.Address, "source": rr.Source,
		"tls_version": rr.TLSVersion, "tls_cipher": rr.TLSCipher, "tls_policy": rr.TLSPolicy,
		"error": rr.Error, "duration_ms": rr.Duration.Milliseconds(),
	}
	if rr.Reply != nil {
		data["reply_code"] = rr.Reply.Code
		data["reply_enhanced"] = rr.Reply.Enhanced
		data["reply"] = rr.Reply.String()
	}
	cur.events.Emit(cur.ctx, name, data)
}
