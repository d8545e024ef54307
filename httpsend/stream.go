package httpsend

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime/quotedprintable"
	"os"
	"unicode/utf16"
	"unicode/utf8"

	"golang.org/x/sys/unix"
)

// The JSON form is read as a stream, so that a large text costs no more
// memory than a small one: encoding/json would hold the whole text, and
// its request body, in memory. The small fields are read whole (at most
// maxSmallFields bytes together) and decoded with encoding/json; the text
// is decoded as it arrives into a file that has no name (O_TMPFILE: the
// kernel frees it when it is closed, a crash included, so nothing is left
// behind), noting what its encoding must be, and read back from there
// into the queue.

// maxSmallFields bounds the fields of the form other than text.
const maxSmallFields = 1 << 20

// streamedForm is a JSON form read as a stream.
type streamedForm struct {
	form
	// text is the decoded text, in a nameless file; textLen its length.
	text    *os.File
	textLen int64
	// stats says what the text needs: line ends, long lines, 8-bit.
	stats textStats
}

// Close releases the text's file.
func (f *streamedForm) Close() error {
	if f.text != nil {
		return f.text.Close()
	}
	return nil
}

// textStats is what the text's encoding depends on.
type textStats struct {
	line     int   // the line being read, from 1
	lineLen  int   // its length so far
	long     bool  // a line over MaxLineLength
	nonASCII bool  // a byte over 0x7f
	badAt    int   // the line of a NUL or lone CR, 0 if none
	badChar  byte  // that character
	cr       bool  // the last byte was CR
	size     int64 // bytes decoded
}

func (s *textStats) add(p []byte) {
	for _, c := range p {
		s.size++
		if s.cr {
			s.cr = false
			if c != '\n' && s.badAt == 0 {
				s.badAt, s.badChar = s.line, '\r'
			}
		}
		switch c {
		case '\n':
			s.line, s.lineLen = s.line+1, 0
			continue
		case '\r':
			s.cr = true
			continue
		case 0:
			if s.badAt == 0 {
				s.badAt, s.badChar = s.line, 0
			}
		}
		if c >= 0x80 {
			s.nonASCII = true
		}
		s.lineLen++
		if s.lineLen > MaxLineLength {
			s.long = true
		}
	}
}

// readForm reads a JSON form from r, at most max bytes of text.
func readForm(r io.Reader, max int64) (*streamedForm, error) {
	sc := &jsonScanner{r: bufio.NewReaderSize(r, 32<<10)}
	f := &streamedForm{stats: textStats{line: 1}}
	ok := false
	defer func() {
		if !ok {
			_ = f.Close()
		}
	}()
	if err := sc.expect('{'); err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	small := 0
	for first := true; ; first = false {
		c, err := sc.next()
		if err != nil {
			return nil, err
		}
		if c == '}' && first {
			break
		}
		if !first {
			if c == '}' {
				break
			}
			if c != ',' {
				return nil, sc.errorf("want , or } after a field, not %q", c)
			}
			if c, err = sc.next(); err != nil {
				return nil, err
			}
		}
		if c != '"' {
			return nil, sc.errorf("want a field name, not %q", c)
		}
		var name bytes.Buffer
		if err := sc.readString(&limitedBuffer{b: &name, max: 64}, nil); err != nil {
			return nil, err
		}
		key := name.String()
		if seen[key] {
			return nil, sc.errorf("field %q is given twice", key)
		}
		seen[key] = true
		if err := sc.expect(':'); err != nil {
			return nil, err
		}
		switch key {
		case "text":
			if c, err = sc.next(); err != nil {
				return nil, err
			}
			if c == 'n' {
				if err := sc.literal("ull"); err != nil {
					return nil, err
				}
				continue
			}
			if c != '"' {
				return nil, sc.errorf("text: want a string")
			}
			if f.text, err = namelessFile(); err != nil {
				return nil, fmt.Errorf("a file for the text: %w", err)
			}
			w := &textWriter{w: bufio.NewWriterSize(f.text, 32<<10), stats: &f.stats, max: max}
			if err := sc.readString(w, nil); err != nil {
				return nil, err
			}
			if err := w.w.Flush(); err != nil {
				return nil, fmt.Errorf("writing the text: %w", err)
			}
			f.textLen = f.stats.size
		case "from", "to", "subject", "headers", "notify", "ret", "envid":
			var raw bytes.Buffer
			if err := sc.copyValue(&limitedBuffer{b: &raw, max: maxSmallFields - small}); err != nil {
				return nil, err
			}
			small += raw.Len()
			var target any
			switch key {
			case "from":
				target = &f.From
			case "to":
				target = &f.To
			case "subject":
				target = &f.Subject
			case "notify":
				target = &f.Notify
			case "ret":
				target = &f.Ret
			case "envid":
				target = &f.EnvID
			default:
				target = &f.Headers
			}
			if err := json.Unmarshal(raw.Bytes(), target); err != nil {
				return nil, badRequest("json form: %s: %v", key, trimJSONError(err))
			}
		default:
			return nil, badRequest("json form: unknown field %q", key)
		}
	}
	if c, err := sc.next(); err != io.EOF {
		if err == nil {
			return nil, sc.errorf("%q after the form", c)
		}
		return nil, err
	}
	if f.text != nil {
		if _, err := f.text.Seek(0, io.SeekStart); err != nil {
			return nil, err
		}
	}
	ok = true
	return f, nil
}

