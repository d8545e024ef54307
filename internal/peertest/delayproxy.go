package peertest

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"
)

// delayQueueLen is how many chunks each direction of a proxied connection
// holds in flight. With more than that read within one Delay, the reader
// waits for the writer, and later chunks are delayed by more than Delay;
// at 32 KiB per read that takes 32 MiB in flight in one direction.
const delayQueueLen = 1024

// delayReadSize is the largest chunk read at once.
const delayReadSize = 32 << 10

// DelayProxy is a TCP proxy on 127.0.0.1 that models a network link with
// latency, for tests that count or time round trips (PIPELINING, CHUNKING,
// connection reuse). It forwards every accepted connection to Target and
// delivers every chunk of data, in each direction, Delay after the proxy
// read it: one-way latency, so that a request and its reply cost 2*Delay.
//
// Chunks are pipelined, as on a real link: a chunk read at time T is
// written at T+Delay whatever came before it, so two chunks sent back to
// back arrive back to back, Delay late, not 2*Delay. Order is kept within
// each direction. Bandwidth is not limited.
//
// Only data is delayed: connecting (the TCP handshake, which costs a round
// trip on a real link) returns at once, and the connection to Target is
// made when the client's connection is accepted. A close is passed on in
// order: when one side ends its data (EOF), the other side's write half is
// closed (TCP half-close) once everything before it has been delivered,
// Delay late; when both directions have ended, or a side resets or fails,
// both connections are closed.
//
// Its exported fields are for reading only.
type DelayProxy struct {
	// Addr is the proxy's listening address, "127.0.0.1:PORT".
	Addr string
	// Target is where every connection is forwarded to.
	Target string
	// Delay is the one-way latency added to every chunk.
	Delay time.Duration

	t      testing.TB
	ln     net.Listener
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu     sync.Mutex
	closed bool
	open   map[*delayConn]struct{}
	conns  int
	turns  int
}

// StartDelayProxy starts a DelayProxy on a free port of 127.0.0.1 that
// forwards to target, an IP literal of a loopback address with a port
// ("127.0.0.1:2525", "[::1]:2525"; host names are refused, so that no
// lookup or other address can be involved). It is stopped when the test
// ends: the listener and every proxied connection are closed, and every
// goroutine is waited for (at most 5 s).
func StartDelayProxy(t testing.TB, target string, delay time.Duration) *DelayProxy {
	t.Helper()
	host, _, err := net.SplitHostPort(target)
	if err != nil {
		t.Fatalf("peertest: delay proxy target %q: %v", target, err)
	}
	if ip, err := netip.ParseAddr(host); err != nil || !ip.IsLoopback() {
		t.Fatalf("peertest: delay proxy target %q: want a loopback IP address (127.0.0.0/8 or ::1) and a port", target)
	}
	if delay < 0 {
		t.Fatalf("peertest: delay proxy: negative delay %v", delay)
	}
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("peertest: delay proxy: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := &DelayProxy{
		Addr:   ln.Addr().String(),
		Target: target,
		Delay:  delay,
		t:      t,
		ln:     ln,
		ctx:    ctx,
		cancel: cancel,
		open:   map[*delayConn]struct{}{},
	}
	p.wg.Add(1)
	go p.acceptLoop()
	t.Cleanup(func() { p.close(t) })
	return p
}

// Conns returns the number of connections accepted since the start or the
// last ResetCounters.
func (p *DelayProxy) Conns() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.conns
}

// Turns returns the number of turns since the start or the last
// ResetCounters, summed over all proxied connections.
//
// A turn is counted each time, on one connection, the proxy reads data
// from the client after the last data it read on that connection came
// from the server: each time the direction of data switches from
// server->client to client->server. For a protocol where the server
// speaks first, such as SMTP, the client's EHLO after the greeting is
// turn 1, and each later command (or pipelined group of commands) sent
// after a reply is one more. For a protocol where the client speaks
// first, its first request is not a turn. Several chunks in a row in one
// direction are one burst, however TCP splits them; closing (EOF) is not
// data. The proxy does not look into the data: the flights of a TLS
// handshake (after STARTTLS, or with implicit TLS) count like any other.
// Every turn costs at least 2*Delay of waiting for a reply.
func (p *DelayProxy) Turns() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.turns
}

// ResetCounters sets Conns and Turns to zero. Connections that are open
// stay open and keep their last direction: a client that speaks after a
// reply read before the reset counts a turn.
func (p *DelayProxy) ResetCounters() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.conns, p.turns = 0, 0
}

// acceptLoop accepts connections until the listener is closed.
func (p *DelayProxy) acceptLoop() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			if p.ctx.Err() == nil && !errors.Is(err, net.ErrClosed) {
				p.t.Errorf("peertest: delay proxy %s: accept: %v", p.Addr, err)
			}
			return
		}
		dc := &delayConn{p: p, client: c, kill: make(chan struct{})}
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			_ = c.Close()
			return
		}
		p.conns++
		p.open[dc] = struct{}{}
		p.wg.Add(1)
		p.mu.Unlock()
		go dc.run()
	}
}

