package l4submission

import (
	"bytes"
	"fmt"
	"io"
	"os"
)

// spoolMemory is how much of a message is held in memory: a larger
// message moves to a temporary file, so that concurrent sessions with
// large messages cannot exhaust memory.
const spoolMemory = 1 << 20

// spool holds a message while it is delivered: in memory up to
// spoolMemory bytes, in a file of the system's temporary directory beyond.
// It notes whether the message has 8-bit bytes.
type spool struct {
	mem      bytes.Buffer
	file     *os.File
	size     int64
	eightBit bool
}

// Write appends p to the message.
func (s *spool) Write(p []byte) (int, error) {
	if !s.eightBit {
		for _, b := range p {
			if b >= 0x80 {
				s.eightBit = true
				break
			}
		}
	}
	if s.file == nil && int64(s.mem.Len())+int64(len(p)) > spoolMemory {
		f, err := os.CreateTemp("", "caddy-smtp-submission-*")
		if err != nil {
			return 0, fmt.Errorf("spooling the message: %w", err)
		}
		s.file = f
		if _, err := f.Write(s.mem.Bytes()); err != nil {
			return 0, fmt.Errorf("spooling the message: %w", err)
		}
		s.mem = bytes.Buffer{}
	}
	var n int
	var err error
	if s.file != nil {
		n, err = s.file.Write(p)
		if err != nil {
			err = fmt.Errorf("spooling the message: %w", err)
		}
	} else {
		n, err = s.mem.Write(p)
	}
	s.size += int64(n)
	return n, err
}

// ReaderAt returns the message for reading.
func (s *spool) ReaderAt() io.ReaderAt {
	if s.file != nil {
		return s.file
	}
	return bytes.NewReader(s.mem.Bytes())
}

// Size returns the message's length.
func (s *spool) Size() int64 { return s.size }

// Close releases the message: it removes the file, if there is one.
func (s *spool) Close() error {
	s.mem = bytes.Buffer{}
	if s.file == nil {
		return nil
	}
	name := s.file.Name()
	err := s.file.Close()
	if rerr := os.Remove(name); err == nil {
		err = rerr
	}
	s.file = nil
	return err
}
