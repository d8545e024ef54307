// Package delivery holds the types of a delivery request and of its report,
// and the interfaces between the parts that move a message: Sender (one
// attempt, now), Queuer (accept a message into the queue) and Deliverer
// (what the queue's scheduler delivers through). The smtp app implements
// all three; the modules that hand messages to the app (the HTTP and
// layer4 handlers) and the queue use only this package, so that none of
// them imports the app, which imports them to register them. Data flows one
// way: entry -> queue -> scheduler -> Deliverer -> report -> queue.
package delivery

import (
	"context"
	"errors"
	"io"
	"time"

	"github.com/seed7b014b84/caddy-smtp/rules"
	"github.com/seed7b014b84/caddy-smtp/transport"
)

// Message is one message for Deliver or Enqueue: its envelope, its body,
// and what the caller knows of its history (for rules such as retry_num ==
// 0).
type Message struct {
	// ID, for Enqueue only, is the queue ID the caller made for the
	// message with queue.NewID (to name it in a Received header it adds);
	// empty, the queue makes one.
	ID string
	// From is the envelope sender; "" is the null sender of a bounce.
	From string
	// To are the recipients, each with its DSN parameters.
	To []transport.Recipient
	// Body is the message (RFC 5322), read from the start for every
	// transaction that carries it; a *bytes.Reader, *strings.Reader or
	// *os.File will do. Line endings may be LF or CRLF.
	Body io.ReaderAt
	// Size is the body's length in bytes.
	Size int64
	// Reader, for Enqueue only, is the message as a stream, read once to
	// its end instead of Body (a message arriving over the network need not
	// be held anywhere before the queue has it). Size is then not needed.
	Reader io.Reader
	// EightBit, SMTPUTF8, Ret, EnvID and RequireTLS are passed on as
	// transport.Envelope says.
	EightBit   bool
	SMTPUTF8   bool
	Ret        string
	EnvID      string
	RequireTLS bool
	// Priority orders the queue: higher goes first. Default 0. It is also
	// the rule variable `priority`.
	Priority int
	// Source says where the message came from, for rules (`source`), logs
	// and the queue listing: "smtp", "http", "api", "sendmail", "dsn"...
	// Default: "api".
	Source string
	// Vars are the rule variables the caller knows: retry_num, last_error,
	// last_status, priority, queue_age. The sender's, recipients' and
	// size's are set by Deliver.
	Vars rules.Vars
}

// Report is what one delivery attempt did, per recipient.
type Report struct {
	Recipients []RecipientReport `json:"recipients"`
}

// RecipientReport is one recipient's outcome.
type RecipientReport struct {
	// Rcpt is the recipient.
	Rcpt string `json:"rcpt"`
	// Status is delivered, deferred or failed.
	Status transport.Status `json:"status"`
	// Route is the remote's name, or "mx" for delivery by MX.
	Route string `json:"route"`
	// Host is the server's name (the MX host, or the remote's address).
	Host string `json:"host,omitempty"`
	// Address is the server's address and port.
	Address string `json:"address,omitempty"`
	// Source is the local address the connection came from.
	Source string `json:"source,omitempty"`
	// TLSVersion and TLSCipher describe the session's TLS, empty without.
	TLSVersion string `json:"tls_version,omitempty"`
	TLSCipher  string `json:"tls_cipher,omitempty"`
	// TLSPolicy is the TLS policy the session was under: "none",
	// "opportunistic", "required", "dane" or "mta-sts".
	TLSPolicy string `json:"tls_policy,omitempty"`
	// Reply is the server's reply that decided the outcome.
	Reply *transport.Reply `json:"reply,omitempty"`
	// Error says why, when no reply did (DNS, connection, TLS, timeout).
	Error string `json:"error,omitempty"`
	// ErrorClass is the kind of failure of a recipient not delivered, as
	// the rule variable last_error names it: "dns", "connection", "tls",
	// "dane", "mta_sts", "rejected" (the server refused it), "io",
	// "unexpected_reply", "config"; "" when delivered.
	ErrorClass string `json:"error_class,omitempty"`
	// Protocol is the protocol of the session that delivered it: "smtp" or
	// "lmtp".
	Protocol string `json:"protocol,omitempty"`
	// DSNPassed is true when the recipient was delivered to a server that
	// offers DSN (RFC 3461), which the DSN parameters were passed on to:
	// that server reports on the message from then on.
	DSNPassed bool `json:"dsn_passed,omitempty"`
	// Duration is how long the attempt for this recipient took.
	Duration time.Duration `json:"duration"`
}