// close stops the proxy; it is the proxy's t.Cleanup.
func (p *DelayProxy) close(t testing.TB) {
	p.mu.Lock()
	p.closed = true
	conns := make([]*delayConn, 0, len(p.open))
	for c := range p.open {
		conns = append(conns, c)
	}
	p.mu.Unlock()
	p.cancel()
	_ = p.ln.Close()
	for _, c := range conns {
		c.closeBoth()
	}
	done := make(chan struct{})
	go func() {
		p.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Errorf("peertest: delay proxy %s: goroutines still running 5 s after close", p.Addr)
	}
}

// direction is which way data flows on a proxied connection.
type direction int

const (
	noData direction = iota
	clientToServer
	serverToClient
)

// delayChunk is data read at one time, to be written at another, or, with
// end set, the end of a direction (err is io.EOF for an orderly close).
type delayChunk struct {
	at   time.Time
	data []byte
	end  bool
	err  error
}

// delayConn is one proxied connection.
type delayConn struct {
	p      *DelayProxy
	client net.Conn

	killOnce sync.Once
	kill     chan struct{} // closed by closeBoth

	mu     sync.Mutex
	server net.Conn  // nil until dialled
	last   direction // direction of the last data read
	ended  int       // directions whose EOF has been passed on
}

// run dials the target and starts both directions; it returns when both
// have ended.
func (c *delayConn) run() {
	defer c.p.wg.Done()
	defer func() {
		c.p.mu.Lock()
		delete(c.p.open, c)
		c.p.mu.Unlock()
	}()
	d := net.Dialer{Timeout: 5 * time.Second}
	s, err := d.DialContext(c.p.ctx, "tcp", c.p.Target)
	if err != nil {
		if c.p.ctx.Err() == nil {
			c.p.t.Logf("peertest: delay proxy %s: dialing %s: %v", c.p.Addr, c.p.Target, err)
		}
		_ = c.client.Close()
		return
	}
	// A close by the proxy's cleanup may have come before the dial
	// ended: it found no server connection to close.
	c.mu.Lock()
	select {
	case <-c.kill:
		c.mu.Unlock()
		_ = s.Close()
		return
	default:
	}
	c.server = s
	c.mu.Unlock()
	var wg sync.WaitGroup
	for _, dir := range []direction{clientToServer, serverToClient} {
		src, dst := c.client, s
		if dir == serverToClient {
			src, dst = s, c.client
		}
		q := make(chan delayChunk, delayQueueLen)
		wg.Add(2)
		go func() { defer wg.Done(); c.read(src, q, dir) }()
		go func() { defer wg.Done(); c.write(dst, q, dir) }()
	}
	wg.Wait()
	c.closeBoth()
}

// read reads src until it fails, queueing each chunk with the time it is
// due, then the end. It counts turns. It never blocks on a full queue
// once the connection is being closed.
func (c *delayConn) read(src net.Conn, q chan<- delayChunk, dir direction) {
	defer close(q)
	buf := make([]byte, delayReadSize)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			now := time.Now()
			c.noteData(dir)
			chunk := delayChunk{at: now.Add(c.p.Delay), data: append([]byte(nil), buf[:n]...)}
			select {
			case q <- chunk:
			case <-c.kill:
				return
			}
		}
		if err != nil {
			select {
			case q <- delayChunk{at: time.Now().Add(c.p.Delay), end: true, err: err}:
			case <-c.kill:
			}
			return
		}
	}
}

// noteData records that data was read in direction dir and counts a turn
// when the client speaks after the server.
func (c *delayConn) noteData(dir direction) {
	c.mu.Lock()
	turn := dir == clientToServer && c.last == serverToClient
	c.last = dir
	c.mu.Unlock()
	if turn {
		c.p.mu.Lock()
		c.p.turns++
		c.p.mu.Unlock()
	}
}

// write writes each chunk to dst when it is due. At an orderly end it
// closes dst's write half, and both connections once both directions have
// ended; at any error it closes both at once. It returns when q is closed
// or the connection is being closed.
func (c *delayConn) write(dst net.Conn, q <-chan delayChunk, dir direction) {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for chunk := range q {
		if wait := time.Until(chunk.at); wait > 0 {
			timer.Reset(wait)
			select {
			case <-timer.C:
			case <-c.kill:
				return
			}
		}
		if chunk.end {
			if !errors.Is(chunk.err, io.EOF) {
				// A reset or our own close: pass on as a close.
				c.closeBoth()
				return
			}
			c.mu.Lock()
			c.ended++
			both := c.ended == 2
			c.mu.Unlock()
			if both {
				c.closeBoth()
				return
			}
			if tc, ok := dst.(*net.TCPConn); ok {
				_ = tc.CloseWrite()
			} else {
				c.closeBoth()
			}
			return
		}
		if _, err := dst.Write(chunk.data); err != nil {
			c.closeBoth()
			return
		}
	}
}

// closeBoth closes both connections, once; readers and writers of the
// connection then end.
func (c *delayConn) closeBoth() {
	c.killOnce.Do(func() {
		close(c.kill)
		_ = c.client.Close()
		c.mu.Lock()
		s := c.server
		c.mu.Unlock()
		if s != nil {
			_ = s.Close()
		}
	})
}
