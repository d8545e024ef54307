package queue

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/seed7b014b84/caddy-smtp/delivery"
	"github.com/seed7b014b84/caddy-smtp/rules"
	"github.com/seed7b014b84/caddy-smtp/transport"
)

// Policy is the schedule of the running config: the rule lists
// queue.retry, queue.expire and queue.notify, evaluated for one recipient.
// v holds retry_num (the attempts made so far), last_error, last_status,
// priority, queue_age, source and the message's own variables.
type Policy interface {
	// Retry returns the delay before the next attempt, before jitter.
	Retry(v *rules.Vars) (time.Duration, error)
	// Expire returns how long after its arrival a message that could not
	// be delivered fails.
	Expire(v *rules.Vars) (time.Duration, error)
	// Notify returns the ages at which a delay notice is due while a
	// recipient is still not delivered.
	Notify(v *rules.Vars) ([]time.Duration, error)
}

// Notifier makes delivery status notifications: the dsn package's, wired
// by the app. The queue calls it when a message is released, with the
// recipients that have news; it returns the notices to add (none for a
// message whose sender is the null sender, or for recipients whose
// NOTIFY says not to).
type Notifier interface {
	Notices(ctx context.Context, m *Message, body Body, news []News) ([]Notice, error)
}

// News is what a notice tells of one recipient.
type News struct {
	// Index is the recipient's index in Message.Recipients.
	Index int
	// Kind is "failed", "delayed", "delivered", "relayed" or "expanded".
	Kind string
	// WillRetryUntil is when a delayed recipient fails for good.
	WillRetryUntil time.Time
}

// Signer signs a message as it enters the queue, so that every attempt
// carries the same bytes: the dkim package's, wired by the app.
type Signer interface {
	// Sign returns a reader that passes body through unchanged while it
	// signs it, and a function that, once the reader has been read to its
	// end, returns the header fields to put before the body (nil: the
	// message is not signed).
	Sign(m *Message, body io.Reader) (io.Reader, func() []byte)
}

// Config is what the running Caddy config gives the queue. A reload gives a
// new one, which applies from the next attempt.
type Config struct {
	// Deliverer delivers the messages: the running smtp app.
	Deliverer delivery.Deliverer
	// Policy is the schedule.
	Policy Policy
	// Notifier makes delivery status notifications; nil makes none.
	Notifier Notifier
	// Signer signs messages as they enter the queue (DKIM), notices
	// included; nil signs none.
	Signer Signer
	// Concurrency is the most transactions in flight. Default 100.
	Concurrency int
	// DestinationConcurrency is the most transactions in flight to one
	// destination. A destination starts at InitialDestinationConcurrency
	// (default: 5, or less when DestinationConcurrency is less) and gains
	// one for each delivery until the cap; a failed connection takes one
	// away. Default 20.
	DestinationConcurrency        int
	InitialDestinationConcurrency int
	// MaxMessages and MaxSize are the quotas: past them Enqueue fails with
	// delivery.ErrQueueFull. Zero: no quota.
	MaxMessages int64
	MaxSize     int64
	// Lease is how long a message is leased for an attempt, renewed every
	// third of it while the attempt runs. Default 1m.
	Lease time.Duration
	// Jitter spreads retries: each delay is changed by up to this
	// fraction, up or down. Default 0.1.
	Jitter float64
	// Logger logs each recipient's outcome, with the queue ID.
	Logger *zap.Logger
	// Emit sends a Caddy event; nil sends none.
	Emit func(name string, data map[string]any)
}

func (c *Config) setDefaults() {
	if c.Concurrency <= 0 {
		c.Concurrency = 100
	}
	if c.DestinationConcurrency <= 0 {
		c.DestinationConcurrency = 20
	}
	if c.InitialDestinationConcurrency <= 0 {
		c.InitialDestinationConcurrency = 5
	}
	c.InitialDestinationConcurrency = min(c.InitialDestinationConcurrency, c.DestinationConcurrency)
	if c.Lease <= 0 {
		c.Lease = time.Minute
	}
	if c.Jitter < 0 || c.Jitter >= 1 {
		c.Jitter = 0.1
	}
	if c.Logger == nil {
		c.Logger = zap.NewNop()
	}
}

// The events the queue emits.
const (
	EventQueued    = "smtp.queued"
	EventDeferred  = "smtp.deferred"
	EventDelivered = "smtp.delivered"
	EventFailed    = "smtp.failed"
	EventExpired   = "smtp.expired"
)

