package l4submission

import (
	"net"
	"sync"
)

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
