package transport

import (
	"bufio"
	"io"
)

// normalizer reads a message body and yields it as SMTP carries it: every
// line ending CRLF (a bare LF or a bare CR becomes CRLF, so that neither
// reaches the wire alone), the body ending with CRLF, and, for DATA, a dot
// doubled at the start of every line (RFC 5321, section 4.5.2). With
// dot-stuffing, no sequence in the body (`\n.\n`, `\r.\r`, `\r\n.\r\n`) can
// end the message early: that is what SMTP smuggling abuses.
//
// It streams: memory use does not grow with the message.
type normalizer struct {
	src      *bufio.Reader
	dotStuff bool
	out      []byte // pending output
	bol      bool   // at the beginning of a line
	ended    bool   // source exhausted and final CRLF emitted
	empty    bool   // nothing was read at all
	err      error
}

func newNormalizer(r io.Reader, dotStuff bool) *normalizer {
	return &normalizer{src: bufio.NewReaderSize(r, 32*1024), dotStuff: dotStuff, bol: true, empty: true}
}

func (n *normalizer) Read(p []byte) (int, error) {
	for len(n.out) == 0 {
		if n.ended {
			return 0, io.EOF
		}
		if n.err != nil {
			return 0, n.err
		}
		n.fill()
	}
	c := copy(p, n.out)
	n.out = n.out[c:]
	return c, nil
}

// fill normalizes the next stretch of input into n.out.
func (n *normalizer) fill() {
	buf := n.out[:0]
	if cap(buf) < 32*1024 {
		buf = make([]byte, 0, 33*1024)
	}
	for len(buf) < 32*1024 {
		b, err := n.src.ReadByte()
		if err != nil {
			if err != io.EOF {
				n.err = err
				break
			}
			if !n.bol && !n.empty {
				buf = append(buf, '\r', '\n')
			}
			n.ended = true
			break
		}
		n.empty = false
		switch b {
		case '\r':
			// CRLF, or a bare CR: either way one line break.
			if next, err := n.src.Peek(1); err == nil && next[0] == '\n' {
				_, _ = n.src.ReadByte()
			}
			buf = append(buf, '\r', '\n')
			n.bol = true
		case '\n':
			buf = append(buf, '\r', '\n')
			n.bol = true
		case '.':
			if n.bol && n.dotStuff {
				buf = append(buf, '.')
			}
			buf = append(buf, '.')
			n.bol = false
		default:
			buf = append(buf, b)
			n.bol = false
		}
	}
	n.out = buf
}
