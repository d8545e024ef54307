package transport

import (
	"bufio"
	"errors"
	"fmt"
	"io"
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
	// Local is true for a reply this app made up, not one a server sent:
	// for an outcome no server answered (a DNS failure, no host reachable)
	// or a refusal before anything was sent (a message too large for the
	// server, REQUIRETLS that cannot be met).
	Local bool `json:"local,omitempty"`
}

// Class is what a reply means for the command it answers.
type Class int

// The reply classes.
const (
	// Positive: 2xx and 3xx. Only 2xx means a command was done (Success);
	// 3xx asks for more.
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

// Success reports whether the reply is 2xx: the command was done. (A 3xx
// reply only asks for more: 354 after DATA, 334 during AUTH.)
func (r Reply) Success() bool { return r.Code >= 200 && r.Code < 300 }

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

// readReply reads one (possibly multi-line) reply. A reply the server did
// not finish (the read timed out, or the connection closed, part way
// through a line or between the lines of a multi-line reply) is an error
// wrapping a *CutReplyError, never a reply.
func readReply(r *bufio.Reader) (Reply, error) {
	var (
		rep   Reply
		lines []string
		raw   []string // the lines as received, for a cut reply's error
	)
	for n := 0; ; n++ {
		if n == maxReplyLines {
			return Reply{}, fmt.Errorf("%w: more than %d lines", ErrMalformedReply, maxReplyLines)
		}
		line, err := readLine(r)
		if err != nil {
			var cut *CutReplyError
			if n > 0 {
				if errors.As(err, &cut) {
					cut.Partial = strings.Join(raw, "\r\n") + "\r\n" + cut.Partial
				} else if !errors.Is(err, ErrMalformedReply) {
					if err == io.EOF {
						err = io.ErrUnexpectedEOF
					}
					err = &CutReplyError{Partial: strings.Join(raw, "\r\n") + "\r\n", Err: err}
				}
			}
			return Reply{}, err
		}
		raw = append(raw, line)
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

// CutReplyError is a reply the server did not finish: what arrived of it,
// and why the rest did not (a timeout, the connection closed).
type CutReplyError struct {
	// Partial is what was received of the reply.
	Partial string
	Err     error
}

func (e *CutReplyError) Error() string {
	return fmt.Sprintf("the reply was cut after %s: %v", e.partial(), e.Err)
}

// partial quotes what was received, bounded.
func (e *CutReplyError) partial() string {
	p := e.Partial
	if len(p) > 200 {
		p = p[:200] + "..."
	}
	return strconv.Quote(p)
}

func (e *CutReplyError) Unwrap() error { return e.Err }

// readLine reads a line ending in CRLF (or a bare LF, which some servers
// send), bounded in length. A line that ends without its line break (the
// read timed out, or the connection closed) is a *CutReplyError: bufio's
// ReadLine would return it as a whole line, and "250 2.0." cut by a
// timeout would read as a reply.
func readLine(r *bufio.Reader) (string, error) {
	var b []byte
	for {
		chunk, err := r.ReadSlice('\n')
		b = append(b, chunk...)
		if len(b) > maxReplyLineSize+2 {
			return "", fmt.Errorf("%w: a line longer than %d bytes", ErrMalformedReply, maxReplyLineSize)
		}
		switch {
		case err == nil:
			b = b[:len(b)-1]
			if len(b) > 0 && b[len(b)-1] == '\r' {
				b = b[:len(b)-1]
			}
			if len(b) > maxReplyLineSize {
				return "", fmt.Errorf("%w: a line longer than %d bytes", ErrMalformedReply, maxReplyLineSize)
			}
			return string(b), nil
		case errors.Is(err, bufio.ErrBufferFull):
			continue
		case len(b) == 0:
			return "", err
		default:
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return "", &CutReplyError{Partial: string(b), Err: err}
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

// enhancedCode takes the enhanced status code of the reply's first line,
// when it has one whose class matches the reply code's, off every line
// that starts with it. Lines without it keep their text: Exim gives the
// code on the first line of a multi-line reply only ("550-5.7.1 text",
// then "550 more text").
func enhancedCode(code int, lines []string) (string, []string) {
	first, _, _ := strings.Cut(lines[0], " ")
	if !isEnhanced(first) || int(first[0]-'0') != code/100 {
		return "", lines
	}
	out := make([]string, len(lines))
	for i, l := range lines {
		if c, rest, _ := strings.Cut(l, " "); c == first {
			l = rest
		}
		out[i] = l
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