func trimJSONError(err error) string {
	s := err.Error()
	if len(s) > 5 && s[:5] == "json:" {
		return s[6:]
	}
	return s
}

// namelessFile opens a file with no name in the temporary folder
// (O_TMPFILE), or, where the file system cannot, one whose name is removed
// at once.
func namelessFile() (*os.File, error) {
	dir := os.TempDir()
	fd, err := unix.Open(dir, unix.O_TMPFILE|unix.O_RDWR|unix.O_CLOEXEC, 0o600)
	if err == nil {
		return os.NewFile(uintptr(fd), dir+"/(text of a form)"), nil
	}
	f, err := os.CreateTemp(dir, "caddy-smtp-form-")
	if err != nil {
		return nil, err
	}
	_ = os.Remove(f.Name())
	return f, nil
}

// textWriter takes the decoded text, noting its stats, up to max bytes.
type textWriter struct {
	w     *bufio.Writer
	stats *textStats
	max   int64
}

var errTooLarge = errors.New("too large")

func (t *textWriter) Write(p []byte) (int, error) {
	if t.stats.size+int64(len(p)) > t.max {
		return 0, errTooLarge
	}
	t.stats.add(p)
	return t.w.Write(p)
}

// limitedBuffer is a buffer that refuses to grow past max.
type limitedBuffer struct {
	b   *bytes.Buffer
	max int
}

func (l *limitedBuffer) Write(p []byte) (int, error) {
	if l.b.Len()+len(p) > l.max {
		return 0, errTooLarge
	}
	return l.b.Write(p)
}

// jsonScanner reads JSON tokens from a stream, just enough for the form.
type jsonScanner struct {
	r   *bufio.Reader
	off int64
}

func (s *jsonScanner) errorf(format string, args ...any) error {
	return badRequest("json form: at byte %d: %s", s.off, fmt.Sprintf(format, args...))
}

func (s *jsonScanner) readByte() (byte, error) {
	c, err := s.r.ReadByte()
	if err == nil {
		s.off++
		return c, nil
	}
	if err == io.EOF {
		return 0, io.EOF
	}
	return 0, &readError{err: err}
}

// readError is a failure to read the request, not a fault of its JSON.
type readError struct{ err error }

func (e *readError) Error() string { return "reading the request: " + e.err.Error() }
func (e *readError) Unwrap() error { return e.err }

// next returns the next byte that is not white space.
func (s *jsonScanner) next() (byte, error) {
	for {
		c, err := s.readByte()
		if err != nil {
			return 0, err
		}
		switch c {
		case ' ', '\t', '\r', '\n':
			continue
		}
		return c, nil
	}
}

func (s *jsonScanner) expect(want byte) error {
	c, err := s.next()
	if err == io.EOF {
		return badRequest("json form: the form ends early")
	}
	if err != nil {
		return err
	}
	if c != want {
		return s.errorf("want %q, not %q", want, c)
	}
	return nil
}

