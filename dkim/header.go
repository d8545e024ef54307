package dkim

import (
	"bytes"
	"errors"
	"net/mail"
	"strings"
)

// headerEnd finds the end of the header section as bytes stream past: the
// empty line after the fields (CRLF CRLF, or LF LF as a message from a
// pipe may have).
type headerEnd struct {
	state uint8 // atLineStart, afterCR (a CR at the start of a line), inLine
}

const (
	atLineStart = iota
	afterCR
	inLine
)

// scan returns the index in p just past the empty line that ends the
// header section, or -1 if p does not hold it.
func (e *headerEnd) scan(p []byte) int {
	for i := 0; i < len(p); i++ {
		switch e.state {
		case atLineStart:
			switch p[i] {
			case '\n':
				return i + 1
			case '\r':
				e.state = afterCR
			default:
				e.state = inLine
			}
		case afterCR:
			if p[i] == '\n' {
				return i + 1
			}
			e.state = inLine
		}
		if e.state == inLine {
			j := bytes.IndexByte(p[i:], '\n')
			if j < 0 {
				return -1
			}
			i += j
			e.state = atLineStart
		}
	}
	return -1
}

// field is one header field as the message has it.
type field struct {
	name string // lowercase, without surrounding whitespace
	raw  []byte // the whole field with its line ends
}

// parseFields splits a header section (without the empty line that ends
// it) into fields. A line that starts with whitespace continues the field
// before it; a line without a colon is a field with an empty name, which
// is never signed.
func parseFields(h []byte) []field {
	var fields []field
	for len(h) > 0 {
		end := bytes.IndexByte(h, '\n')
		if end < 0 {
			end = len(h)
		} else {
			end++
		}
		if (h[0] == ' ' || h[0] == '\t') && len(fields) > 0 {
			last := &fields[len(fields)-1]
			last.raw = last.raw[:len(last.raw)+end] // contiguous in h
		} else {
			line := h[:end]
			name := ""
			if c := bytes.IndexByte(line, ':'); c >= 0 {
				name = strings.ToLower(strings.TrimSpace(string(line[:c])))
			}
			fields = append(fields, field{name: name, raw: line[:end:len(h)]})
		}
		h = h[end:]
	}
	return fields
}

// unfold drops the line ends of a folded field.
var unfold = strings.NewReplacer("\r", "", "\n", "")

// errNoFrom is why a message without a usable From field is not signed.
var errNoFrom = errors.New("no From header field with a domain")

// fromDomain returns the domain of the first mailbox of the first From
// field, in lowercase A-labels.
func fromDomain(fields []field) (string, error) {
	for _, f := range fields {
		if f.name != "from" {
			continue
		}
		value := string(f.raw[bytes.IndexByte(f.raw, ':')+1:])
		value = unfold.Replace(value)
		var addr string
		if list, err := (&mail.AddressParser{}).ParseList(value); err == nil && len(list) > 0 {
			addr = list[0].Address
		} else {
			// An encoded word in an unknown charset, or a bad display
			// name: take the angle address, or the whole value.
			addr = strings.TrimSpace(value)
			if l := strings.LastIndexByte(addr, '<'); l >= 0 {
				addr = addr[l+1:]
				if r := strings.IndexByte(addr, '>'); r >= 0 {
					addr = addr[:r]
				}
			}
		}
		at := strings.LastIndexByte(addr, '@')
		if at < 0 {
			return "", errNoFrom
		}
		d, err := normalizeDomain(strings.Trim(addr[at+1:], " \t>"))
		if err != nil {
			return "", errNoFrom
		}
		return d, nil
	}
	return "", errNoFrom
}
