package l4submission

import (
	"fmt"
	"io"

	"github.com/emersion/go-smtp"
)

// lineLimiter passes a message through, and fails at the first line
// longer than max octets, not counting the CR LF (or bare LF) that ends
// it: RFC 5322 (2.1.1) allows 998, RFC 5321 (4.5.3.1.6) 1000 with the CR
// LF. A bare CR is an octet of its line.
type lineLimiter struct {
	r   io.Reader
	max int
	// line is the number of the line being read, from 1.
	line int
	// n is the number of octets of that line so far, a CR at its end
	// aside (cr).
	n  int
	cr bool
}

func (l *lineLimiter) Read(p []byte) (int, error) {
	n, err := l.r.Read(p)
	for i, c := range p[:n] {
		if c == '\n' {
			l.line, l.n, l.cr = l.line+1, 0, false
			continue
		}
		if l.cr {
			l.n++ // the CR was not followed by LF
		}
		l.cr = c == '\r'
		if !l.cr {
			l.n++
		}
		if l.n > l.max {
			return i, &lineTooLongError{line: l.line, max: l.max}
		}
	}
	return n, err
}

// lineTooLongError says which line of a message passed max_line_length.
type lineTooLongError struct {
	line, max int
	// atLeast says that the line that passed is line or one after it:
	// go-smtp's own limit cut the read before the line could be counted.
	atLeast bool
}

func (e *lineTooLongError) Error() string { return e.reply().Message }

// reply is the reply to a message with a line too long: 554, the code
// RFC 5321 (4.3.2) lists for a transaction that failed at the end of
// DATA (and RFC 3030 for BDAT), with 5.6.0 (RFC 3463: something about
// the content of the message makes it undeliverable). It is permanent:
// the client cannot retry the message as it is. 5.3.4 (message too big)
// is for a message's size, which is not the matter here.
func (e *lineTooLongError) reply() *smtp.SMTPError {
	msg := fmt.Sprintf("line %d of the message is longer than %d octets", e.line, e.max)
	if e.atLeast {
		msg = fmt.Sprintf("a line of the message (line %d or a later one) is longer than %d octets", e.line, e.max)
	}
	return &smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 6, 0}, Message: msg}
}