// Queue is the outbound queue of one store: it takes messages in and runs
// the scheduler that delivers them. It outlives config reloads (the app
// keeps it in a caddy.UsagePool) and takes each new config with SetConfig.
type Queue struct {
	store Store
	cfg   atomic.Pointer[Config]
	now   func() time.Time

	wakeCh chan struct{}
	// nextDue is the store's last answer to NextDue, at nextDueAsked
	// (zero: none); only the scheduler's goroutine uses them.
	nextDue, nextDueAsked time.Time

	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{}
	closed chan struct{}
	// jobCtx is the context of deliveries; cancelled at the end of the
	// grace period of Stop.
	jobCtx    context.Context
	jobCancel context.CancelFunc
	jobs      sync.WaitGroup

	mu      sync.Mutex
	active  map[string]*activeMsg
	pending map[string]pendingAction
	holds   []HoldRule
	// shared is set when the store shares destination limits with other
	// instances (Limiter); deadSinceSync are the suspensions to tell it.
	shared        bool
	deadSinceSync map[string]Suspension
	syncNow       chan struct{}
	dests         map[string]*destination
	ring          []*destination // destinations with jobs waiting, in turn
	inflight      int
	paused        bool
	started       bool
	stopping      bool

	metrics counters
}

// New returns a queue over store. Call SetConfig, then Start.
func New(store Store) *Queue {
	q := &Queue{
		store:   store,
		now:     time.Now,
		wakeCh:  make(chan struct{}, 1),
		active:  map[string]*activeMsg{},
		pending: map[string]pendingAction{},
		dests:   map[string]*destination{},
		done:    make(chan struct{}),
		closed:  make(chan struct{}),
	}
	q.ctx, q.cancel = context.WithCancel(context.Background())
	q.jobCtx, q.jobCancel = context.WithCancel(context.Background())
	_, q.shared = store.(Limiter)
	return q
}

// Store returns the queue's store.
func (q *Queue) Store() Store { return q.store }

// SetConfig gives the queue the running config's settings.
func (q *Queue) SetConfig(c Config) {
	c.setDefaults()
	q.cfg.Store(&c)
	q.wake()
}

func (q *Queue) config() *Config { return q.cfg.Load() }

// Start starts the scheduler (once; later calls do nothing).
func (q *Queue) Start() {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.started {
		return
	}
	q.started = true
	go q.run()
}

// Stop stops the scheduler: no new attempt starts; attempts in flight
// have grace to finish, then they are cut (their recipients stay as the
// lease left them: due at their next retry). Messages leased but not yet
// attempted are released as they were. Stop returns at once; Wait waits.
func (q *Queue) Stop(grace time.Duration) {
	q.mu.Lock()
	if q.stopping {
		q.mu.Unlock()
		return
	}
	q.stopping = true
	started := q.started
	q.mu.Unlock()
	q.cancel()
	go func() {
		if started {
			<-q.done
		}
		finished := make(chan struct{})
		go func() { q.jobs.Wait(); close(finished) }()
		select {
		case <-finished:
		case <-time.After(grace):
			q.jobCancel()
			<-finished
		}
		q.jobCancel()
		q.releaseAll()
		_ = q.store.Close()
		close(q.closed)
	}()
}

// Wait waits, at most timeout, for a stopped queue to have released its
// messages and closed its store.
func (q *Queue) Wait(timeout time.Duration) bool {
	select {
	case <-q.closed:
		return true
	case <-time.After(timeout):
		return false
	}
}

// Stopped reports whether Stop was called.
func (q *Queue) Stopped() bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.stopping
}

// wake makes the scheduler look at the queue now.
func (q *Queue) wake() {
	select {
	case q.wakeCh <- struct{}{}:
	default:
	}
}

// syncSoon asks the scheduler to sync the destinations' limits with a
// shared store now, not at the next tick.
func (q *Queue) syncSoon() {
	select {
	case q.syncNow <- struct{}{}:
	default:
	}
}

// Wake makes the scheduler look at the queue now (after an admin action).
func (q *Queue) Wake() { q.wake() }

// Pause stops new attempts until Resume; attempts in flight finish.
func (q *Queue) Pause() {
	q.mu.Lock()
	q.paused = true
	q.mu.Unlock()
}

// Resume undoes Pause.
func (q *Queue) Resume() {
	q.mu.Lock()
	q.paused = false
	q.mu.Unlock()
	q.wake()
}

// Paused reports whether the queue is paused.
func (q *Queue) Paused() bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.paused
}

