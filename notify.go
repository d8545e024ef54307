package caddysmtp

import (
	"context"
	"errors"
	"fmt"
	"os"

	"go.uber.org/zap"

	"github.com/seed7b014b84/caddy-smtp/dsn"
	"github.com/seed7b014b84/caddy-smtp/queue"
	"github.com/seed7b014b84/caddy-smtp/rules"
)

// The events of delivery status notifications.
const (
	// EventDSN carries a notice's fields instead of the notice, for
	// senders whose queue.dsn is "event".
	EventDSN = "smtp.dsn"
	// EventDoubleBounce is a notice that could not be sent: the message
	// was itself a notice (its sender is the null sender).
	EventDoubleBounce = "smtp.double_bounce"
)

// notifier makes the queue's delivery status notifications (package dsn),
// as queue.dsn says for each sender: a notice by mail, an event, or none.
type notifier struct{ a *App }

// provisionDSN reads queue.dsn_template.
func (a *App) provisionDSN() error {
	if a.Queue.DSNTemplate == "" {
		return nil
	}
	text, err := os.ReadFile(a.Queue.DSNTemplate)
	if err != nil {
		return fmt.Errorf("queue.dsn_template: %w", err)
	}
	t, err := dsn.ParseTemplate(string(text))
	if err != nil {
		return fmt.Errorf("queue.dsn_template: %s: %w", a.Queue.DSNTemplate, err)
	}
	a.dsnTemplate = t
	return nil
}

// Notices makes the notices of m's news. The running config decides (a
// reload's new template and rules apply at once).
func (n notifier) Notices(_ context.Context, m *queue.Message, body queue.Body, news []queue.News) ([]queue.Notice, error) {
	a := n.a.current()
	if m.From == "" {
		// A notice about a notice would loop: an event instead.
		for _, nw := range news {
			if nw.Kind != "failed" {
				continue
			}
			r := m.Recipients[nw.Index]
			a.logger.Warn("double bounce: a notice could not be delivered", zap.String("id", m.ID), zap.String("rcpt", r.Addr),
				zap.String("error", r.LastDetail))
			a.emitEvent(EventDoubleBounce, map[string]any{"id": m.ID, "rcpt": r.Addr, "error": r.LastDetail, "reply": replyString(r)})
		}
		return nil, nil
	}
	v := rules.Vars{Sender: m.From, SenderDomain: queue.Domain(m.From), Source: m.Source, Size: m.Size, Priority: int64(m.Priority)}
	mode, err := a.Queue.DSN.Eval(&v)
	if err != nil {
		a.logger.Error("queue.dsn", zap.String("id", m.ID), zap.Error(err))
		mode = DSNMail
	}
	opts := dsn.Options{ReportingMTA: a.DefaultHostname(), Template: a.dsnTemplate, Logger: a.logger.Named("dsn")}
	var notices []queue.Notice
	for _, group := range dsn.Group(news) {
		switch mode {
		case DSNNone:
		case DSNEvent:
			d, err := dsn.Describe(opts, m, group)
			if err != nil {
				return nil, err
			}
			a.emitEvent(EventDSN, map[string]any{"id": m.ID, "notice": d})
		default:
			notice, err := dsn.Build(opts, m, body, group)
			if errors.Is(err, dsn.ErrNullSender) {
				continue
			}
			if err != nil {
				return nil, err
			}
			notices = append(notices, notice)
			a.logger.Info("notice queued", zap.String("id", m.ID), zap.String("notice", notice.Message.ID),
				zap.String("kind", group[0].Kind), zap.String("to", m.From))
		}
	}
	return notices, nil
}

func replyString(r queue.Recipient) string {
	if r.LastReply == nil {
		return ""
	}
	return r.LastReply.String()
}

// emitEvent sends an event through the running config's events app.
func (a *App) emitEvent(name string, data map[string]any) {
	cur := a.current()
	if cur.events != nil && cur.events.ShouldEmit(name) {
		cur.events.Emit(cur.ctx, name, data)
	}
}

// Interface guards
var _ queue.Notifier = notifier{}