func (s *jsonScanner) literal(rest string) error {
	for i := 0; i < len(rest); i++ {
		c, err := s.readByte()
		if err != nil || c != rest[i] {
			return s.errorf("not a JSON value")
		}
	}
	return nil
}

// readString decodes a JSON string whose opening quote was read into w;
// raw, if set, gets the string's bytes as they were (escapes and closing
// quote included).
func (s *jsonScanner) readString(w io.Writer, raw io.Writer) error {
	var buf [utf8.UTFMax * 64]byte
	out := buf[:0]
	flush := func() error {
		if len(out) == 0 {
			return nil
		}
		_, err := w.Write(out)
		out = buf[:0]
		return err
	}
	put := func(p ...byte) error {
		if len(out)+len(p) > len(buf) {
			if err := flush(); err != nil {
				return err
			}
		}
		out = append(out, p...)
		return nil
	}
	rawByte := func(c byte) {
		if raw != nil {
			_, _ = raw.Write([]byte{c})
		}
	}
	var pending rune = -1 // a high surrogate waiting for its pair
	for {
		c, err := s.readByte()
		if err == io.EOF {
			return badRequest("json form: a string does not end")
		}
		if err != nil {
			return err
		}
		rawByte(c)
		if pending >= 0 && c != '\\' {
			if err := put([]byte(string(utf8.RuneError))...); err != nil {
				return s.writeError(err)
			}
			pending = -1
		}
		switch {
		case c == '"':
			if pending >= 0 {
				if err := put([]byte(string(utf8.RuneError))...); err != nil {
					return s.writeError(err)
				}
			}
			return s.writeError(flush())
		case c < 0x20:
			return s.errorf("a control character in a string (escape it)")
		case c != '\\':
			if err := put(c); err != nil {
				return s.writeError(err)
			}
			continue
		}
		e, err := s.readByte()
		if err != nil {
			return badRequest("json form: a string does not end")
		}
		rawByte(e)
		var dec byte
		switch e {
		case '"', '\\', '/':
			dec = e
		case 'b':
			dec = '\b'
		case 'f':
			dec = '\f'
		case 'n':
			dec = '\n'
		case 'r':
			dec = '\r'
		case 't':
			dec = '\t'
		case 'u':
			var hex [4]byte
			for i := range hex {
				if hex[i], err = s.readByte(); err != nil {
					return badRequest("json form: a string does not end")
				}
				rawByte(hex[i])
			}
			var v rune
			for _, h := range hex {
				v <<= 4
				switch {
				case h >= '0' && h <= '9':
					v |= rune(h - '0')
				case h >= 'a' && h <= 'f':
					v |= rune(h-'a') + 10
				case h >= 'A' && h <= 'F':
					v |= rune(h-'A') + 10
				default:
					return s.errorf("a bad \\u escape")
				}
			}
			switch {
			case pending >= 0 && utf16.IsSurrogate(v) && v >= 0xdc00:
				v = utf16.DecodeRune(pending, v)
				pending = -1
			case pending >= 0:
				if err := put([]byte(string(utf8.RuneError))...); err != nil {
					return s.writeError(err)
				}
				pending = -1
			}
			if utf16.IsSurrogate(v) && v < 0xdc00 {
				pending = v
				continue
			}
			if utf16.IsSurrogate(v) {
				v = utf8.RuneError
			}
			if err := put([]byte(string(v))...); err != nil {
				return s.writeError(err)
			}
			continue
		default:
			return s.errorf("a bad escape \\%c", e)
		}
		if pending >= 0 {
			if err := put([]byte(string(utf8.RuneError))...); err != nil {
				return s.writeError(err)
			}
			pending = -1
		}
		if err := put(dec); err != nil {
			return s.writeError(err)
		}
	}
}

// writeError turns a write that failed into the request's error.
func (s *jsonScanner) writeError(err error) error {
	if errors.Is(err, errTooLarge) {
		return err
	}
	return err
}

