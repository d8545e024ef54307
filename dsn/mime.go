package dsn

import (
	"bytes"
	"io"
	"mime"
	"mime/quotedprintable"
	"strings"
	"unicode/utf8"
)

// Line lengths of RFC 5322, section 2.1.1: lines SHOULD be at most 78
// characters and MUST be at most 998, without the CRLF.
const (
	softLine = 78
	hardLine = 998
)

// printer writes header fields and lines with CRLF line ends.
type printer struct {
	w io.Writer
}

func (p *printer) line(s string) {
	_, _ = io.WriteString(p.w, s+"\r\n")
}

// field writes "name: value", folded at spaces to keep lines within 78
// characters where it can and within 998 always (RFC 5322, section 2.2.3).
// A word too long for a line is cut (at a character boundary), the cut
// folded like a space.
func (p *printer) field(name, value string) {
	value = strings.Trim(value, " ")
	var b strings.Builder
	b.WriteString(name)
	b.WriteString(":")
	lineLen, words := len(name)+1, 0
	for _, word := range strings.Split(value, " ") {
		if (words > 0 && word != "" && lineLen+1+len(word) > softLine) || lineLen+1 > hardLine {
			b.WriteString("\r\n") // the space below folds the line
			lineLen, words = 0, 0
		}
		b.WriteString(" ")
		lineLen++
		for lineLen+len(word) > hardLine {
			n := hardLine - lineLen
			for n > 0 && !utf8.RuneStart(word[n]) {
				n--
			}
			b.WriteString(word[:n])
			b.WriteString("\r\n ")
			word = word[n:]
			lineLen = 1
		}
		b.WriteString(word)
		lineLen += len(word)
		words++
	}
	b.WriteString("\r\n")
	_, _ = io.WriteString(p.w, b.String())
}

// encodeSubject returns the Subject's value: as it is when ASCII, else as
// RFC 2047 encoded-words (which fold at the spaces between them).
func encodeSubject(s string) string {
	s = strings.Join(strings.Fields(dropControls(s)), " ")
	if isASCII(s) {
		return s
	}
	return mime.QEncoding.Encode("utf-8", strings.ToValidUTF8(s, "\uFFFD"))
}

// encodeText returns the human-readable part's content, with CRLF line
// ends, and its Content-Transfer-Encoding: 7bit when it is ASCII with no
// line over 998 octets, else quoted-printable (RFC 2045, section 6.7).
func encodeText(text string) (string, string) {
	text = strings.ToValidUTF8(text, "\uFFFD")
	text = strings.ReplaceAll(text, "\r\n", "\n")
	text = strings.ReplaceAll(text, "\r", "\n")
	if !strings.HasSuffix(text, "\n") {
		text += "\n"
	}
	plain := isASCII(text)
	if plain {
		for _, l := range strings.Split(text, "\n") {
			if len(l) > hardLine || strings.ContainsFunc(l, func(r rune) bool { return isControl(r) && r != '\t' }) {
				plain = false
				break
			}
		}
	}
	if plain {
		return strings.ReplaceAll(text, "\n", "\r\n"), "7bit"
	}
	var b bytes.Buffer
	w := quotedprintable.NewWriter(&b)
	_, _ = io.WriteString(w, text)
	_ = w.Close()
	out := b.String()
	if !strings.HasSuffix(out, "\r\n") {
		out += "\r\n"
	}
	return out, "quoted-printable"
}
