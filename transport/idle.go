package transport

import (
	"errors"
	"fmt"
	"net"
	"syscall"
	"time"
)

// A session between commands must have nothing to read: a server speaks
// only when spoken to (RFC 5321, section 4.3). A byte that arrived
// unasked (a 421 before the server closes, or a line meant to be read as
// the reply to the next command) means the replies to come cannot be
// matched to the commands: such a session carries no further message.
//
// There are three places an unasked byte can wait: the socket, the TLS
// layer's buffer (a record that came in the same segment as the last
// reply), and the client's own bufio.Reader. All three are checked,
// without waiting and without consuming anything that matters.

// alive checks, without waiting, that the server has neither closed the
// session nor sent anything unasked since its last reply.
func (c *Client) alive() bool {
	return c.unasked() == nil
}

// errUnasked is what the server did between commands.
var errUnasked = errors.New("the server sent data nobody asked for, or closed the connection")

// unasked returns an error wrapping ErrProtocol when something arrived on
// the session since the last reply, or the server closed it.
func (c *Client) unasked() error {
	if c.broken {
		return errors.New("smtp: session is closed")
	}
	open := peekIdle(socketOf(c.raw))
	if c.tls != nil {
		// The socket's bytes are TLS records: let TLS read what came (a
		// late session ticket is no message), for a moment if the socket
		// has some; what TLS already holds, at once.
		wait := time.Duration(0)
		if !open {
			wait = 5 * time.Millisecond
		}
		open = !c.tlsPending(wait)
	}
	if err := c.unaskedBuffered(PhaseMailFrom); err != nil {
		return err
	}
	if !open {
		return &Error{Phase: PhaseMailFrom, Err: fmt.Errorf("%w: %w, before the command was sent", ErrProtocol, errUnasked)}
	}
	return nil
}

// unaskedBuffered returns an error wrapping ErrProtocol, naming phase p,
// when the session's reader holds bytes no command asked for. Checked
// before every command, it costs nothing: no system call.
func (c *Client) unaskedBuffered(p Phase) error {
	n := c.br.Buffered()
	if n == 0 {
		return nil
	}
	b, _ := c.br.Peek(min(n, 64))
	return &Error{Phase: p, Err: fmt.Errorf("%w: the server sent %q before the command was sent", ErrProtocol, b)}
}

// tlsPending reports whether the TLS layer holds application data nobody
// has taken (a record that came in the same segment as the last reply, or
// that arrived within wait), or saw the connection end. With wait 0, the
// read has a deadline already passed: it returns what TLS holds without
// reading the socket. A timeout leaves a TLS connection usable (it is a
// temporary error to crypto/tls), and what is read stays in c.br.
func (c *Client) tlsPending(wait time.Duration) bool {
	d := time.Unix(1, 0)
	if wait > 0 {
		d = time.Now().Add(wait)
	}
	_ = c.conn.SetReadDeadline(d)
	_, err := c.br.Peek(1)
	_ = c.conn.SetReadDeadline(time.Time{})
	var ne net.Error
	return !errors.As(err, &ne) || !ne.Timeout()
}

// socketOf finds the socket under conn, through wrappers that say what
// they wrap with a NetConn method (*tls.Conn, *strategy.Conn), or nil.
func socketOf(conn net.Conn) syscall.Conn {
	for range 8 {
		if sc, ok := conn.(syscall.Conn); ok {
			return sc
		}
		w, ok := conn.(interface{ NetConn() net.Conn })
		if !ok {
			return nil
		}
		conn = w.NetConn()
	}
	return nil
}