// Enqueue stores msg and returns its queue ID once it is on stable storage.
// The body is read from msg.Reader, or else msg.Body.
func (q *Queue) Enqueue(ctx context.Context, msg *delivery.Message) (string, error) {
	if err := checkEnvelope(msg); err != nil {
		return "", err
	}
	if q.Stopped() {
		return "", fmt.Errorf("%w: the queue is stopping", delivery.ErrQueueUnavailable)
	}
	cfg := q.config()
	var room int64
	if cfg != nil && (cfg.MaxMessages > 0 || cfg.MaxSize > 0) {
		messages, bytes, err := q.counts(ctx)
		if err != nil {
			return "", fmt.Errorf("%w: %v", delivery.ErrQueueUnavailable, err)
		}
		if cfg.MaxMessages > 0 && messages >= cfg.MaxMessages {
			return "", fmt.Errorf("%w: %d messages queued (queue.max_messages)", delivery.ErrQueueFull, messages)
		}
		if cfg.MaxSize > 0 {
			room = cfg.MaxSize - bytes
			if room <= 0 || (msg.Reader == nil && msg.Size > room) {
				return "", fmt.Errorf("%w: %d bytes queued (queue.max_size %d)", delivery.ErrQueueFull, bytes, cfg.MaxSize)
			}
		}
	}
	now := q.now()
	id := msg.ID
	if id == "" {
		id = NewID(now)
	} else if !ValidID(id) {
		return "", fmt.Errorf("enqueue: %q is not a queue ID (queue.NewID makes them)", id)
	}
	m := &Message{
		ID: id, From: msg.From, Arrived: now, Size: msg.Size,
		EightBit: msg.EightBit, SMTPUTF8: msg.SMTPUTF8, RequireTLS: msg.RequireTLS,
		Ret: msg.Ret, EnvID: msg.EnvID, Priority: msg.Priority, Source: msg.Source,
		NextAttempt: now,
	}
	if m.Source == "" {
		m.Source = "api"
	}
	for _, r := range msg.To {
		m.Recipients = append(m.Recipients, Recipient{Addr: r.Addr, Notify: r.Notify, ORCPT: r.ORCPT, State: Pending, NextAttempt: now})
	}
	if why := q.holdFor(m); why != "" {
		m.Held, m.HoldReason = true, why
	}
	body := msg.Reader
	if body == nil {
		body = io.NewSectionReader(msg.Body, 0, msg.Size)
	}
	if room > 0 {
		body = &quotaReader{r: body, left: room}
	}
	// The store writes m once it has read the body: what the scan finds
	// is in the record.
	scan := &bodyScan{r: body, m: m, smtputf8: msg.SMTPUTF8}
	m.SMTPUTF8 = false
	body = scan
	if cfg != nil && cfg.Signer != nil {
		body = signed(cfg.Signer, m, body)
	}
	if err := q.store.Add(ctx, m, body); err != nil {
		return "", err
	}
	q.wake()
	q.announce(cfg, m)
	return m.ID, nil
}

// announce counts, logs and emits (smtp.queued) a message just queued: one
// submitted, or a notice the queue made.
func (q *Queue) announce(cfg *Config, m *Message) {
	q.metrics.queued()
	if cfg == nil {
		return
	}
	rcpts := make([]string, len(m.Recipients))
	for i, r := range m.Recipients {
		rcpts[i] = r.Addr
	}
	cfg.Logger.Info("queued", zap.String("id", m.ID), zap.String("from", m.From), zap.Strings("to", rcpts),
		zap.Int64("size", m.Size), zap.String("source", m.Source), zap.Bool("held", m.Held))
	q.emit(cfg, EventQueued, map[string]any{"id": m.ID, "from": m.From, "to": rcpts, "size": m.Size,
		"source": m.Source, "held": m.Held})
}

// Counter is a Store that keeps its message count and size at hand, so
// that the quotas cost no query per message.
type Counter interface {
	Counts() (messages, bytes int64)
}

// counts returns the queue's message count and size.
func (q *Queue) counts(ctx context.Context) (messages, bytes int64, err error) {
	if c, ok := q.store.(Counter); ok {
		messages, bytes = c.Counts()
		return messages, bytes, nil
	}
	st, err := q.store.Stats(ctx)
	return st.Messages, st.Bytes, err
}

// signed wraps body in m's signing: at its end, the signature becomes m's
// Prefix (the store writes m once it has read the body).
func signed(s Signer, m *Message, body io.Reader) io.Reader {
	r, finish := s.Sign(m, body)
	return &atEOF{r: r, done: func() {
		if p := finish(); len(p) > 0 {
			m.Prefix = string(p)
		}
	}}
}

// atEOF calls done once, when its reader ends without an error.
type atEOF struct {
	r    io.Reader
	done func()
	once bool
}

func (a *atEOF) Read(p []byte) (int, error) {
	n, err := a.r.Read(p)
	if err == io.EOF && !a.once {
		a.once = true
		a.done()
	}
	return n, err
}

// Body opens a message's body as it is delivered: the stored body, after
// the message's Prefix.
func (q *Queue) Body(ctx context.Context, m *Message) (Body, error) {
	b, err := q.store.Body(ctx, m.ID)
	if err != nil {
		return nil, err
	}
	return q.withPrefix(m, b), nil
}

