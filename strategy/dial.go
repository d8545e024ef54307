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
}

type dialResult struct {
	conn *Conn
	err  error
}

// DialHost connects to one of h's candidates, in order. With happy
// eyeballs (h.FallbackDelay not Off) the next candidate is started when the
// previous one has not connected within the delay, without stopping it;
// the first connection made wins and the others are closed. A candidate
// that fails (refused, unreachable) starts the next at once. Each attempt
// is bounded by h.ConnectTimeout. The error joins every attempt's
// DialError.
func (d *Dialer) DialHost(ctx context.Context, h *Host) (*Conn, error) {
	if len(h.Candidates) == 0 {
		if h.Err != nil {
			return nil, h.Err
		}
		return nil, fmt.Errorf("host %s: no address to dial", h.Name)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	results := make(chan dialResult, len(h.Candidates))
	next, running := 0, 0
	start := func() {
		c := h.Candidates[next]
		next++
		running++
		go func() {
			conn, err := d.dialCandidate(ctx, c, h.ConnectTimeout)
			results <- dialResult{conn, err}
		}()
	}
	var timer *time.Timer
	var fallback <-chan time.Time
	arm := func() {
		if h.FallbackDelay.IsOff() || next >= len(h.Candidates) {
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
			if r.err == nil {
				cancel()
				go drain(results, running)
				return r.conn, nil
			}
			errs = append(errs, r.err)
			if next < len(h.Candidates) && (running == 0 || !h.FallbackDelay.IsOff()) {
				start()
				arm()
			}
		}
	}
	return nil, fmt.Errorf("host %s: %w", h.Name, errors.Join(errs...))
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
