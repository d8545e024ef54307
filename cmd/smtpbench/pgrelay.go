package main

import (
	"errors"
	"io"
	"net"
	"sync"
	"time"
)

// pgRelay is a TCP relay between Caddy and PostgreSQL (-pg-relay) that
// counts what passes: the bytes each way, and the bursts of each side (a
// burst is what one side sends before the other answers: a client burst
// is one request, so their count is the round trips). It adds a hop to
// every round trip and CPU to this command, so the rows measured through
// it are slower: it is there to check the kernel's counts, which the
// table takes without a relay.
type pgRelay struct {
	ln     net.Listener
	target string
	wg     sync.WaitGroup

	mu    sync.Mutex
	conns map[net.Conn]struct{}
	total relayCounts
}

// relayCounts are the relay's totals since it started.
type relayCounts struct {
	toServer, fromServer       int64 // bytes
	clientBursts, serverBursts int64
	connections                int64
}

func (c relayCounts) sub(o relayCounts) relayCounts {
	return relayCounts{c.toServer - o.toServer, c.fromServer - o.fromServer, c.clientBursts - o.clientBursts,
		c.serverBursts - o.serverBursts, c.connections - o.connections}
}

// startRelay listens on a fresh loopback port and relays each connection
// to target.
func startPGRelay(target string) (*pgRelay, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp4", hostPort(port))
	if err != nil {
		return nil, err
	}
	r := &pgRelay{ln: ln, target: target, conns: map[net.Conn]struct{}{}}
	r.wg.Add(1)
	go r.serve()
	return r, nil
}

func (r *pgRelay) port() int { return r.ln.Addr().(*net.TCPAddr).Port }

func (r *pgRelay) serve() {
	defer r.wg.Done()
	for {
		c, err := r.ln.Accept()
		if err != nil {
			return
		}
		s, err := net.DialTimeout("tcp", r.target, 10*time.Second)
		if err != nil {
			_ = c.Close()
			continue
		}
		r.mu.Lock()
		r.conns[c], r.conns[s] = struct{}{}, struct{}{}
		r.total.connections++
		r.mu.Unlock()
		// last is the side that sent last (0 none, 1 client, 2 server),
		// shared by both directions of the connection: a request's answer
		// cannot be read before the request was, so the order is right.
		var last int
		pipe := func(dst, src net.Conn, side int) {
			defer r.wg.Done()
			buf := make([]byte, 64<<10)
			for {
				n, err := src.Read(buf)
				if n > 0 {
					r.mu.Lock()
					if last != side {
						last = side
						if side == 1 {
							r.total.clientBursts++
						} else {
							r.total.serverBursts++
						}
					}
					if side == 1 {
						r.total.toServer += int64(n)
					} else {
						r.total.fromServer += int64(n)
					}
					r.mu.Unlock()
					if _, werr := dst.Write(buf[:n]); werr != nil {
						err = werr
					}
				}
				if err != nil {
					if !errors.Is(err, io.EOF) {
						_ = src.Close()
					}
					_ = dst.Close()
					r.mu.Lock()
					delete(r.conns, src)
					delete(r.conns, dst)
					r.mu.Unlock()
					return
				}
			}
		}
		r.wg.Add(2)
		go pipe(s, c, 1)
		go pipe(c, s, 2)
	}
}

// counts returns the totals so far.
func (r *pgRelay) counts() relayCounts {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.total
}

// close stops the relay and its connections, and waits for them.
func (r *pgRelay) close() {
	_ = r.ln.Close()
	r.mu.Lock()
	for c := range r.conns {
		_ = c.Close()
	}
	r.mu.Unlock()
	done := make(chan struct{})
	go func() { r.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		progress("pg relay: connections still open 10 s after closing")
	}
}
