package l4submission

import (
	"net"
	"sync"
	"time"
)

// go-smtp serves connections from a net.Listener and has no exported way
// to serve a connection it did not accept. The handler gets exactly one
// connection from layer4, so it gives go-smtp a listener that yields that
// connection once and then blocks until the connection is closed: Serve
// then serves it with go-smtp's own session loop (STARTTLS, pipelining,
// BDAT, timeouts) and returns when it ends.

// sessionConn is the layer4 connection as go-smtp sees it. It tells the
// listener when go-smtp closes it, and it can be drained: after drain, every
// read deadline is in the past, so go-smtp ends the session (421) at its
// next read instead of waiting for the client.
type sessionConn struct {
	net.Conn

	closeOnce sync.Once
	closed    chan struct{}

	mu      sync.Mutex
	drained bool
}

func newSessionConn(c net.Conn) *sessionConn {
	return &sessionConn{Conn: c, closed: make(chan struct{})}
}

// Close closes the connection and wakes the listener.
func (c *sessionConn) Close() error {
	c.closeOnce.Do(func() { close(c.closed) })
	return c.Conn.Close()
}

// SetReadDeadline sets the read deadline, or a past one once drained.
func (c *sessionConn) SetReadDeadline(t time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.drained {
		t = time.Unix(1, 0)
	}
	return c.Conn.SetReadDeadline(t)
}

// SetDeadline sets both deadlines, the read one as SetReadDeadline does.
func (c *sessionConn) SetDeadline(t time.Time) error {
	if err := c.Conn.SetWriteDeadline(t); err != nil {
		return err
	}
	return c.SetReadDeadline(t)
}

// drain makes the session end at its next read: the read in progress, if
// any, times out now.
func (c *sessionConn) drain() {
	c.mu.Lock()
	c.drained = true
	c.mu.Unlock()
	_ = c.SetReadDeadline(time.Time{})
}

// oneConnListener yields its connection once, then blocks in Accept until
// the connection or the listener is closed.
type oneConnListener struct {
	conn    *sessionConn
	pending chan net.Conn

	closeOnce sync.Once
	closed    chan struct{}
}

func newOneConnListener(c *sessionConn) *oneConnListener {
	l := &oneConnListener{conn: c, pending: make(chan net.Conn, 1), closed: make(chan struct{})}
	l.pending <- c
	return l
}

// Accept returns the connection the first time, and net.ErrClosed once
// the connection or the listener is closed.
func (l *oneConnListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.pending:
		return c, nil
	default:
	}
	select {
	case <-l.conn.closed:
	case <-l.closed:
	}
	return nil, net.ErrClosed
}

// Close closes the listener, not the connection.
func (l *oneConnListener) Close() error {
	l.closeOnce.Do(func() { close(l.closed) })
	return nil
}

// Addr returns the connection's local address.
func (l *oneConnListener) Addr() net.Addr { return l.conn.LocalAddr() }

// Interface guards
var (
	_ net.Listener = (*oneConnListener)(nil)
	_ net.Conn     = (*sessionConn)(nil)
)