// Counts returns how many recipients were delivered, deferred and failed.
func (r *Report) Counts() (delivered, deferred, failed int) {
	for _, rr := range r.Recipients {
		switch rr.Status {
		case transport.Delivered:
			delivered++
		case transport.Failed:
			failed++
		default:
			deferred++
		}
	}
	return
}

// Sender delivers messages: the smtp app, which other modules get with
// ctx.App("smtp").
type Sender interface {
	// Deliver makes one delivery attempt of msg to all its recipients.
	Deliver(ctx context.Context, msg *Message) (*Report, error)
	// DefaultHostname is the name the app greets servers with.
	DefaultHostname() string
}

// Queuer takes messages into the queue: the smtp app, which other modules
// get with ctx.App("smtp").
type Queuer interface {
	// Enqueue stores msg in the queue and returns its queue ID once the
	// message and its envelope are on stable storage; from then on the
	// queue delivers it, retries it and reports on it. The body is read
	// from msg.Reader when set, else from msg.Body. An error wrapping
	// ErrQueueFull (or ErrQueueUnavailable) means the message was not
	// taken and may be offered again later; any other error is a fault of
	// the message itself.
	Enqueue(ctx context.Context, msg *Message) (string, error)
}

// RecipientChecker is a Queuer that can tell, before a message is taken,
// that a recipient can never be delivered to (its domain does not exist,
// or takes no mail), so that an entry path refuses it at once (RCPT) with
// the reply it returns, instead of taking the message and bouncing it.
type RecipientChecker interface {
	// CheckRecipient returns the reply refusing rcpt, or nil when it may
	// be delivered to (or this cannot be known now).
	CheckRecipient(ctx context.Context, from, rcpt string) *transport.Reply
}

// Route is a group of a message's recipients that one transaction carries:
// the same next hop (a remote, or the MX hosts of one domain).
type Route struct {
	// Key names the route: "remote:NAME" or "mx:DOMAIN".
	Key string
	// Destination is what concurrency caps and dead-destination
	// suspension count by: the remote ("remote:NAME"), or the set of MX
	// hosts of the domain ("mx:HOST,HOST"), so that domains served by the
	// same hosts share one.
	Destination string
	// Rcpts are the indexes of the recipients in Message.To.
	Rcpts []int
	// Concurrency is the most connections the route's next hop takes (a
	// remote's concurrency), 0 for no cap of its own.
	Concurrency int
	// Err, if set, is why the recipients could not be routed (a rule that
	// failed): they are deferred without an attempt.
	Err error
}

// Deliverer is what the queue's scheduler delivers through: the smtp app
// of the running config.
type Deliverer interface {
	// Routes groups msg's recipients by route.
	Routes(ctx context.Context, msg *Message) []Route
	// DeliverRoute makes one attempt to deliver msg to the recipients of
	// route, and returns one report per recipient of route.Rcpts, in
	// order. It reports no outcome twice and none it does not know: a
	// recipient whose transaction was cut before the server answered is
	// deferred.
	DeliverRoute(ctx context.Context, msg *Message, route Route) []RecipientReport
}

// ErrQueueFull is why a message was refused by a queue over its quota or
// out of disk space: 452 4.3.1 over SMTP, 507 over HTTP.
var ErrQueueFull = errors.New("queue is full")

// ErrQueueUnavailable is why a message was refused when the queue's store
// cannot be reached: 451 4.3.0 over SMTP, 503 over HTTP.
var ErrQueueUnavailable = errors.New("queue is unavailable")
