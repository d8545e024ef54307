package dsn

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"mime"
	"mime/quotedprintable"
	"net/textproto"
	"strings"

	"github.com/seed7b014b84/caddy-smtp/queue"
)

// original is what a notice takes from the message it reports on.
type original struct {
	// subject and messageID are the message's Subject (decoded) and
	// Message-ID.
	subject, messageID string
	// part is the third part, the returned content; nil when the body
	// cannot be read.
	part *returnedPart
	// clash is set when the returned content has a line that begins with
	// the MIME boundary's delimiter.
	clash bool
}

// returnedPart is the third part of a notice.
type returnedPart struct {
	contentType, cte, description string
	// full is set when the whole message is returned, else its header
	// section.
	full bool
	// size is how many bytes of the body are returned, from its start.
	size int64
}

func (o *original) returned() string {
	switch {
	case o.part == nil:
		return ""
	case o.part.full:
		return "message"
	}
	return "headers"
}

// headerFactsLimit is how much of the header section is parsed for the
// Subject and Message-ID.
const headerFactsLimit = 64 << 10

// inspect reads m's body to choose the returned part and its encoding
// (see the package doc), and whether delim occurs in it. failed is set
// when the notice reports a failure, which RET=FULL returns the whole
// message with.
func inspect(m *queue.Message, body queue.Body, failed bool, delim string) (*original, error) {
	o := &original{}
	if body == nil {
		return o, nil
	}
	size := body.Size()
	hs, err := scan(io.NewSectionReader(body, 0, size), true, delim)
	if err != nil {
		return nil, fmt.Errorf("dsn: reading the header of message %s: %w", m.ID, err)
	}
	o.subject, o.messageID = headerFacts(io.NewSectionReader(body, 0, min(hs.length, headerFactsLimit)))
	global := m.SMTPUTF8
	if failed && strings.EqualFold(m.Ret, "FULL") {
		fs, err := scan(io.NewSectionReader(body, 0, size), false, delim)
		if err != nil {
			return nil, fmt.Errorf("dsn: reading message %s: %w", m.ID, err)
		}
		if fs.clean() || global {
			p := &returnedPart{contentType: "message/rfc822", description: "Undelivered Message", full: true, size: size, cte: fs.cte()}
			if global {
				p.contentType = "message/global"
			}
			o.part, o.clash = p, fs.clash
			return o, nil
		}
		// Not carried as message/rfc822 (RFC 2046, section 5.2.1): the
		// header section is returned instead.
	}
	p := &returnedPart{contentType: "text/rfc822-headers", description: "Message Headers", size: hs.length, cte: hs.cte()}
	if global {
		p.contentType = "message/global-headers"
	} else if p.cte == "8bit" {
		// Raw 8-bit header fields in a message sent without SMTPUTF8 are
		// broken headers, which RFC 6522 (section 4, text/rfc822-headers)
		// says to encode as quoted-printable.
		p.cte = "quoted-printable"
	}
	o.part, o.clash = p, hs.clash
	return o, nil
}

// headerFacts returns the Subject (RFC 2047 decoded, on one line) and the
// Message-ID (when it has the form <...>) of a header section.
func headerFacts(r io.Reader) (subject, messageID string) {
	h, _ := textproto.NewReader(bufio.NewReader(io.MultiReader(r, strings.NewReader("\r\n\r\n")))).ReadMIMEHeader()
	if s := h.Get("Subject"); s != "" {
		if d, err := new(mime.WordDecoder).DecodeHeader(s); err == nil {
			s = d
		}
		subject = strings.Join(strings.Fields(strings.ToValidUTF8(dropControls(s), "\uFFFD")), " ")
	}
	id := strings.TrimSpace(h.Get("Message-Id"))
	if len(id) > 2 && len(id) <= 250 && id[0] == '<' && id[len(id)-1] == '>' &&
		!strings.ContainsFunc(id[1:len(id)-1], func(r rune) bool { return r <= ' ' || r >= 0x7f || r == '<' || r == '>' }) {
		messageID = id
	}
	return subject, messageID
}

// stats is what scan found in a range of a body.
type stats struct {
	// length is the range's length: the header section's (through the
	// line end of its last field, without the empty line), or the body's.
	length int64
	// eightBit: a byte over 127; nul: a NUL byte; longLine: a line over
	// 998 octets.
	eightBit, nul, longLine bool
	// clash: a line begins with the boundary delimiter.
	clash bool
}

