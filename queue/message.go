package queue

import (
	"crypto/rand"
	"encoding/base32"
	"encoding/binary"
	"strings"
	"time"

	"github.com/seed7b014b84/caddy-smtp/transport"
)

// State is a recipient's state, or a message's.
type State string

// The states. A recipient is pending until its first attempt, deferred
// after an attempt that may succeed later, and delivered or failed for
// good. A message is held when an administrator (or a hold rule, or a
// corrupt record) stopped it; otherwise its state is its recipients':
// failed when any failed and none is still to be tried, deferred when any
// was tried and is waiting for a retry, pending otherwise.
const (
	Pending   State = "pending"
	Deferred  State = "deferred"
	Delivered State = "delivered"
	Failed    State = "failed"
	Held      State = "held"
)

// Final reports whether a recipient in state s needs nothing more.
func (s State) Final() bool { return s == Delivered || s == Failed }

// Message is a queued message: its envelope and the state of each
// recipient. The body is stored beside it (Store.Body).
type Message struct {
	// ID is the queue ID, unique and sortable by arrival.
	ID string `json:"id"`
	// From is the envelope sender; "" is the null sender.
	From string `json:"from"`
	// Recipients are the envelope recipients, with their state.
	Recipients []Recipient `json:"recipients"`
	// Size is the body's size in bytes.
	Size int64 `json:"size"`
	// Arrived is when the queue took the message.
	Arrived time.Time `json:"arrived"`
	// EightBit, SMTPUTF8, RequireTLS, Ret and EnvID are the envelope's
	// parameters (BODY=8BITMIME, SMTPUTF8, REQUIRETLS, DSN RET and ENVID).
	EightBit   bool   `json:"eight_bit,omitempty"`
	SMTPUTF8   bool   `json:"smtputf8,omitempty"`
	RequireTLS bool   `json:"require_tls,omitempty"`
	Ret        string `json:"ret,omitempty"`
	EnvID      string `json:"envid,omitempty"`
	// Priority orders delivery: higher first.
	Priority int `json:"priority,omitempty"`
	// Source is where the message came from: smtp, http, api, sendmail,
	// dsn.
	Source string `json:"source,omitempty"`
	// Held is set when the message must not be delivered until released;
	// HoldReason says why.
	Held       bool   `json:"held,omitempty"`
	HoldReason string `json:"hold_reason,omitempty"`
	// NextAttempt is the earliest next attempt of a recipient still to be
	// delivered; zero when none is.
	NextAttempt time.Time `json:"next_attempt,omitzero"`
	// Notified is how many of the queue's delay notice times
	// (queue.notify) have been dealt with.
	Notified int `json:"notified,omitempty"`
	// Prefix are header fields that go before the stored body whenever
	// the message is read: the DKIM-Signature fields made as the body was
	// stored (they need the whole body first).
	Prefix string `json:"prefix,omitempty"`
}

// Recipient is one recipient of a queued message and its state.
type Recipient struct {
	// Addr is the address.
	Addr string `json:"addr"`
	// Notify and ORCPT are the DSN parameters given with it.
	Notify []string `json:"notify,omitempty"`
	ORCPT  string   `json:"orcpt,omitempty"`
	// State is pending, deferred, delivered or failed.
	State State `json:"state"`
	// Attempts counts the delivery attempts made.
	Attempts int `json:"attempts"`
	// NextAttempt is when the next attempt is due (pending and deferred).
	NextAttempt time.Time `json:"next_attempt,omitzero"`
	// LastAttempt is when the last attempt began.
	LastAttempt time.Time `json:"last_attempt,omitzero"`
	// LastError is the class of the last failure (dns, connection, tls,
	// rejected, ...), and LastReply the reply that ended the last attempt
	// (a server's, or one this app made up).
	LastError string           `json:"last_error,omitempty"`
	LastReply *transport.Reply `json:"last_reply,omitempty"`
	// LastDetail is the last failure's text (the error, with the host).
	LastDetail string `json:"last_detail,omitempty"`
	// Host, Address and Destination are where the last attempt went.
	Host        string `json:"host,omitempty"`
	Address     string `json:"address,omitempty"`
	Destination string `json:"destination,omitempty"`
	// DoneAt is when the recipient was delivered or failed.
	DoneAt time.Time `json:"done_at,omitzero"`
	// Protocol is the protocol of the session that delivered it (smtp,
	// lmtp), and DSNPassed is set when that server offers DSN and got the
	// DSN parameters: it reports on the message from then on.
	Protocol  string `json:"protocol,omitempty"`
	DSNPassed bool   `json:"dsn_passed,omitempty"`
	// Reported is set once the recipient's final outcome was dealt with
	// by a delivery status notification (sent, or not wanted).
	Reported bool `json:"reported,omitempty"`
	// History is the last attempts (at most maxHistory), oldest first.
	History []Attempt `json:"history,omitempty"`
}

