// Package notify is an example of a Caddy module that sends mail through
// the smtp app: an events handler that mails someone when a Caddy event
// happens, such as a certificate that could not be renewed:
//
//	{
//		events {
//			on cert_failed mail_notify {
//				from caddy@example.org
//				to admin@example.org
//			}
//		}
//		smtp {
//			next_hop relay
//			remote relay { ... }
//		}
//	}
//
// It shows the whole of what a module needs: get the app with
// ctx.App("smtp") in Provision, build a delivery.Message, call Deliver and
// read the report.
package notify

import (
	"bytes"
	"context"
	"fmt"
	"sort"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"go.uber.org/zap"

	"github.com/seed7b014b84/caddy-smtp/delivery"
	"github.com/seed7b014b84/caddy-smtp/transport"
)

func init() {
	caddy.RegisterModule(Notify{})
}

// Notify mails the event it handles.
type Notify struct {
	// From is the envelope and header sender. Required.
	From string `json:"from,omitempty"`
	// To are the recipients. Required.
	To []string `json:"to,omitempty"`

	smtp   delivery.Sender
	logger *zap.Logger
}

// CaddyModule returns the Caddy module information.
func (Notify) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "events.handlers.mail_notify",
		New: func() caddy.Module { return new(Notify) },
	}
}

// Provision gets the smtp app.
func (n *Notify) Provision(ctx caddy.Context) error {
	n.logger = ctx.Logger()
	if n.From == "" || len(n.To) == 0 {
		return fmt.Errorf("mail_notify needs from and to")
	}
	app, err := ctx.App("smtp")
	if err != nil {
		return fmt.Errorf("getting the smtp app: %w", err)
	}
	sender, ok := app.(delivery.Sender)
	if !ok {
		return fmt.Errorf("the smtp app (%T) cannot deliver", app)
	}
	n.smtp = sender
	return nil
}

// Handle mails the event: its name in the subject, its data in the body.
func (n *Notify) Handle(ctx context.Context, e caddy.Event) error {
	var b bytes.Buffer
	fmt.Fprintf(&b, "From: %s\r\nSubject: Caddy event %s\r\nDate: %s\r\n\r\n", n.From, e.Name(), e.Timestamp().Format(time.RFC1123Z))
	keys := make([]string, 0, len(e.Data))
	for k := range e.Data {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(&b, "%s: %v\r\n", k, e.Data[k])
	}
	msg := &delivery.Message{From: n.From, Body: bytes.NewReader(b.Bytes()), Size: int64(b.Len())}
	for _, to := range n.To {
		msg.To = append(msg.To, transport.Recipient{Addr: to})
	}
	report, err := n.smtp.Deliver(ctx, msg)
	if err != nil {
		return err
	}
	for _, r := range report.Recipients {
		if r.Status != transport.Delivered {
			n.logger.Error("event not mailed", zap.String("event", e.Name()), zap.String("rcpt", r.Rcpt),
				zap.Stringer("status", r.Status), zap.String("error", r.Error))
		}
	}
	return nil
}

// UnmarshalCaddyfile reads:
//
//	mail_notify {
//		from <address>
//		to <address>...
//	}
func (n *Notify) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next()
	for d.NextBlock(0) {
		switch d.Val() {
		case "from":
			if !d.AllArgs(&n.From) {
				return d.ArgErr()
			}
		case "to":
			n.To = append(n.To, d.RemainingArgs()...)
		default:
			return d.Errf("unknown mail_notify option %q", d.Val())
		}
	}
	return nil
}

// Interface guards
var (
	_ caddy.Provisioner     = (*Notify)(nil)
	_ caddyfile.Unmarshaler = (*Notify)(nil)
)