// withPrefix returns b after m's prefix (header fields the queue adds).
func (q *Queue) withPrefix(m *Message, b Body) Body {
	if m.Prefix == "" {
		return b
	}
	return &prefixed{prefix: m.Prefix, Body: b}
}

// MemBody returns a body held in memory.
func MemBody(b []byte) Body { return memBody{bytes.NewReader(b)} }

// memBody is a body in memory.
type memBody struct{ *bytes.Reader }

func (memBody) Close() error { return nil }

// prefixed is a body after header fields.
type prefixed struct {
	prefix string
	Body
}

func (p *prefixed) Size() int64 { return int64(len(p.prefix)) + p.Body.Size() }

func (p *prefixed) ReadAt(b []byte, off int64) (int, error) {
	plen := int64(len(p.prefix))
	n := 0
	if off < plen {
		n = copy(b, p.prefix[off:])
		if n == len(b) {
			return n, nil
		}
		off = plen
	}
	k, err := p.Body.ReadAt(b[n:], off-plen)
	return n + k, err
}

// bodyScan passes the body to the store and notes what its envelope must
// say: BODY=8BITMIME when a byte is not ASCII, and SMTPUTF8 when the
// caller asked for it and the header section is not ASCII (non-ASCII
// addresses are seen by the transport per recipient), so that a plain
// message from a client that always asks for SMTPUTF8 (as Go's net/smtp
// does when offered) still goes to a server without it, as Postfix does.
type bodyScan struct {
	r        io.Reader
	m        *Message
	smtputf8 bool
	// inBody is set once the empty line after the headers was seen; bol
	// while the line being read has had nothing but a CR.
	inBody bool
	bol    bool
}

func (b *bodyScan) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	for _, c := range p[:n] {
		if c >= 0x80 {
			b.m.EightBit = true
			if !b.inBody && b.smtputf8 {
				b.m.SMTPUTF8 = true
			}
		}
		if !b.inBody {
			switch {
			case c == '\n' && b.bol:
				b.inBody = true
			case c == '\n':
				b.bol = true
			case c != '\r':
				b.bol = false
			}
		}
	}
	return n, err
}

// quotaReader fails a body that would take the queue over max_size.
type quotaReader struct {
	r    io.Reader
	left int64
}

func (q *quotaReader) Read(p []byte) (int, error) {
	n, err := q.r.Read(p)
	q.left -= int64(n)
	if q.left < 0 {
		return n, fmt.Errorf("%w: the message would take the queue over queue.max_size", delivery.ErrQueueFull)
	}
	return n, err
}

// checkEnvelope refuses what can never be delivered: no recipient, no
// body, addresses that could end a command line.
func checkEnvelope(msg *delivery.Message) error {
	if msg == nil || (msg.Body == nil && msg.Reader == nil) {
		return errors.New("enqueue: message has no body")
	}
	if len(msg.To) == 0 {
		return errors.New("enqueue: message has no recipients")
	}
	if strings.ContainsAny(msg.From, "<>\r\n\x00 ") {
		return fmt.Errorf("enqueue: malformed sender %q", msg.From)
	}
	for i, r := range msg.To {
		at := strings.LastIndexByte(r.Addr, '@')
		if at <= 0 || at == len(r.Addr)-1 || strings.ContainsAny(r.Addr, "<>\r\n\x00 ") {
			return fmt.Errorf("enqueue: recipient %d: malformed address %q", i, r.Addr)
		}
	}
	return nil
}

func (q *Queue) emit(cfg *Config, name string, data map[string]any) {
	if cfg.Emit != nil {
		cfg.Emit(name, data)
	}
}

// Destinations returns the state of the destinations the scheduler knows,
// for the admin API's summary.
func (q *Queue) Destinations() map[string]DestinationState {
	q.mu.Lock()
	defer q.mu.Unlock()
	out := make(map[string]DestinationState, len(q.dests))
	now := q.now()
	for name, d := range q.dests {
		out[name] = DestinationState{
			LastError: d.lastError, Suspended: d.suspendedUntil.After(now), SuspendedUntil: d.suspendedUntil,
			InFlight: d.inflight, Window: d.window, Queued: len(d.jobs),
		}
	}
	return out
}

// DestinationState is what the scheduler knows of a destination.
type DestinationState struct {
	LastError      string    `json:"last_error,omitempty"`
	Suspended      bool      `json:"suspended"`
	SuspendedUntil time.Time `json:"suspended_until,omitzero"`
	InFlight       int       `json:"in_flight"`
	Window         int       `json:"window"`
	Queued         int       `json:"queued"`
}

// replyText is a reply for logs and events.
func replyText(r *transport.Reply) string {
	if r == nil {
		return ""
	}
	return r.String()
}
