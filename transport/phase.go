package transport

import (
	"errors"
	"fmt"
	"net"
	"time"
)

// Phase is a step of an SMTP session, each with its own timeout.
type Phase string

// The phases, named as the `timeouts` keys.
const (
	PhaseGreeting Phase = "greeting"
	PhaseTLS      Phase = "tls"
	PhaseEHLO     Phase = "ehlo"
	PhaseAuth     Phase = "auth"
	PhaseMailFrom Phase = "mail_from"
	PhaseRcptTo   Phase = "rcpt_to"
	PhaseData     Phase = "data"
	PhaseQuit     Phase = "quit"
)

// Timeouts bound each phase. A zero value means no limit.
type Timeouts struct {
	Greeting time.Duration
	TLS      time.Duration
	// EHLO bounds EHLO, LHLO, HELO, STARTTLS's reply, AUTH and RSET.
	EHLO     time.Duration
	MailFrom time.Duration
	RcptTo   time.Duration
	// Data bounds the DATA (or BDAT) command's reply, the whole transfer
	// of the message and its final reply.
	Data time.Duration
}

func (t Timeouts) of(p Phase) time.Duration {
	switch p {
	case PhaseGreeting:
		return t.Greeting
	case PhaseTLS:
		return t.TLS
	case PhaseEHLO, PhaseAuth, PhaseQuit:
		return t.EHLO
	case PhaseMailFrom:
		return t.MailFrom
	case PhaseRcptTo:
		return t.RcptTo
	case PhaseData:
		return t.Data
	}
	return 0
}

// Error is a failed session: in which phase, and why (the server's reply,
// a timeout, a dropped connection, a TLS failure).
type Error struct {
	Phase Phase
	// Reply is the server's reply, when it gave one.
	Reply *Reply
	// Timeout is true when the phase's timeout expired.
	Timeout bool
	// Limit is the phase's timeout, for the message.
	Limit time.Duration
	Err   error
}

func (e *Error) Error() string {
	switch {
	case e.Timeout:
		msg := fmt.Sprintf("smtp %s: timed out after %s", e.Phase, e.Limit)
		if cut := (*CutReplyError)(nil); errors.As(e.Err, &cut) {
			msg += fmt.Sprintf(" (the reply was cut after %s)", cut.partial())
		}
		return msg
	case e.Reply != nil:
		return fmt.Sprintf("smtp %s: server replied %s", e.Phase, e.Reply)
	}
	return fmt.Sprintf("smtp %s: %v", e.Phase, e.Err)
}

func (e *Error) Unwrap() error { return e.Err }

// Permanent reports whether retrying cannot help: the server answered with
// a 5xx reply. Timeouts, dropped connections and 4xx replies are
// temporary.
func (e *Error) Permanent() bool {
	return e.Reply != nil && e.Reply.Class() == PermanentNegative
}

// IsPermanent reports whether err is a permanent session failure.
func IsPermanent(err error) bool {
	var e *Error
	return errors.As(err, &e) && e.Permanent()
}

// phaseError wraps err as an Error of phase p, noticing timeouts.
func phaseError(p Phase, limit time.Duration, err error) *Error {
	var e *Error
	if errors.As(err, &e) {
		return e
	}
	var ne net.Error
	timeout := errors.As(err, &ne) && ne.Timeout()
	return &Error{Phase: p, Timeout: timeout, Limit: limit, Err: err}
}

// ErrProtocol is a reply that breaks the protocol: a 2xx reply to DATA, a
// 3xx reply where only 2xx accepts. Nothing said after it can be trusted:
// the session is closed, and the recipients not yet answered are deferred.
var ErrProtocol = errors.New("protocol error")
