package caddysmtp

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/dustin/go-humanize"

	"github.com/seed7b014b84/caddy-smtp/rules"
)

// QueueConfig is the outbound queue: where it is kept, when it retries,
// when it gives up, how much it sends at once and how much it holds.
type QueueConfig struct {
	// StoreRaw is where the queue is kept: a module of the
	// smtp.queue.stores namespace, {"module": "sqlite", "path": ...} (the
	// embedded store, the default) or {"module": "postgres", "url": ...}
	// (one queue shared by several Caddy instances). Configs with the same
	// store share one queue across reloads.
	StoreRaw json.RawMessage `json:"store,omitempty" caddy:"namespace=smtp.queue.stores inline_key=module"`

	// Path is the folder of the embedded store (an SQLite database, and
	// the bodies of large messages): a shorthand for {"store": {"module":
	// "sqlite", "path": ...}}. Default: smtp/queue in Caddy's data
	// directory ($XDG_DATA_HOME/caddy, or ~/.local/share/caddy).
	Path string `json:"path,omitempty"`

	// Retry is the delays between attempts: the first after the first
	// attempt, and so on; the last repeats. Each is changed by up to 10%,
	// up or down, so that messages deferred together do not all come back
	// at once. Default: 5m 10m 20m 40m 1h20m 2h, and for delivery status
	// notifications (`source == 'dsn'`) 1m 5m 15m 30m 1h. Rule list.
	Retry rules.Setting[[]caddy.Duration] `json:"retry,omitzero"`

	// Expire is how long after its arrival a message that could not be
	// delivered fails (and its sender is told). Default: 5d, and 2d for
	// delivery status notifications. Rule list.
	Expire rules.Setting[caddy.Duration] `json:"expire,omitzero"`

	// Notify is the ages of a message at which its sender is told it is
	// delayed, while some recipient is still to be delivered. Default: 4h
	// (once). An empty list sends no delay notice. Rule list.
	Notify rules.Setting[[]caddy.Duration] `json:"notify,omitzero"`

	// DSN is what the sender of a message that failed, is delayed, or
	// (when it asked: NOTIFY=SUCCESS) was delivered, is told: "mail" (a
	// delivery status notification, RFC 3464, sent to it from the null
	// sender), "event" (no mail; an smtp.dsn event with the notice's
	// fields, for applications that handle bounces themselves), or "none".
	// Default: "mail". Rule list, e.g. per sender domain:
	// [{"if": "sender_domain == 'app.example.org'", "then": "event"},
	// {"else": "mail"}].
	DSN rules.Setting[DSNMode] `json:"dsn,omitzero"`

	// DSNTemplate is a file holding a Go text/template for the
	// human-readable part of the notices, in place of the default (plain
	// English); its data is documented in package dsn. Default: none.
	DSNTemplate string `json:"dsn_template,omitempty"`

	// Concurrency is the most transactions in flight at once. Default:
	// 100.
	Concurrency int `json:"concurrency,omitempty"`

	// DestinationConcurrency is the most transactions in flight to one
	// destination (a remote, or the MX hosts of a domain). A destination
	// starts at 5 and gains one with each delivery up to this cap; a
	// failed connection takes one away. Default: 20 (Postfix's).
	DestinationConcurrency int `json:"destination_concurrency,omitempty"`

	// MaxMessages is the most messages the queue holds; past it, new
	// messages are refused for now (452 4.3.1 over SMTP, 507 over HTTP).
	// Default: 0, no limit.
	MaxMessages int64 `json:"max_messages,omitempty"`

	// MaxSize is the most bytes of messages the queue holds; past it, new
	// messages are refused for now. Default: 0, no limit.
	MaxSize int64 `json:"max_size,omitempty"`

	// MaxMessageSize is the largest message, in bytes, that the admin API
	// and `caddy sendmail` hand to the queue; Caddy modules that enqueue
	// read it with the app's MaxMessageSize method (the submission handler
	// and smtp_send have limits of their own). Default: 64 MiB.
	MaxMessageSize int64 `json:"max_message_size,omitempty"`

	// MinFree is the free space, in bytes, kept on the embedded store's
	// file system: below it, new messages are refused for now, so that the
	// deliveries under way can still record their results (and free
	// space). A shorthand for the sqlite store's min_free. Default: 64 MiB.
	MinFree int64 `json:"min_free,omitempty"`

	// Lease is how long a message is leased to this instance for an
	// attempt; the lease is renewed every third of it while the attempt
	// runs. With a shared store, a message whose instance died is taken
	// over by another once its lease has expired. Default: 1m.
	Lease caddy.Duration `json:"lease,omitempty"`

	// StopGrace is how long deliveries in flight may take to finish when
	// Caddy stops; those still running then are cut, and their messages
	// retried at their next retry time. Default: 10s.
	StopGrace caddy.Duration `json:"stop_grace,omitempty"`
}

