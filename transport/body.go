package transport

import (
	"bufio"
	"bytes"
	"io"
)

// normalizer reads a message body and yields it as SMTP carries it: every
// line ending CRLF (a bare LF or a bare CR becomes CRLF, so that neither
// reaches the wire alone), the body ending with CRLF, and, for DATA, a dot
// doubled at the start of every line (RFC 5321, section 4.5.2). With
// dot-stuffing, no sequence in the body (`\n.\n`, `\r.\r`, `\r\n.\r\n`) can
// end the message early: that is what SMTP smuggling abuses.
//
// It streams, in bulk between line breaks: memory use does not grow with
// the message, and a Client reuses one normalizer for all its messages.
type normalizer struct {
	src      *bufio.Reader
	dotStuff bool
	buf      []byte // output buffer
	out      []byte // pending output, a slice of buf
	bol      bool   // at the beginning of a line
	ended    bool   // source exhausted and final CRLF emitted
	empty    bool   // nothing was read at all
	err      error
}

const normBufSize = 32 * 1024

func newNormalizer(r io.Reader, dotStuff bool) *normalizer {
	n := &normalizer{src: bufio.NewReaderSize(r, normBufSize), buf: make([]byte, 0, normBufSize+2)}
	n.reset(r, dotStuff)
	return n
}

// reset starts a new body, keeping the buffers.
func (n *normalizer) reset(r io.Reader, dotStuff bool) {
	n.src.Reset(r)
	n.dotStuff = dotStuff
	n.out = nil
	n.bol, n.ended, n.empty, n.err = true, false, true, nil
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

// WriteTo writes the whole normalized body to w, so that io.Copy uses the
// normalizer's buffer instead of allocating its own.
func (n *normalizer) WriteTo(w io.Writer) (int64, error) {
	var total int64
	for {
		for len(n.out) == 0 {
			if n.ended {
				return total, nil
			}
			if n.err != nil {
				return total, n.err
			}
			n.fill()
		}
		k, err := w.Write(n.out)
		total += int64(k)
		n.out = n.out[k:]
		if err != nil {
			return total, err
		}
	}
}

// fill normalizes the next stretch of input into n.out.
func (n *normalizer) fill() {
	buf := n.buf[:0]
	for len(buf) < normBufSize {
		if n.src.Buffered() == 0 {
			if _, err := n.src.Peek(1); err != nil {
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
		}
		chunk, _ := n.src.Peek(n.src.Buffered())
		n.empty = false
		if n.bol && n.dotStuff && chunk[0] == '.' {
			buf = append(buf, '.', '.')
			_, _ = n.src.Discard(1)
			n.bol = false
			continue
		}
		switch chunk[0] {
		case '\n':
			buf = append(buf, '\r', '\n')
			_, _ = n.src.Discard(1)
			n.bol = true
			continue
		case '\r':
			// CRLF, or a bare CR: either way one line break.
			if next, _ := n.src.Peek(2); len(next) == 2 && next[1] == '\n' {
				_, _ = n.src.Discard(2)
			} else {
				_, _ = n.src.Discard(1)
			}
			buf = append(buf, '\r', '\n')
			n.bol = true
			continue
		}
		// A run of ordinary bytes, up to the next line break.
		run := chunk
		if i := bytes.IndexAny(chunk, "\r\n"); i >= 0 {
			run = chunk[:i]
		}
		if room := normBufSize - len(buf); len(run) > room {
			run = run[:room]
		}
		buf = append(buf, run...)
		_, _ = n.src.Discard(len(run))
		n.bol = false
	}
	n.buf = buf
	n.out = buf
}

// WireSize returns the size of the message in body as it goes on the wire,
// which is the size RFC 1870 has the SIZE parameter declare: every line
// end made CRLF (as the normalizer makes them) and a final CRLF added when
// the body lacks one, without the dots DATA doubles or its final ".". It
// reads body to its end.
func WireSize(body io.Reader) (int64, error) {
	return wireSize(body, nil)
}

// wireSize is WireSize with a buffer to read with (nil: one is made, if
// body cannot write itself out).
func wireSize(body io.Reader, buf []byte) (int64, error) {
	var w wireCounter
	if buf == nil {
		buf = make([]byte, normBufSize)
	}
	if _, err := io.CopyBuffer(&w, body, buf); err != nil {
		return 0, err
	}
	return w.size(), nil
}

// wireCounter counts what the normalizer (without dot-stuffing) would
// write, without writing it: every CR, LF and CRLF is one CRLF on the
// wire, so the size is the input's, plus one for each bare CR or LF, plus
// the final CRLF when the body does not end with a line break.
type wireCounter struct {
	n, cr, lf, crlf int64
	last            byte
}

func (w *wireCounter) Write(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if w.last == '\r' && p[0] == '\n' {
		w.crlf++
	}
	w.n += int64(len(p))
	w.cr += int64(bytes.Count(p, []byte{'\r'}))
	w.lf += int64(bytes.Count(p, []byte{'\n'}))
	w.crlf += int64(bytes.Count(p, []byte("\r\n")))
	w.last = p[len(p)-1]
	return len(p), nil
}

func (w *wireCounter) size() int64 {
	size := w.n + (w.cr - w.crlf) + (w.lf - w.crlf)
	if w.n > 0 && w.last != '\r' && w.last != '\n' {
		size += 2
	}
	return size
}
