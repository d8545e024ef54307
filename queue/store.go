package queue

import (
	"context"
	"errors"
	"io"
	"time"

	"go.uber.org/zap"
)

// Store keeps the queue: messages, their bodies and their state, durably.
// The scheduler is its only user for delivery; the admin API lists and
// changes messages through it. Every store passes the same suite
// (queue/storetest).
//
// A message is delivered under a lease: Lease hands out due messages,
// each with a fresh token and an expiry, and records the attempt before
// returning (so that a crash in the middle of it defers the message to its
// next retry instead of retrying it at once). Every later write about the
// attempt (Save, Release) carries the lease and is refused with
// ErrStaleLease when the lease is no longer the message's current one:
// it expired and another instance took the message over, or the message
// was deleted. A store shared by several instances (PostgreSQL) thus never
// lets an instance that lost its lease overwrite the new holder's results.
type Store interface {
	// Add stores a new message, m (with its ID and recipients' NextAttempt
	// set), and its body read from body to its end; m.Size is set to the
	// body's size. It returns once both are on stable storage, and never
	// leaves part of a message behind when it fails. It fails with an
	// error wrapping delivery.ErrQueueFull when the store is out of space
	// or over its quota.
	Add(ctx context.Context, m *Message, body io.Reader) error

	// Body opens the body of message id.
	Body(ctx context.Context, id string) (Body, error)

	// Lease leases up to limit messages that are due at now and neither
	// held nor leased, highest priority first and then earliest due, until
	// now+leaseFor. For each, before the lease is written, attempt is
	// called with the message; it marks the attempt (the due recipients'
	// attempt counts, and their next attempt should this one never end),
	// and the store writes the message as attempt left it, together with
	// its lease, before Lease returns.
	Lease(ctx context.Context, now time.Time, limit int, leaseFor time.Duration, attempt func(*Message)) ([]*Lease, error)

	// Renew extends the leases to until, and returns those that are no
	// longer current (stale).
	Renew(ctx context.Context, leases []*Lease, until time.Time) (stale []*Lease, err error)

	// Save writes l.Message (its recipients' results) under the lease,
	// durably, before it returns. Its NextAttempt and Held are not
	// written: they change only at Lease, Release and by the admin API.
	Save(ctx context.Context, l *Lease) error

	// Release ends the lease, writing l.Message as it is, with its
	// NextAttempt and Held. A message whose recipients are all final (or
	// whose lease says Remove) is removed, body included. The notices (new messages, such as delivery status
	// notifications) are added in the same transaction, so that they are
	// made exactly once.
	Release(ctx context.Context, l *Lease, notices []Notice) error

	// NextDue returns when the next message that is neither held nor
	// leased is due; ok is false when there is none.
	NextDue(ctx context.Context) (next time.Time, ok bool, err error)

	// Get returns message id, or an error wrapping ErrNotFound.
	Get(ctx context.Context, id string) (*Message, error)

	// List returns the messages matching f in ID order (arrival), after
	// cursor (an ID, or "" from the start), at most limit; next is the
	// cursor of the next page, "" after the last.
	List(ctx context.Context, f *Filter, limit int, cursor string) (msgs []*Message, next string, err error)

	// Modify calls fn for every message matching f that is not leased, and
	// writes what fn leaves: the message as changed (Held and NextAttempt
	// included), removed when fn says so, with notices added in the same
	// transaction. It returns how many messages fn changed or removed, and
	// the IDs of the matching messages it skipped because they were leased.
	Modify(ctx context.Context, f *Filter, fn func(m *Message) Change) (touched int, busy []string, err error)

	// Stats returns the queue's counts.
	Stats(ctx context.Context) (Stats, error)

	// Holds returns the hold rules; PutHold adds one (or replaces the one
	// with its ID); DeleteHold removes one, and says whether it was there.
	Holds(ctx context.Context) ([]HoldRule, error)
	PutHold(ctx context.Context, h HoldRule) error
	DeleteHold(ctx context.Context, id string) (bool, error)

	// Close closes the store. Leases are forgotten.
	Close() error
}

// ModifyEach is the walk of a store's Modify: it lists the messages
// matching f a page (of pageSize) at a time, and calls one for each.
// one returns whether it changed or removed the message, or an error
// wrapping ErrStaleLease when the message is leased (it is then counted as
// busy); any other error ends the walk.
func ModifyEach(ctx context.Context, s Store, f *Filter, pageSize int, one func(m *Message) (bool, error)) (touched int, busy []string, err error) {
	cursor := ""
	for {
		page, next, err := s.List(ctx, f, pageSize, cursor)
		if err != nil {
			return touched, busy, err
		}
		for _, m := range page {
			ok, err := one(m)
			switch {
			case errors.Is(err, ErrStaleLease):
				busy = append(busy, m.ID)
			case err != nil:
				return touched, busy, err
			case ok:
				touched++
			}
		}
		if next == "" {
			return touched, busy, nil
		}
		cursor = next
	}
}

