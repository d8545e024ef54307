package l4submission

import (
	"strconv"
	"strings"

	"github.com/emersion/go-smtp"

	"github.com/seed7b014b84/caddy-smtp/transport"
)

// The outcomes of a message, for logs and metrics: queued (250), deferred
// (4xx: try again) or refused (5xx).
const (
	resultQueued   = "queued"
	resultDeferred = "deferred"
	resultRefused  = "refused"
)

// maxReplyLine bounds a reply line's length (RFC 5321 allows 512 octets
// per reply line).
const maxReplyLine = 400

// verdict is what became of a message's data: the reply's code and the
// outcome, for the log and the metrics.
type verdict struct {
	code   int
	result string
}

// replyError turns a reply of the app's (a recipient refused at RCPT) into
// the error go-smtp writes as the reply, code and enhanced code kept.
func replyError(r *transport.Reply) *smtp.SMTPError {
	def := smtp.EnhancedCode{r.Code / 100, 0, 0}
	return &smtp.SMTPError{Code: r.Code, EnhancedCode: enhancedOf(r, r.Code/100, def), Message: oneLine(r.Text())}
}

// enhancedOf returns the reply's enhanced status code when it has one of
// the class, else def.
func enhancedOf(r *transport.Reply, class int, def smtp.EnhancedCode) smtp.EnhancedCode {
	if r == nil || r.Enhanced == "" {
		return def
	}
	parts := strings.Split(r.Enhanced, ".")
	if len(parts) != 3 {
		return def
	}
	var e smtp.EnhancedCode
	for i, p := range parts {
		n, err := strconv.Atoi(p)
		if err != nil || n < 0 {
			return def
		}
		e[i] = n
	}
	if e[0] != class {
		return def
	}
	return e
}

// oneLine makes s fit on one bounded reply line.
func oneLine(s string) string {
	s = strings.Map(func(r rune) rune {
		if r == '\r' || r == '\n' || r == '\t' {
			return ' '
		}
		return r
	}, s)
	if len(s) > maxReplyLine {
		s = strings.ToValidUTF8(s[:maxReplyLine-3], "") + "..."
	}
	return s
}