// DSNMode is what a sender is told of its message's fate.
type DSNMode string

// The DSN modes.
const (
	DSNMail  DSNMode = "mail"
	DSNEvent DSNMode = "event"
	DSNNone  DSNMode = "none"
)

// UnmarshalJSON reads a mode's name.
func (m *DSNMode) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("want mail, event or none: %w", err)
	}
	switch v := DSNMode(strings.ToLower(s)); v {
	case DSNMail, DSNEvent, DSNNone:
		*m = v
		return nil
	}
	return fmt.Errorf("unknown dsn mode %q (want mail, event or none)", s)
}

// The queue's defaults; the field comments explain them.
var (
	defaultRetry = []caddy.Duration{
		caddy.Duration(5 * time.Minute), caddy.Duration(10 * time.Minute), caddy.Duration(20 * time.Minute),
		caddy.Duration(40 * time.Minute), caddy.Duration(80 * time.Minute), caddy.Duration(2 * time.Hour),
	}
	defaultExpire = caddy.Duration(5 * 24 * time.Hour)
	// The schedule of notices (source == 'dsn').
	defaultDSNRetry = []caddy.Duration{
		caddy.Duration(time.Minute), caddy.Duration(5 * time.Minute), caddy.Duration(15 * time.Minute),
		caddy.Duration(30 * time.Minute), caddy.Duration(time.Hour),
	}
	defaultDSNExpire = caddy.Duration(2 * 24 * time.Hour)
	defaultNotify    = []caddy.Duration{caddy.Duration(4 * time.Hour)}
)

const (
	defaultQueueConcurrency       = 100
	defaultDestinationConcurrency = 20
	defaultLease                  = time.Minute
	defaultMaxMessageSize         = 64 << 20
	defaultStopGrace              = 10 * time.Second
)

// setDefaults fills the queue's unset settings.
func (q *QueueConfig) setDefaults() {
	// Notices (source "dsn") have a short schedule of their own: a sender
	// that cannot take its bounce for two days will not take it later.
	dsnRule := "source == 'dsn'"
	if q.Retry.IsZero() {
		q.Retry = rules.List(
			rules.Rule[[]caddy.Duration]{If: dsnRule, Then: &defaultDSNRetry},
			rules.Rule[[]caddy.Duration]{Else: &defaultRetry})
	}
	if q.Expire.IsZero() {
		q.Expire = rules.List(
			rules.Rule[caddy.Duration]{If: dsnRule, Then: &defaultDSNExpire},
			rules.Rule[caddy.Duration]{Else: &defaultExpire})
	}
	defaultSetting(&q.Notify, defaultNotify)
	defaultSetting(&q.DSN, DSNMail)
	if q.Concurrency == 0 {
		q.Concurrency = defaultQueueConcurrency
	}
	if q.DestinationConcurrency == 0 {
		q.DestinationConcurrency = defaultDestinationConcurrency
	}
	if q.Lease == 0 {
		q.Lease = caddy.Duration(defaultLease)
	}
	if q.MaxMessageSize == 0 {
		q.MaxMessageSize = defaultMaxMessageSize
	}
	if q.StopGrace == 0 {
		q.StopGrace = caddy.Duration(defaultStopGrace)
	}
}

