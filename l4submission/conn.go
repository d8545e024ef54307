package l4submission

import (
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/emersion/go-smtp"
)

// connState is what the handler knows of one client connection. It
// outlives go-smtp's sessions, which end at STARTTLS (a new one starts at
// the next EHLO), and is shared by the goroutine that serves the
// connection and the one go-smtp runs BDAT transfers in.
type connState struct {
	// remote is the client's address, without an IPv4-in-IPv6 prefix.
	remote netip.Addr
	// inRelayNetworks says the client's address is in relay_networks.
	inRelayNetworks bool
	start           time.Time
	// conn is the connection go-smtp reads and writes.
	conn *sessionConn

	mu    sync.Mutex
	stats sessionStats
	// broken says the client and the server no longer agree on where
	// commands start: a read failed, or a message's data was not read to
	// its end. Every command is then refused and the connection closed.
	broken bool
}

// sessionStats sum up a connection, for its log line and the metrics.
type sessionStats struct {
	helo, tls, user string
	// queued, deferred and refused count the messages answered 250,
	// 4xx and 5xx at the end of their data.
	queued, deferred, refused int
	// relayDenied counts MAIL commands refused for want of AUTH or of an
	// address in relay_networks.
	relayDenied  int
	authFailures int
	// bytes is the size of the messages received.
	bytes int64
}

func newConnState(h *Handler, conn *sessionConn) *connState {
	cs := &connState{start: time.Now(), conn: conn}
	cs.remote = remoteAddr(conn.RemoteAddr())
	cs.inRelayNetworks = inNetworks(h.relay, cs.remote)
	return cs
}

// remoteAddr returns the IP address of a connection's remote end, without
// an IPv4-in-IPv6 prefix; the zero Addr when it has none.
func remoteAddr(a net.Addr) netip.Addr {
	if ap, err := netip.ParseAddrPort(a.String()); err == nil {
		return ap.Addr().Unmap()
	}
	return netip.Addr{}
}

func (cs *connState) update(f func(*sessionStats)) {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	f(&cs.stats)
}

func (cs *connState) snapshot() sessionStats {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	return cs.stats
}

// markBroken records that the client's stream can no longer be trusted
// to hold commands where they seem to start.
func (cs *connState) markBroken() {
	cs.mu.Lock()
	cs.broken = true
	cs.mu.Unlock()
}

// refusal returns the reply to every command once the connection is
// broken (a 421, after which the connection is closed), or nil while it
// is sound. A read that failed counts: a command line cut short by the
// read timeout is handed to go-smtp as if it were whole, and must not be
// executed.
func (cs *connState) refusal() *smtp.SMTPError {
	readErr := cs.conn.readError()
	cs.mu.Lock()
	broken := cs.broken
	cs.mu.Unlock()
	if readErr == nil && !broken {
		return nil
	}
	cs.conn.closeAfterWrite()
	return brokenReply("", readErr)
}

// brokenReply is the 421 for a connection whose read failed with readErr
// (nil when the stream broke another way), with what, if not empty, says
// what was not received whole.
func brokenReply(what string, readErr error) *smtp.SMTPError {
	why := "the connection is broken"
	var ne net.Error
	if (errors.As(readErr, &ne) && ne.Timeout()) || errors.Is(readErr, errReadTimedOut) {
		why = "timed out waiting for the client"
	}
	msg := why + "; closing the connection"
	if what != "" {
		msg = what + " not received whole (" + why + "); closing the connection"
	}
	return &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 4, 2}, Message: msg}
}

// tlsName names the TLS version of a connection state, "" without TLS.
func tlsName(st tls.ConnectionState, ok bool) string {
	if !ok {
		return ""
	}
	return tls.VersionName(st.Version)
}