// copyValue copies one JSON value (of any kind) as it is into w.
func (s *jsonScanner) copyValue(w io.Writer) error {
	c, err := s.next()
	if err == io.EOF {
		return badRequest("json form: the form ends early")
	}
	if err != nil {
		return err
	}
	write := func(b byte) error {
		_, err := w.Write([]byte{b})
		return err
	}
	if err := write(c); err != nil {
		return err
	}
	switch c {
	case '"':
		return s.readString(io.Discard, w)
	case '{', '[':
		depth := 1
		for depth > 0 {
			c, err := s.readByte()
			if err == io.EOF {
				return badRequest("json form: the form ends early")
			}
			if err != nil {
				return err
			}
			if err := write(c); err != nil {
				return err
			}
			switch c {
			case '"':
				if err := s.readString(io.Discard, w); err != nil {
					return err
				}
			case '{', '[':
				depth++
			case '}', ']':
				depth--
			}
		}
		return nil
	}
	// A number, true, false or null: up to the next delimiter.
	for {
		b, err := s.r.Peek(1)
		if err != nil || bytes.ContainsAny(b, ",}] \t\r\n") {
			return nil
		}
		c, _ := s.readByte()
		if err := write(c); err != nil {
			return err
		}
	}
}

// body returns the message body the text makes, with CRLF line ends, and
// its Content-Transfer-Encoding: 7bit, or quoted-printable when the text is
// not ASCII or has a line over MaxLineLength octets. The body is read from
// the text's file as it is sent.
func (f *streamedForm) body() (io.Reader, string, error) {
	if f.stats.badAt > 0 {
		return nil, "", badRequest("text: %s on line %d: NUL, and CR but before LF, are not allowed",
			charName(f.stats.badChar), f.stats.badAt)
	}
	if f.text == nil {
		return bytes.NewReader(nil), "7bit", nil
	}
	src := bufio.NewReaderSize(io.LimitReader(f.text, f.textLen), 32<<10)
	if !f.stats.long && !f.stats.nonASCII {
		return &crlfReader{r: src}, "7bit", nil
	}
	pr, pw := io.Pipe()
	go func() {
		qp := quotedprintable.NewWriter(pw)
		// The text's line ends: LF (a CR before it is dropped, as the
		// writer ends lines with CRLF itself).
		_, err := io.Copy(qp, &dropCRBeforeLF{r: src})
		if err == nil {
			err = qp.Close()
		}
		pw.CloseWithError(err)
	}()
	return pr, "quoted-printable", nil
}

// crlfReader turns LF, and CRLF, into CRLF.
type crlfReader struct {
	r       *bufio.Reader
	pending []byte
	prevCR  bool
}

func (c *crlfReader) Read(p []byte) (int, error) {
	n := 0
	for n < len(p) {
		if len(c.pending) > 0 {
			k := copy(p[n:], c.pending)
			c.pending = c.pending[k:]
			n += k
			continue
		}
		b, err := c.r.ReadByte()
		if err != nil {
			if n > 0 {
				return n, nil
			}
			return 0, err
		}
		switch {
		case b == '\n' && !c.prevCR:
			c.pending = []byte{'\r', '\n'}
		default:
			p[n] = b
			n++
		}
		c.prevCR = b == '\r'
	}
	return n, nil
}

// dropCRBeforeLF passes its input without the CR of each CRLF.
type dropCRBeforeLF struct {
	r      *bufio.Reader
	heldCR bool
}

func (d *dropCRBeforeLF) Read(p []byte) (int, error) {
	n := 0
	for n < len(p) {
		b, err := d.r.ReadByte()
		if err != nil {
			if d.heldCR {
				d.heldCR = false
				p[n] = '\r'
				n++
				continue
			}
			if n > 0 {
				return n, nil
			}
			return 0, err
		}
		if d.heldCR {
			d.heldCR = false
			if b != '\n' {
				p[n] = '\r'
				n++
				if n == len(p) {
					_ = d.r.UnreadByte()
					return n, nil
				}
			}
		}
		if b == '\r' {
			d.heldCR = true
			continue
		}
		p[n] = b
		n++
	}
	return n, nil
}