// compile compiles the queue's rule lists.
func (q *QueueConfig) compile(env *rules.Env) error {
	if err := q.Retry.Compile("queue.retry", env); err != nil {
		return err
	}
	if err := q.Expire.Compile("queue.expire", env); err != nil {
		return err
	}
	if err := q.DSN.Compile("queue.dsn", env); err != nil {
		return err
	}
	return q.Notify.Compile("queue.notify", env)
}

// validate checks the queue's settings.
func (q *QueueConfig) validate() error {
	for _, c := range []struct {
		key string
		n   int64
	}{
		{"queue.concurrency", int64(q.Concurrency)}, {"queue.destination_concurrency", int64(q.DestinationConcurrency)},
		{"queue.max_messages", q.MaxMessages}, {"queue.max_size", q.MaxSize}, {"queue.min_free", q.MinFree},
		{"queue.max_message_size", q.MaxMessageSize},
	} {
		if c.n < 0 {
			return fmt.Errorf("%s: %d is negative", c.key, c.n)
		}
	}
	if q.StopGrace < 0 {
		return fmt.Errorf("queue.stop_grace: %v is negative", time.Duration(q.StopGrace))
	}
	if q.Lease < caddy.Duration(time.Second) {
		return fmt.Errorf("queue.lease: %v is under a second", time.Duration(q.Lease))
	}
	if err := q.Retry.Each("queue.retry", func(path string, v *[]caddy.Duration) error {
		if len(*v) == 0 {
			return fmt.Errorf("%s: give at least one delay", path)
		}
		for i, d := range *v {
			if d <= 0 {
				return fmt.Errorf("%s[%d]: %v is not a positive delay", path, i, time.Duration(d))
			}
		}
		return nil
	}); err != nil {
		return err
	}
	if err := q.Expire.Each("queue.expire", func(path string, v *caddy.Duration) error {
		if *v <= 0 {
			return fmt.Errorf("%s: %v is not a positive duration", path, time.Duration(*v))
		}
		return nil
	}); err != nil {
		return err
	}
	return q.Notify.Each("queue.notify", func(path string, v *[]caddy.Duration) error {
		for i, d := range *v {
			if d <= 0 {
				return fmt.Errorf("%s[%d]: %v is not a positive age", path, i, time.Duration(d))
			}
		}
		return nil
	})
}

// schedule is the queue.Policy of a config: its rule lists.
type schedule struct{ q *QueueConfig }

func (s schedule) Retry(v *rules.Vars) (time.Duration, error) {
	delays, err := s.q.Retry.Eval(v)
	if err != nil || len(delays) == 0 {
		return 0, err
	}
	// retry_num is the attempts made: the first retry follows the first.
	i := int(min(max(v.RetryNum-1, 0), int64(len(delays)-1)))
	return time.Duration(delays[i]), nil
}

func (s schedule) Expire(v *rules.Vars) (time.Duration, error) {
	d, err := s.q.Expire.Eval(v)
	return time.Duration(d), err
}

func (s schedule) Notify(v *rules.Vars) ([]time.Duration, error) {
	ds, err := s.q.Notify.Eval(v)
	if err != nil {
		return nil, err
	}
	out := make([]time.Duration, len(ds))
	for i, d := range ds {
		out[i] = time.Duration(d)
	}
	slices.Sort(out)
	return out, nil
}

