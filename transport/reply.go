package transport

import (
	"bufio"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// Reply is an SMTP reply: its code, its enhanced status code (RFC 3463)
// when the server gave one, and its text lines.
type Reply struct {
	// Code is the three-digit reply code.
	Code int `json:"code"`
	// Enhanced is the enhanced status code ("5.1.1"), or "" when the
	// server gave none.
	Enhanced string `json:"enhanced,omitempty"`
	// Lines are the reply's text lines, without the code and separator
	// (and without the enhanced code, when there is one).
	Lines []string `json:"lines,omitempty"`
}

// Class is what a reply means for the command it answers.
type Class int

// The reply classes.
const (
	// Positive: 2xx and 3xx.
	Positive Class = iota
	// TransientNegative: 4xx, worth retrying later.
	TransientNegative
	// PermanentNegative: 5xx.
	PermanentNegative
)

// Class returns the reply's class.
func (r Reply) Class() Class {
	switch {
	case r.Code >= 500:
		return PermanentNegative
	case r.Code >= 400:
		return TransientNegative
	}
	return Positive
}

// Text returns the reply's lines joined by spaces.
func (r Reply) Text() string { return strings.Join(r.Lines, " ") }

// String returns the reply as the server said it, on one line: "550 5.1.1
// no such user".
func (r Reply) String() string {
	s := strconv.Itoa(r.Code)
	if r.Enhanced != "" {
		s += " " + r.Enhanced
	}
	if t := r.Text(); t != "" {
		s += " " + t
	}
	return s
}

// ReplyError is a negative reply as an error.
type ReplyError struct {
	Reply Reply
	// Command is what the reply answers, as sent ("RCPT TO:<a@b>"), or a
	// phase name for the greeting.
	Command string
}

func (e *ReplyError) Error() string {
	return fmt.Sprintf("%s: server replied %s", e.Command, e.Reply)
}

// Limits on what a reply may be, so that a hostile server cannot make the
// client hold an unbounded reply in memory.
const (
	maxReplyLines    = 100
	maxReplyLineSize = 2048 // RFC 5321 says 512 octets; leave room
)

// ErrMalformedReply is a reply that is not SMTP.
var ErrMalformedReply = errors.New("malformed reply")

// readReply reads one (possibly multi-line) reply.
func readReply(r *bufio.Reader) (Reply, error) {
	var (
		rep   Reply
		lines []string
	)
	for n := 0; ; n++ {
		if n == maxReplyLines {
			return Reply{}, fmt.Errorf("%w: more than %d lines", ErrMalformedReply, maxReplyLines)
		}
		line, err := readLine(r)
		if err != nil {
			return Reply{}, err
		}
		code, more, text, err := parseReplyLine(line)
		if err != nil {
			return Reply{}, err
		}
		if n == 0 {
			rep.Code = code
		} else if code != rep.Code {
			return Reply{}, fmt.Errorf("%w: line %d has code %d, the first %d", ErrMalformedReply, n+1, code, rep.Code)
		}
		lines = append(lines, text)
		if !more {
			break
		}
	}
	rep.Enhanced, rep.Lines = enhancedCode(rep.Code, lines)
	return rep, nil
}

// readLine reads a line ending in CRLF (or a bare LF, which some servers
// send), bounded in length.
func readLine(r *bufio.Reader) (string, error) {
	var b []byte
	for {
		chunk, isPrefix, err := r.ReadLine()
		if err != nil {
			return "", err
		}
		b = append(b, chunk...)
		if len(b) > maxReplyLineSize {
			return "", fmt.Errorf("%w: a line longer than %d bytes", ErrMalformedReply, maxReplyLineSize)
		}
		if !isPrefix {
			return string(b), nil
		}
	}
}

// parseReplyLine splits "250-text" or "250 text" (or a bare "250").
func parseReplyLine(line string) (code int, more bool, text string, err error) {
	if len(line) < 3 {
		return 0, false, "", fmt.Errorf("%w: %q", ErrMalformedReply, line)
	}
	for i := 0; i < 3; i++ {
		if line[i] < '0' || line[i] > '9' {
			return 0, false, "", fmt.Errorf("%w: %q", ErrMalformedReply, line)
		}
	}
	code = int(line[0]-'0')*100 + int(line[1]-'0')*10 + int(line[2]-'0')
	if code < 200 || code > 599 {
		return 0, false, "", fmt.Errorf("%w: code %d out of range", ErrMalformedReply, code)
	}
	if len(line) == 3 {
		return code, false, "", nil
	}
	switch line[3] {
	case '-':
		more = true
	case ' ':
	default:
		return 0, false, "", fmt.Errorf("%w: %q", ErrMalformedReply, line)
	}
	return code, more, line[4:], nil
}

// enhancedCode takes the enhanced status code off the lines when each line
// starts with the same one, and its class matches the reply code's.
func enhancedCode(code int, lines []string) (string, []string) {
	first, _, _ := strings.Cut(lines[0], " ")
	if !isEnhanced(first) || int(first[0]-'0') != code/100 {
		return "", lines
	}
	out := make([]string, len(lines))
	for i, l := range lines {
		c, rest, _ := strings.Cut(l, " ")
		if c != first {
			return "", lines
		}
		out[i] = rest
	}
	return first, out
}

// isEnhanced reports whether s is class.subject.detail: class 2, 4 or 5,
// subject 1-3 digits, detail 1-3 digits (RFC 3463).
func isEnhanced(s string) bool {
	parts := strings.Split(s, ".")
	if len(parts) != 3 || len(parts[0]) != 1 || !strings.ContainsAny(parts[0], "245") {
		return false
	}
	for _, p := range parts[1:] {
		if len(p) < 1 || len(p) > 3 {
			return false
		}
		for _, c := range p {
			if c < '0' || c > '9' {
				return false
			}
		}
	}
	return true
}
