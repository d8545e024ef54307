package rules

import (
	"cel.dev/cel-go/interpreter"
)

// Vars are the values a rule's condition can test. Each field is one CEL
// variable, named in snake_case; a variable that is not known at the time a
// setting is evaluated holds its zero value ("" or 0).
type Vars struct {
	// RetryNum is `retry_num`: how many delivery attempts of this message
	// came before this one (0 on the first attempt).
	RetryNum int64

	// Sender is `sender`: the envelope sender (MAIL FROM), "" for a bounce.
	Sender string

	// SenderDomain is `sender_domain`: the domain of the envelope sender,
	// lowercased.
	SenderDomain string

	// Rcpt is `rcpt`: the envelope recipient being routed.
	Rcpt string

	// RcptDomain is `rcpt_domain`: the recipient's domain, lowercased.
	RcptDomain string

	// MX is `mx`: the name of the MX host (or remote host) being connected
	// to, lowercased, without the trailing dot. Known from the connection
	// plan on.
	MX string

	// RemoteIP is `remote_ip`: the address being connected to. Known once
	// an address is chosen.
	RemoteIP string

	// LocalIP is `local_ip`: the source address of the connection. Known
	// once an address is chosen.
	LocalIP string

	// LastError is `last_error`: the kind of error that ended the previous
	// attempt: "" (none), "dns" (a lookup failed), "connection" (no host
	// could be reached, or the connection broke), "tls", "dane", "mta_sts",
	// "rejected" (the server refused: see last_status),
	// "unexpected_reply" (a reply that breaks the protocol), "config" (the
	// route could not be made from the config), "io" (the queued message
	// could not be read) or "lease" (the attempt was cut short because the
	// message's lease was lost).
	LastError string

	// LastStatus is `last_status`: the SMTP reply code that ended the
	// previous attempt, 0 if there was none.
	LastStatus int64

	// Size is `size`: the message size in bytes.
	Size int64

	// Priority is `priority`: the message's priority as the caller set it
	// (0 is normal; higher is more urgent).
	Priority int64

	// QueueAge is `queue_age`: how long, in seconds, the message has been
	// waiting since it was first submitted.
	QueueAge int64

	// Source is `source`: where the message came from: "smtp" (the
	// submission handler), "http", "api" (a Caddy module), "sendmail", or
	// "dsn" (a delivery status notification this app made).
	Source string
}

// variable names, in one place for the CEL declarations and ResolveName.
const (
	varRetryNum     = "retry_num"
	varSender       = "sender"
	varSenderDomain = "sender_domain"
	varRcpt         = "rcpt"
	varRcptDomain   = "rcpt_domain"
	varMX           = "mx"
	varRemoteIP     = "remote_ip"
	varLocalIP      = "local_ip"
	varLastError    = "last_error"
	varLastStatus   = "last_status"
	varSize         = "size"
	varPriority     = "priority"
	varQueueAge     = "queue_age"
	varSource       = "source"
	varLists        = "lists"
)

// ResolveName implements interpreter.Activation, so that a *Vars is given
// to CEL directly, with no map built per evaluation.
func (v *Vars) ResolveName(name string) (any, bool) {
	switch name {
	case varRetryNum:
		return v.RetryNum, true
	case varSender:
		return v.Sender, true
	case varSenderDomain:
		return v.SenderDomain, true
	case varRcpt:
		return v.Rcpt, true
	case varRcptDomain:
		return v.RcptDomain, true
	case varMX:
		return v.MX, true
	case varRemoteIP:
		return v.RemoteIP, true
	case varLocalIP:
		return v.LocalIP, true
	case varLastError:
		return v.LastError, true
	case varLastStatus:
		return v.LastStatus, true
	case varSize:
		return v.Size, true
	case varPriority:
		return v.Priority, true
	case varQueueAge:
		return v.QueueAge, true
	case varSource:
		return v.Source, true
	}
	return nil, false
}

// Parent implements interpreter.Activation; Vars has no parent (the lists
// come from the program's globals).
func (v *Vars) Parent() interpreter.Activation { return nil }

// Interface guards
var _ interpreter.Activation = (*Vars)(nil)
