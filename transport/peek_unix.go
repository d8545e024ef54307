//go:build unix

package transport

import (
	"errors"
	"syscall"
)

// peekIdle reports whether an idle connection is still open with nothing
// unread: a non-blocking peek at the socket (MSG_PEEK|MSG_DONTWAIT), which
// neither waits nor consumes anything. A connection whose socket could not
// be found (nil: a wrapper without a NetConn method) is taken as open.
func peekIdle(sc syscall.Conn) bool {
	if sc == nil {
		return true
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	var (
		rerr error
		buf  [1]byte
	)
	err = raw.Read(func(fd uintptr) bool {
		_, _, rerr = syscall.Recvfrom(int(fd), buf[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		return true // never wait
	})
	if err != nil {
		return false
	}
	// EAGAIN: open, nothing to read. n == 0: the server closed. n > 0:
	// the server said something nobody asked for.
	if rerr == nil {
		return false
	}
	return errors.Is(rerr, syscall.EAGAIN) || errors.Is(rerr, syscall.EWOULDBLOCK)
}
