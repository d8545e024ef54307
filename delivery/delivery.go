// Package delivery holds the types of a delivery request and of its report,
// and the interface of whatever delivers them. The smtp app implements it;
// the modules that hand messages to the app (the HTTP and layer4
// handlers) use only this package, so that they need not import the app,
// which imports them to register them.
package delivery

import (
	"context"
	"io"
	"time"

	"github.com/seed7b014b84/caddy-smtp/rules"
	"github.com/seed7b014b84/caddy-smtp/transport"
)

// Message is one message for Deliver: its envelope, its body, and what the
// caller knows of its history (for rules such as retry_num == 0).
type Message struct {
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
	// EightBit, SMTPUTF8, Ret, EnvID and RequireTLS are passed on as
	// transport.Envelope says.
	EightBit   bool
	SMTPUTF8   bool
	Ret        string
	EnvID      string
	RequireTLS bool
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