// parseQueue reads the queue block:
//
//	queue {
//		path <folder>
//		store <module> { ... }       # sqlite (the default) or postgres
//		lease <duration>
//		retry <duration>...          # or a rule block
//		expire <duration>            # or a rule block
//		notify <duration>...|none    # or a rule block
//		dsn mail|event|none          # or a rule block
//		dsn_template <file>
//		concurrency <n>
//		destination_concurrency <n>
//		max_messages <n>
//		max_size <size>
//		max_message_size <size>
//		min_free <size>
//		stop_grace <duration>
//	}
func parseQueue(d *caddyfile.Dispenser, p *ruleParser, q *QueueConfig) error {
	if d.NextArg() {
		return d.ArgErr()
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		var err error
		switch key := d.Val(); key {
		case "path":
			q.Path, err = oneArg(d)
		case "store":
			if q.StoreRaw != nil {
				return d.Err("store is given twice")
			}
			q.StoreRaw, err = parseStore(d)
		case "lease":
			q.Lease, err = parseDuration(d, d.RemainingArgs())
		case "retry":
			q.Retry, err = parseSetting(d, p, once(&q.Retry), parseDurations(false))
		case "expire":
			q.Expire, err = parseSetting(d, p, once(&q.Expire), parseDuration)
		case "notify":
			q.Notify, err = parseSetting(d, p, once(&q.Notify), parseDurations(true))
		case "dsn":
			q.DSN, err = parseSetting(d, p, once(&q.DSN), parseDSNMode)
		case "dsn_template":
			q.DSNTemplate, err = oneArg(d)
		case "concurrency":
			q.Concurrency, err = parseInt(d, d.RemainingArgs())
		case "destination_concurrency":
			q.DestinationConcurrency, err = parseInt(d, d.RemainingArgs())
		case "max_messages":
			var n int
			n, err = parseInt(d, d.RemainingArgs())
			q.MaxMessages = int64(n)
		case "max_size":
			q.MaxSize, err = parseSize(d, d.RemainingArgs())
		case "min_free":
			q.MinFree, err = parseSize(d, d.RemainingArgs())
		case "max_message_size":
			q.MaxMessageSize, err = parseSize(d, d.RemainingArgs())
		case "stop_grace":
			q.StopGrace, err = parseDuration(d, d.RemainingArgs())
		default:
			return d.Errf("unknown queue option %q (known: path, store, lease, retry, expire, notify, dsn, dsn_template, concurrency, destination_concurrency, max_messages, max_size, max_message_size, min_free, stop_grace)", key)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// parseDurations reads a list of durations; with noneOK, "none" is the
// empty list.
func parseDurations(noneOK bool) valueParser[[]caddy.Duration] {
	return func(d *caddyfile.Dispenser, args []string) ([]caddy.Duration, error) {
		if noneOK && len(args) == 1 && strings.EqualFold(args[0], "none") {
			return []caddy.Duration{}, nil
		}
		if len(args) == 0 {
			return nil, d.ArgErr()
		}
		out := make([]caddy.Duration, 0, len(args))
		for _, a := range args {
			dur, err := parseDuration(d, []string{a})
			if err != nil {
				return nil, err
			}
			out = append(out, dur)
		}
		return out, nil
	}
}

// parseStore reads `store <module> [...] { ... }` with the module's own
// Caddyfile syntax.
func parseStore(d *caddyfile.Dispenser) (json.RawMessage, error) {
	if !d.NextArg() {
		return nil, d.ArgErr()
	}
	name := d.Val()
	um, err := caddyfile.UnmarshalModule(d, "smtp.queue.stores."+name)
	if err != nil {
		return nil, err
	}
	return caddyconfig.JSONModuleObject(um, "module", name, nil), nil
}

func parseDSNMode(d *caddyfile.Dispenser, args []string) (DSNMode, error) {
	if len(args) != 1 {
		return "", d.ArgErr()
	}
	var m DSNMode
	if err := m.UnmarshalJSON([]byte(fmt.Sprintf("%q", args[0]))); err != nil {
		return "", d.WrapErr(err)
	}
	return m, nil
}

// parseSize reads a size in bytes, such as 10GB or 64MiB.
func parseSize(d *caddyfile.Dispenser, args []string) (int64, error) {
	if len(args) != 1 {
		return 0, d.ArgErr()
	}
	n, err := humanize.ParseBytes(args[0])
	if err != nil {
		return 0, d.Errf("%q is not a size (such as 64MB or 10GiB): %v", args[0], err)
	}
	if n > 1<<62 {
		return 0, d.Errf("%q is too large", args[0])
	}
	return int64(n), nil
}