// Attempt is one delivery attempt of a recipient: when, where, and what
// came of it.
type Attempt struct {
	At      time.Time        `json:"at"`
	Host    string           `json:"host,omitempty"`
	Address string           `json:"address,omitempty"`
	State   State            `json:"state"`
	Reply   *transport.Reply `json:"reply,omitempty"`
	Error   string           `json:"error,omitempty"`
}

// maxHistory bounds a recipient's History.
const maxHistory = 10

// record adds an attempt to the recipient's history, dropping the oldest
// past maxHistory.
func (r *Recipient) record(a Attempt) {
	r.History = append(r.History, a)
	if n := len(r.History); n > maxHistory {
		r.History = append(r.History[:0:0], r.History[n-maxHistory:]...)
	}
}

// State returns the message's state (see State).
func (m *Message) State() State {
	if m.Held {
		return Held
	}
	var deferred, failed, open bool
	for _, r := range m.Recipients {
		switch r.State {
		case Deferred:
			deferred, open = true, true
		case Pending:
			open = true
		case Failed:
			failed = true
		}
	}
	switch {
	case deferred:
		return Deferred
	case open:
		return Pending
	case failed:
		return Failed
	}
	return Delivered
}

// Done reports whether every recipient is delivered or failed.
func (m *Message) Done() bool {
	for _, r := range m.Recipients {
		if !r.State.Final() {
			return false
		}
	}
	return true
}

// nextAttempt returns the earliest next attempt of an open recipient, or
// zero.
func (m *Message) nextAttempt() time.Time {
	var next time.Time
	for _, r := range m.Recipients {
		if r.State.Final() {
			continue
		}
		if next.IsZero() || r.NextAttempt.Before(next) {
			next = r.NextAttempt
		}
	}
	return next
}

// Due returns the indexes of the open recipients due at now.
func (m *Message) Due(now time.Time) []int {
	var due []int
	for i, r := range m.Recipients {
		if !r.State.Final() && !r.NextAttempt.After(now) {
			due = append(due, i)
		}
	}
	return due
}

// Domain returns the lowercased domain of an address.
func Domain(addr string) string {
	if i := strings.LastIndexByte(addr, '@'); i >= 0 {
		return strings.ToLower(addr[i+1:])
	}
	return ""
}

// idEncoding is Crockford-like base32 in lower case, without padding:
// IDs sort as their bytes do.
var idEncoding = base32.NewEncoding("0123456789abcdefghjkmnpqrstvwxyz").WithPadding(base32.NoPadding)

// NewID returns a new queue ID: 48 bits of milliseconds since the epoch
// and 48 random bits in 20 characters, sortable by arrival.
func NewID(now time.Time) string {
	var b [12]byte
	binary.BigEndian.PutUint64(b[:8], uint64(now.UnixMilli())<<16)
	_, _ = rand.Read(b[6:])
	return idEncoding.EncodeToString(b[:])
}

// ValidID reports whether s has the form of a queue ID (for the admin API,
// before it is used as a key).
func ValidID(s string) bool {
	if len(s) != 20 {
		return false
	}
	for _, c := range s {
		if !strings.ContainsRune("0123456789abcdefghjkmnpqrstvwxyz", c) {
			return false
		}
	}
	return true
}