// go-smtp serves connections from a net.Listener and has no exported way
// to serve a connection it did not accept. The handler gets exactly one
// connection from layer4, so it gives go-smtp a listener that yields that
// connection once and then blocks until the connection is closed: Serve
// then serves it with go-smtp's own session loop (STARTTLS, pipelining,
// BDAT, timeouts) and returns when it ends.

// sessionConn is the layer4 connection as go-smtp sees it (under TLS,
// after STARTTLS). It tells the listener when go-smtp closes it, and:
//
//   - It can be drained: after drain, every read deadline is in the past,
//     so go-smtp ends the session (421) at its next read instead of
//     waiting for the client.
//   - A read error is final. go-smtp's line reader hands over a command
//     line cut short by a timeout as if it were whole, and then reads on
//     with a new deadline; here every later read fails, so the session
//     ends, and the session refuses the cut command (connState.refusal).
//   - A failed read returns a 421 reply (an *smtp.SMTPError) while a
//     message's data is read, and on every read after the first that
//     failed (but at the end of the stream): go-smtp writes such an error
//     as it is as its reply to a BDAT chunk, which it would otherwise
//     answer with 554, a permanent failure, and between commands it
//     answers it with 421 too. The first failed read between commands
//     returns the error itself: go-smtp answers a timeout with 421 4.4.2.
//   - It can close itself after the next write, so that a 421 is the last
//     thing the client gets: nothing it sent after is read.
type sessionConn struct {
	net.Conn

	closeOnce sync.Once
	closed    chan struct{}

	mu         sync.Mutex
	drained    bool
	readErr    error
	inData     bool
	closeArmed bool
}

// errReadTimedOut marks the 421 that stands for a read that timed out
// while a message's data was read.
var errReadTimedOut = errors.New("read timed out")

func newSessionConn(c net.Conn) *sessionConn {
	return &sessionConn{Conn: c, closed: make(chan struct{})}
}

// Read reads from the connection; see sessionConn for what a failed read
// does.
func (c *sessionConn) Read(b []byte) (int, error) {
	c.mu.Lock()
	prev, inData := c.readErr, c.inData
	if prev != nil && prev != io.EOF {
		c.closeArmed = true
	}
	c.mu.Unlock()
	if prev != nil {
		// Again: the reply go-smtp writes to whatever it was reading.
		if prev != io.EOF {
			return 0, readFailure(prev, inData)
		}
		return 0, prev
	}
	n, err := c.Conn.Read(b)
	if err == nil {
		return n, nil
	}
	c.mu.Lock()
	c.readErr = err
	inData = c.inData
	if inData && err != io.EOF {
		c.closeArmed = true
	}
	c.mu.Unlock()
	// The first time, the error itself (go-smtp answers a timeout between
	// commands with 421 4.4.2 and ends the session), but in a message.
	if inData && err != io.EOF {
		return n, readFailure(err, true)
	}
	return n, err
}

// readFailure is the error a failed read returns when go-smtp may write
// it as a reply: a 421.
func readFailure(err error, inData bool) error {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		err = errReadTimedOut
	}
	if inData {
		return brokenReply("message", err)
	}
	return brokenReply("", err)
}

// readError returns the error the first failed read returned, or nil.
func (c *sessionConn) readError() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.readErr
}

// setInData says whether a message's data is being read.
func (c *sessionConn) setInData(v bool) {
	c.mu.Lock()
	c.inData = v
	c.mu.Unlock()
}

// closeAfterWrite makes the next write the last: the connection is closed
// right after it. go-smtp writes each reply line with one write (through
// one TLS record after STARTTLS), so a one-line reply gets through whole.
func (c *sessionConn) closeAfterWrite() {
	c.mu.Lock()
	c.closeArmed = true
	c.mu.Unlock()
}

// Write writes to the connection, and closes it if closeAfterWrite asked.
func (c *sessionConn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	c.mu.Lock()
	armed := c.closeArmed
	c.mu.Unlock()
	if armed {
		_ = c.Close()
	}
	return n, err
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
