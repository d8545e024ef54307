package l4submission

import (
	"bufio"
	"io"
)

// headersNeedUTF8 reports whether the message's header section has
// non-ASCII bytes. A client's SMTPUTF8 parameter says the message may need
// SMTPUTF8; it is passed on as needed only when the headers really have
// UTF-8 (non-ASCII addresses are checked per recipient by the transport),
// so that a plain message from a client that always asks (as Go's
// net/smtp does when offered) still goes to a server without SMTPUTF8, as
// Postfix does.
func headersNeedUTF8(r io.ReaderAt, size int64) bool {
	br := bufio.NewReader(io.NewSectionReader(r, 0, size))
	for {
		line, err := br.ReadSlice('\n')
		if len(line) == 0 || line[0] == '\r' || line[0] == '\n' {
			return false // the end of the header section
		}
		for _, c := range line {
			if c >= 0x80 {
				return true
			}
		}
		if err != nil && err != bufio.ErrBufferFull {
			return false
		}
	}
}
