package caddysmtp

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/seed7b014b84/caddy-smtp/delivery"
	"github.com/seed7b014b84/caddy-smtp/queue"
	_ "github.com/seed7b014b84/caddy-smtp/queue/pgstore"     // the postgres store module
	_ "github.com/seed7b014b84/caddy-smtp/queue/sqlitestore" // the embedded store module
	"github.com/seed7b014b84/caddy-smtp/rules"
	"github.com/seed7b014b84/caddy-smtp/transport"
)

// queues keeps each queue (one per store) across config reloads: a
// reload's new config takes the running queue, with its scheduler and the
// deliveries in flight, and its schedule applies from the next attempt.
var queues = caddy.NewUsagePool()

// queueHandle is a queue in the usage pool.
type queueHandle struct {
	q     *queue.Queue
	grace time.Duration
}

// Destruct stops the queue when the last config that uses it is unloaded.
// When Caddy is exiting (no config is active), it waits up to the grace
// period for the deliveries in flight; when a reload replaced the queue by
// another (a new path), it returns at once and lets them finish behind it.
func (h *queueHandle) Destruct() error {
	h.q.Stop(h.grace)
	if caddy.ActiveContext().Context == nil {
		h.q.Wait(h.grace + 5*time.Second)
	}
	return nil
}

// provisionStore loads the queue's store module: the one configured, or
// the embedded store, with queue.path and queue.min_free.
func (a *App) provisionStore() error {
	q := a.Queue
	if q.StoreRaw == nil {
		raw, err := json.Marshal(map[string]any{"module": "sqlite", "path": q.Path, "min_free": q.MinFree})
		if err != nil {
			return err
		}
		q.StoreRaw = raw
		defer func() { q.StoreRaw = nil }() // the config stays as given
	} else if q.Path != "" || q.MinFree != 0 {
		return fmt.Errorf("queue: path and min_free are shorthands of the embedded store's; with store, set them in it")
	}
	mod, err := a.ctx.LoadModule(q, "StoreRaw")
	if err != nil {
		return fmt.Errorf("queue.store: %w", err)
	}
	store, ok := mod.(queue.StoreModule)
	if !ok {
		return fmt.Errorf("queue.store: module %T is no queue store", mod)
	}
	a.store = store
	return nil
}

// startQueue takes the config's queue from the pool (opening its store the
// first time) and gives it this config's settings.
func (a *App) startQueue() error {
	key := a.store.StoreKey()
	grace := time.Duration(a.Queue.StopGrace)
	v, _, err := queues.LoadOrNew(key, func() (caddy.Destructor, error) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		store, err := a.store.OpenStore(ctx, a.logger.Named("queue.store"))
		if err != nil {
			return nil, fmt.Errorf("queue.store: %w", err)
		}
		q := queue.New(store)
		return &queueHandle{q: q, grace: grace}, nil
	})
	if err != nil {
		return err
	}
	h := v.(*queueHandle)
	h.grace = grace
	a.queue, a.releaseQueue = h.q, func() { _, _ = queues.Delete(key) }
	h.q.SetConfig(a.queueConfig())
	h.q.Start()
	return nil
}

// queueConfig is what this config gives the queue.
func (a *App) queueConfig() queue.Config {
	q := a.Queue
	logger := a.logger.Named("queue")
	return queue.Config{
		Deliverer:              a,
		Policy:                 schedule{q},
		Notifier:               notifier{a},
		Signer:                 a.queueSigner(),
		Concurrency:            q.Concurrency,
		Lease:                  time.Duration(q.Lease),
		DestinationConcurrency: q.DestinationConcurrency,
		MaxMessages:            q.MaxMessages,
		MaxSize:                q.MaxSize,
		Logger:                 logger,
		Emit:                   a.emitEvent,
	}
}

// queueSigner is the queue's signer: the DKIM signers, or none.
func (a *App) queueSigner() queue.Signer {
	if a.dkim == nil {
		return nil
	}
	return dkimSigner{s: a.dkim, log: a.logger.Named("dkim")}
}

// Enqueue stores msg in the queue and returns its queue ID once the
// message and its envelope are on stable storage; from then on the queue
// delivers it, retries it and reports on it. The body is read from
// msg.Reader when set (once, to its end), else from msg.Body. An error
// wrapping delivery.ErrQueueFull means the queue is full for now (answer
// 452, or 507 over HTTP); delivery.ErrQueueUnavailable, that it cannot be
// reached (451, 503); any other error is a fault of the message.
//
// Called on the app of a config that a reload replaced, it enqueues with the
// running config's app.
func (a *App) Enqueue(ctx context.Context, msg *delivery.Message) (string, error) {
	if cur := a.successor(); cur != nil {
		return cur.Enqueue(ctx, msg)
	}
	if a.queue == nil {
		return "", fmt.Errorf("%w: the smtp app is not running", delivery.ErrQueueUnavailable)
	}
	return a.queue.Enqueue(ctx, msg)
}

// QueueRunning returns the running queue, or nil before Start (the admin
// API and the queue page use it).
func (a *App) QueueRunning() *queue.Queue {
	if cur := a.successor(); cur != nil {
		return cur.QueueRunning()
	}
	return a.queue
}

// MaxMessageSize is the largest message the admin API and sendmail hand
// to the queue (queue.max_message_size), for other modules that enqueue
// messages from outside to apply too; Enqueue itself does not check it.
func (a *App) MaxMessageSize() int64 { return a.Queue.MaxMessageSize }

// updateQueueGauges sets the queue's gauges every 15 seconds while the
// config runs.
func (a *App) updateQueueGauges() {
	tick := time.NewTicker(15 * time.Second)
	defer tick.Stop()
	for {
		if q := a.queue; q != nil {
			ctx, cancel := context.WithTimeout(a.ctx, 10*time.Second)
			st, err := q.Store().Stats(ctx)
			cancel()
			if err == nil {
				q.UpdateGauges(st, time.Now())
			} else if a.ctx.Err() == nil {
				a.logger.Debug("queue stats", zap.Error(err))
			}
		}
		select {
		case <-a.ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// Interface guards
var (
	_ delivery.Queuer           = (*App)(nil)
	_ delivery.Deliverer        = (*App)(nil)
	_ delivery.RecipientChecker = (*App)(nil)
	_ caddy.Destructor          = (*queueHandle)(nil)
)

// CheckRecipient returns the reply that refuses rcpt at once, when its
// route is by MX and its domain does not exist (550 5.1.2) or takes no
// mail (556 5.1.10, RFC 7505), so that the submission handler refuses it
// at RCPT rather than taking the message and bouncing it. Any other
// outcome, a DNS failure included, is nil: the queue will try.
func (a *App) CheckRecipient(ctx context.Context, from, rcpt string) *transport.Reply {
	if cur := a.successor(); cur != nil {
		return cur.CheckRecipient(ctx, from, rcpt)
	}
	v := rules.Vars{Sender: from, SenderDomain: domainOf(from), Rcpt: rcpt, RcptDomain: domainOf(rcpt), Source: "smtp"}
	hop, err := a.NextHop.Eval(&v)
	if err != nil || hop != MX {
		return nil
	}
	if _, err := a.dns.LookupMX(ctx, v.RcptDomain); err != nil {
		if status, rep := dnsOutcome(err); status == transport.Failed {
			return rep
		}
	}
	return nil
}
