package dkim

import (
	"crypto/sha256"
	"hash"
	"sync"
)

// relaxedBody is the relaxed body canonicalization of RFC 6376, section
// 3.4.4, written into a hash as the body streams through, with a fixed
// buffer whatever the body holds:
//
//   - whitespace (SP, HTAB) at the end of a line is dropped, and a run of
//     whitespace inside a line becomes one SP;
//   - empty lines at the end of the body are dropped: line ends are
//     counted, and written only when more content follows;
//   - a non-empty body ends with CRLF.
//
// A bare LF ends a line as CRLF does (the message is sent with CRLF); a
// CR not followed by LF is content.
type relaxedBody struct {
	h     hash.Hash
	buf   [4096]byte
	n     int
	wsp   bool  // whitespace seen since the line's last content
	cr    bool  // the last byte was a CR that may start a CRLF
	ends  int64 // line ends not written yet
	wrote bool  // some content was written
}

func newRelaxedBody(h hash.Hash) *relaxedBody { return &relaxedBody{h: h} }

// bodies keeps body canonicalizers with their buffers for the next
// messages.
var bodies = sync.Pool{New: func() any { return &relaxedBody{h: sha256.New()} }}

// getBody returns a SHA-256 body canonicalizer from the pool.
func getBody() *relaxedBody {
	b := bodies.Get().(*relaxedBody)
	b.h.Reset()
	b.n, b.wsp, b.cr, b.ends, b.wrote = 0, false, false, 0, false
	return b
}

// putBody returns a body canonicalizer to the pool.
func putBody(b *relaxedBody) { bodies.Put(b) }

func (b *relaxedBody) flush() {
	if b.n > 0 {
		b.h.Write(b.buf[:b.n])
		b.n = 0
	}
}

// put writes one byte of output.
func (b *relaxedBody) put(c byte) {
	if b.n == len(b.buf) {
		b.flush()
	}
	b.buf[b.n] = c
	b.n++
}

// content writes what comes before a content byte: the pending line ends
// and the pending whitespace.
func (b *relaxedBody) content() {
	for ; b.ends > 0; b.ends-- {
		b.put('\r')
		b.put('\n')
	}
	if b.wsp {
		b.put(' ')
		b.wsp = false
	}
	b.wrote = true
}

// Write canonicalizes p. It never fails.
func (b *relaxedBody) Write(p []byte) (int, error) {
	for i := 0; i < len(p); i++ {
		c := p[i]
		if b.cr {
			b.cr = false
			if c == '\n' {
				b.wsp = false
				b.ends++
				continue
			}
			b.content()
			b.put('\r')
		}
		switch c {
		case ' ', '\t':
			b.wsp = true
		case '\r':
			b.cr = true
		case '\n':
			b.wsp = false
			b.ends++
		default:
			if b.ends > 0 || b.wsp {
				b.content()
			}
			b.wrote = true
			// Copy the run of plain bytes that starts here, with the
			// single spaces between words (kept as they are).
			j := i + 1
			for j < len(p) {
				if !special[p[j]] {
					j++
				} else if p[j] == ' ' && j+1 < len(p) && !special[p[j+1]] {
					j += 2
				} else {
					break
				}
			}
			run := p[i:j]
			for len(run) > 0 {
				if b.n == len(b.buf) {
					b.flush()
				}
				k := copy(b.buf[b.n:], run)
				b.n += k
				run = run[k:]
			}
			i = j - 1
		}
	}
	return len(p), nil
}

// Sum ends the body and returns its hash.
func (b *relaxedBody) Sum() []byte {
	if b.cr {
		b.cr = false
		b.content()
		b.put('\r')
	}
	if b.wrote {
		b.put('\r')
		b.put('\n')
	}
	b.flush()
	return b.h.Sum(nil)
}

// special marks the bytes the body canonicalization looks at.
var special = [256]bool{' ': true, '\t': true, '\r': true, '\n': true}

// relaxedHeader appends the relaxed canonicalization of one header field
// (RFC 6376, section 3.4.2) to dst: the name lowercased, unfolded, runs of
// whitespace made one SP, whitespace around the colon and at the end of
// the value dropped, then CRLF. raw is the field as it is in the message,
// with its line ends. With crlf false, the final CRLF is left out (the
// DKIM-Signature field itself is hashed so, RFC 6376, section 3.7).
func relaxedHeader(dst []byte, raw []byte, crlf bool) []byte {
	colon := -1
	for i, c := range raw {
		if c == ':' {
			colon = i
			break
		}
	}
	name, value := raw, []byte(nil)
	if colon >= 0 {
		name, value = raw[:colon], raw[colon+1:]
	}
	// The name: lowercased, without whitespace (there should be none but
	// before the colon).
	for _, c := range name {
		switch {
		case c == ' ' || c == '\t' || c == '\r' || c == '\n':
		case c >= 'A' && c <= 'Z':
			dst = append(dst, c+('a'-'A'))
		default:
			dst = append(dst, c)
		}
	}
	dst = append(dst, ':')
	wsp, started := false, false
	for _, c := range value {
		switch c {
		case '\r', '\n':
			// Unfolding: line ends go; the whitespace that follows stays.
		case ' ', '\t':
			wsp = true
		default:
			if wsp && started {
				dst = append(dst, ' ')
			}
			wsp = false
			started = true
			dst = append(dst, c)
		}
	}
	if crlf {
		dst = append(dst, '\r', '\n')
	}
	return dst
}
