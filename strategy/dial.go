package strategy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"
	"time"
)

// Conn is a connection a Dialer made, with what it was made from.
type Conn struct {
	net.Conn
	// Candidate is the address dialled.
	Candidate Candidate
	// Source is the local address bound, or the invalid Addr when the
	// kernel chose it.
	Source netip.Addr
	// EHLO is the name to greet with on this connection (the source's own
	// name, or the hostname).
	EHLO string
}

// NetConn returns the connection Conn wraps, as *tls.Conn's method of
// that name does: for a caller that must reach the socket (the transport
// peeks at an idle session's socket to see whether the server said
// anything unasked).
func (c *Conn) NetConn() net.Conn { return c.Conn }

// DialError is one failed connection attempt: to which address, from
// which source, and why.
type DialError struct {
	Addr   netip.AddrPort
	Source netip.Addr // invalid: chosen by the kernel
	Err    error
}

func (e *DialError) Error() string {
	family := "ipv4"
	if e.Addr.Addr().Is6() {
		family = "ipv6"
	}
	from := "any source"
	if e.Source.IsValid() {
		from = e.Source.String()
	}
	return fmt.Sprintf("dial %s (%s) from %s: %v", e.Addr, family, from, e.Err)
}

func (e *DialError) Unwrap() error { return e.Err }

// ErrSourceNotLocal is why a source address could not be bound: the
// machine does not have it (EADDRNOTAVAIL).
var ErrSourceNotLocal = errors.New("source address is not on this machine")

// Dialer connects to a host of a plan.
type Dialer struct {
	// Control, if set, is called on each socket before it connects (as
	// net.Dialer.Control).
	Control func(network, address string, c syscall.RawConn) error
	// Memory remembers the addresses that timed out, to try them last.
	// Default: the process's shared memory (SharedMemory), kept across
	// config reloads: each address for DefaultMemoryTTL (5 minutes), at
	// most DefaultMemorySize (4096) addresses.
	Memory *Memory
}

type dialResult struct {
	conn *Conn
	err  error
	i    int // the candidate's index
}

func (d *Dialer) memory() *Memory {
	if d.Memory != nil {
		return d.Memory
	}
	return sharedMemory
}

// DialHost connects to one of h's candidates, in order, except that the
// candidates the Dialer's Memory holds as slow go last. With happy
// eyeballs (h.FallbackDelay not Off) the next candidate is started when the
// previous one has not connected within the delay, without stopping it;
// the first connection made wins and the others are closed. A candidate
// that fails (refused, unreachable) starts the next at once. Each attempt
// is bounded by h.ConnectTimeout. The error joins every attempt's
// DialError.
//
// The Memory learns from each call: a candidate whose connect timeout
// expired, or that was still pending after the fallback delay when another
// connected, is remembered as slow; the one that connected is forgotten.
func (d *Dialer) DialHost(ctx context.Context, h *Host) (*Conn, error) {
	if len(h.Candidates) == 0 {
		if h.Err != nil {
			return nil, h.Err
		}
		return nil, fmt.Errorf("host %s: no address to dial", h.Name)
	}
	mem := d.memory()
	cands := mem.order(h.Candidates)
	parent := ctx
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	results := make(chan dialResult, len(cands))
	started := make([]time.Time, len(cands))
	pending := make([]bool, len(cands))
	next, running := 0, 0
	start := func() {
		i := next
		next++
		running++
		started[i], pending[i] = time.Now(), true
		go func() {
			conn, err := d.dialCandidate(ctx, cands[i], h.ConnectTimeout)
			results <- dialResult{conn, err, i}
		}()
	}
	var timer *time.Timer
	var fallback <-chan time.Time
	arm := func() {
		if h.FallbackDelay.IsOff() || next >= len(cands) {
			fallback = nil
			return
		}
		if timer == nil {
			timer = time.NewTimer(time.Duration(h.FallbackDelay))
		} else {
			timer.Reset(time.Duration(h.FallbackDelay))
		}
		fallback = timer.C
	}
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()

	var errs []error
	start()
	arm()
	for running > 0 {
		select {
		case <-fallback:
			start()
			arm()
		case r := <-results:
			running--
			pending[r.i] = false
			if r.err == nil {
				cancel()
				go drain(results, running)
				mem.Forget(cands[r.i].Addr)
				if !h.FallbackDelay.IsOff() {
					for i, p := range pending {
						if p && time.Since(started[i]) >= time.Duration(h.FallbackDelay) {
							mem.Remember(cands[i].Addr)
						}
					}
				}
				return r.conn, nil
			}
			if timedOut(r.err) && parent.Err() == nil {
				mem.Remember(cands[r.i].Addr)
			}
			errs = append(errs, r.err)
			if next < len(cands) && (running == 0 || !h.FallbackDelay.IsOff()) {
				start()
				arm()
			}
		}
	}
	return nil, fmt.Errorf("host %s: %w", h.Name, errors.Join(errs...))
}

// timedOut reports whether a connection attempt failed because its
// connect timeout expired.
func timedOut(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// drain closes connections that were made after another one won.
func drain(results <-chan dialResult, n int) {
	for range n {
		if r := <-results; r.conn != nil {
			_ = r.conn.Close()
		}
	}
}

// dialCandidate connects to c from its first source that can be bound.
func (d *Dialer) dialCandidate(ctx context.Context, c Candidate, timeout time.Duration) (*Conn, error) {
	if len(c.Sources) == 0 {
		conn, err := d.dial(ctx, c.Addr, netip.Addr{}, timeout)
		if err != nil {
			return nil, err
		}
		return &Conn{Conn: conn, Candidate: c, EHLO: c.EHLO}, nil
	}
	var errs []error
	for _, src := range c.Sources {
		conn, err := d.dial(ctx, c.Addr, src.Addr, timeout)
		if err == nil {
			return &Conn{Conn: conn, Candidate: c, Source: src.Addr, EHLO: src.EHLO}, nil
		}
		errs = append(errs, err)
		if !errors.Is(err, ErrSourceNotLocal) {
			break
		}
	}
	return nil, errors.Join(errs...)
}

func (d *Dialer) dial(ctx context.Context, addr netip.AddrPort, src netip.Addr, timeout time.Duration) (net.Conn, error) {
	nd := net.Dialer{Timeout: timeout, Control: d.Control}
	network := "tcp4"
	if addr.Addr().Is6() {
		network = "tcp6"
	}
	if src.IsValid() {
		nd.LocalAddr = net.TCPAddrFromAddrPort(netip.AddrPortFrom(src, 0))
	}
	conn, err := nd.DialContext(ctx, network, addr.String())
	if err != nil {
		var op *net.OpError
		if errors.As(err, &op) {
			err = op.Err // the address and source are in the DialError
		}
		if errors.Is(err, syscall.EADDRNOTAVAIL) {
			err = fmt.Errorf("%w: %v", ErrSourceNotLocal, err)
		} else if ne, ok := err.(net.Error); ok && ne.Timeout() {
			err = fmt.Errorf("connect timeout (%s) expired: %w", timeout, err)
		}
		return nil, &DialError{Addr: addr, Source: src, Err: err}
	}
	return conn, nil
}