// clean reports whether the range can be carried as 7bit or 8bit (RFC
// 2045, section 2.7 and 2.8), once its line ends are CRLF.
func (s stats) clean() bool { return !s.nul && !s.longLine }

// cte is the Content-Transfer-Encoding the range needs.
func (s stats) cte() string {
	switch {
	case !s.clean():
		return "quoted-printable"
	case s.eightBit:
		return "8bit"
	}
	return "7bit"
}

// scan reads r to its end, or, when headers is set, to the empty line that
// ends the header section. A line ends at CRLF, LF or CR, as the transport
// sees it.
func scan(r io.Reader, headers bool, delim string) (stats, error) {
	var (
		st        stats
		buf       = make([]byte, 32<<10)
		off       int64 // offset of buf[0]
		lineStart int64
		lineLen   int
		matching  = delim != ""
		prevCR    bool
	)
	for {
		n, err := r.Read(buf)
		for i := 0; i < n; i++ {
			c := buf[i]
			if c >= ' ' && c < 0x80 && !matching {
				// Most bytes: printable ASCII past the start of a line.
				prevCR = false
				lineLen++
				continue
			}
			if c == '\n' && prevCR {
				prevCR = false
				lineStart = off + int64(i) + 1
				continue
			}
			prevCR = false
			if c == '\r' || c == '\n' {
				if headers && lineLen == 0 {
					st.length = lineStart
					return st, nil
				}
				st.longLine = st.longLine || lineLen > hardLine
				prevCR = c == '\r'
				lineStart, lineLen, matching = off+int64(i)+1, 0, delim != ""
				continue
			}
			switch {
			case c == 0:
				st.nul = true
			case c >= 0x80:
				st.eightBit = true
			}
			lineLen++
			if matching && lineLen <= len(delim) {
				if c != delim[lineLen-1] {
					matching = false
				} else if lineLen == len(delim) {
					st.clash = true
				}
			}
		}
		off += int64(n)
		if err == io.EOF {
			st.length = off
			st.longLine = st.longLine || lineLen > hardLine
			return st, nil
		}
		if err != nil {
			return st, err
		}
	}
}

// contentReader yields a body's content as a notice returns it: line ends
// made CRLF, a final CRLF added when missing, and quoted-printable encoded
// when asked. It streams: it holds one chunk of the body at a time.
type contentReader struct {
	src    io.Reader
	in     []byte
	out    bytes.Buffer
	qp     *quotedprintable.Writer
	dst    io.Writer
	prevCR bool
	last   byte
	done   bool
	err    error
}

func newContentReader(src io.Reader, qp bool) *contentReader {
	c := &contentReader{src: src, in: make([]byte, 32<<10)}
	c.dst = &c.out
	if qp {
		c.qp = quotedprintable.NewWriter(&c.out)
		c.dst = c.qp
	}
	return c
}

var crlf = []byte("\r\n")

func (c *contentReader) Read(p []byte) (int, error) {
	for c.out.Len() == 0 {
		if c.done {
			return 0, io.EOF
		}
		if c.err != nil {
			return 0, c.err
		}
		n, err := c.src.Read(c.in)
		c.normalize(c.in[:n])
		switch {
		case err == io.EOF:
			if c.last != 0 && c.last != '\n' {
				c.write(crlf)
			}
			if c.qp != nil {
				_ = c.qp.Close()
			}
			c.done = true
		case err != nil:
			c.err = fmt.Errorf("dsn: reading the returned message: %w", err)
		}
	}
	return c.out.Read(p)
}

// normalize writes b with its line ends made CRLF.
func (c *contentReader) normalize(b []byte) {
	for len(b) > 0 {
		if c.prevCR {
			c.prevCR = false
			if b[0] == '\n' {
				b = b[1:]
				continue
			}
		}
		i := bytes.IndexAny(b, "\r\n")
		if i < 0 {
			c.write(b)
			return
		}
		c.write(b[:i])
		c.write(crlf)
		c.prevCR = b[i] == '\r'
		b = b[i+1:]
	}
}

func (c *contentReader) write(b []byte) {
	if len(b) == 0 {
		return
	}
	_, _ = c.dst.Write(b)
	c.last = b[len(b)-1]
}