// StoreModule is a Caddy module of the smtp.queue.stores namespace: it
// opens a store. The app keeps one queue per StoreKey across config
// reloads.
type StoreModule interface {
	// StoreKey names the store: configs whose stores have the same key
	// share one queue.
	StoreKey() string
	// OpenStore opens the store.
	OpenStore(ctx context.Context, log *zap.Logger) (Store, error)
}

// Waker is a Store whose content other processes change (a shared
// database): Wake's channel receives when they did, so that the scheduler
// looks at once rather than at its next poll.
type Waker interface {
	Wake() <-chan struct{}
}

// Body is a message's body.
type Body interface {
	io.ReaderAt
	// Size returns its size in bytes.
	Size() int64
	Close() error
}

// Lease is a message taken for a delivery attempt.
type Lease struct {
	// Message is the message, as the attempt changes it.
	Message *Message
	// Token identifies this lease among all of the message's.
	Token string
	// Until is when the lease expires, unless renewed.
	Until time.Time
	// Remove makes Release remove the message whatever its state (an
	// administrator deleted it during the attempt).
	Remove bool
	// Body is the message's body when the store read it with the lease
	// (a store may do so for small bodies), so that the attempt need not
	// ask for it again; nil means the attempt calls Body.
	Body []byte
}

// Notice is a message made by the queue (a delivery status notification)
// to be added with a release or a change.
type Notice struct {
	Message *Message
	Body    io.Reader
}

// Change is what Modify does with a message.
type Change struct {
	// Write the message as fn changed it.
	Write bool
	// Remove it, body included.
	Remove bool
	// Notices to add.
	Notices []Notice
}

// Stats are the queue's counts.
type Stats struct {
	// Messages is how many messages are queued, and Bytes their bodies'
	// total size.
	Messages int64
	Bytes    int64
	// ByState counts the messages by state (pending, deferred, held,
	// failed).
	ByState map[State]int64
	// Oldest is when the oldest queued message arrived; zero when none.
	Oldest time.Time
}

// Filter selects messages. Empty fields select everything.
type Filter struct {
	// IDs selects these messages.
	IDs []string
	// From is a sender address, or "@domain" for a sender domain.
	From string
	// To is a recipient address, or "@domain".
	To string
	// Domain is a recipient domain.
	Domain string
	// Destination is a recipient's destination as the scheduler named it
	// ("mx:HOST,...", "remote:NAME") or a part of it (a host name).
	Destination string
	// State is the message's state.
	State State
	// Held selects held (true) or not held (false) messages.
	Held *bool
	// ArrivedBefore and ArrivedAfter bound the arrival time.
	ArrivedBefore, ArrivedAfter time.Time
	// NextBefore selects messages whose next attempt is before it.
	NextBefore time.Time
	// Source selects messages by where they came from.
	Source string
	// HeldBy selects the messages a hold rule holds, by the rule's ID.
	HeldBy string
}

// Errors of the stores.
var (
	// ErrNotFound: no such message.
	ErrNotFound = errors.New("no such message")
	// ErrStaleLease: the lease is no longer the message's current one.
	ErrStaleLease = errors.New("lease is stale: the message was taken over or removed")
	// ErrCorrupt: a record could not be read; the message is held with
	// the error.
	ErrCorrupt = errors.New("corrupt queue record")
)

// HoldRule holds the messages it matches, queued and new, until it is
// removed or expires (as mox's hold rules do). Empty fields match
// everything; a rule with none matches every message.
type HoldRule struct {
	ID string `json:"id"`
	// SenderDomain, RecipientDomain and Destination select messages:
	// by the sender's domain, a recipient's domain, or a recipient's
	// destination (or one of its hosts).
	SenderDomain    string `json:"sender_domain,omitempty"`
	RecipientDomain string `json:"recipient_domain,omitempty"`
	Destination     string `json:"destination,omitempty"`
	// Comment says why, for the listing and the messages' hold reason.
	Comment string `json:"comment,omitempty"`
	// Created is when the rule was made; Expires, if set, when it ends.
	Created time.Time `json:"created"`
	Expires time.Time `json:"expires,omitzero"`
}

// Reason is the hold reason of the messages the rule holds.
func (h HoldRule) Reason() string {
	r := "hold rule " + h.ID
	if h.Comment != "" {
		r += ": " + h.Comment
	}
	return r
}

// Filter is the filter that selects the queued messages the rule matches.
func (h HoldRule) Filter() *Filter {
	f := &Filter{Destination: h.Destination, Domain: h.RecipientDomain}
	if h.SenderDomain != "" {
		f.From = "@" + h.SenderDomain
	}
	return f
}

// Matches reports whether the rule holds m.
func (h HoldRule) Matches(m *Message) bool { return h.Filter().Match(m) }
