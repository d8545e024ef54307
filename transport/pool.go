package transport

import (
	"context"
	"encoding/json"
	"errors"
	"net/netip"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
)

// Key says which sessions can carry each other's messages: the same server
// address, source address, TLS policy, EHLO name, account and protocol.
type Key struct {
	Addr       netip.AddrPort
	Source     netip.Addr
	ServerName string
	// TLS is the TLS policy the session was made under ("optional",
	// "require", "implicit", with "+invalid" when certificates are not
	// checked): a session made under a weaker policy never carries a
	// message that asks for a stronger one.
	TLS      string
	EHLO     string
	Auth     string
	Protocol Protocol
}

// PoolConfig bounds how sessions are kept.
type PoolConfig struct {
	// MaxMessages is the most messages one session carries before it is
	// closed. Default: 100.
	MaxMessages int `json:"max_messages,omitempty"`
	// IdleTimeout is how long an unused session is kept. Default: 10s:
	// long enough to carry a burst of messages, short enough not to hold
	// a receiver's connection slot for nothing (Postfix keeps 2s).
	IdleTimeout time.Duration `json:"idle_timeout,omitempty"`
}

// Pool keeps sessions after their transactions, to carry the next messages
// to the same server without a new connection, TLS handshake and EHLO. It
// also caps the sessions open per group (a remote's concurrency), idle
// ones included.
type Pool struct {
	cfg   PoolConfig
	mu    sync.Mutex
	idle  map[Key][]idleSession
	open  map[string]int // sessions per group, idle or busy
	wake  chan struct{}  // closed and replaced when a slot frees
	stop  chan struct{}
	done  chan struct{}
	group map[*Client]string
}

type idleSession struct {
	c     *Client
	since time.Time
}

// NewPool returns a pool; Close it to close every kept session.
func NewPool(cfg PoolConfig) *Pool {
	if cfg.MaxMessages <= 0 {
		cfg.MaxMessages = 100
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = 10 * time.Second
	}
	p := &Pool{
		cfg:   cfg,
		idle:  map[Key][]idleSession{},
		open:  map[string]int{},
		wake:  make(chan struct{}),
		stop:  make(chan struct{}),
		done:  make(chan struct{}),
		group: map[*Client]string{},
	}
	go p.janitor()
	return p
}

// ErrPoolClosed is returned by a closed pool.
var ErrPoolClosed = errors.New("connection pool is closed")

// Session returns a session for the first of keys that has a kept one
// still open, or a new one made by dial (whose key the caller learns from
// the connection, for Release: with several addresses to try, the key of a
// new session is known only once it is made). group and limit cap the
// sessions open at once in the group (limit 0: no cap); over the cap, an
// idle session of the group is closed to make room, or Session waits for
// one to be released. Give the session back with Release.
func (p *Pool) Session(ctx context.Context, keys []Key, group string, limit int, dial func(context.Context) (*Client, error)) (*Client, error) {
	for {
		p.mu.Lock()
		select {
		case <-p.stop:
			p.mu.Unlock()
			return nil, ErrPoolClosed
		default:
		}
		for _, key := range keys {
			if c := p.takeIdle(key); c != nil {
				p.mu.Unlock()
				metricConnReused(c.tls)
				return c, nil
			}
		}
		if limit <= 0 || p.open[group] < limit {
			p.open[group]++
			p.mu.Unlock()
			break
		}
		if victim := p.idleOfGroup(group); victim != nil {
			// Close an idle session of the group; its slot is ours.
			delete(p.group, victim)
			p.mu.Unlock()
			go func() { _ = victim.Quit() }()
			break
		}
		wake := p.wake
		p.mu.Unlock()
		select {
		case <-wake:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	c, err := dial(ctx)
	if err != nil {
		p.free(group)
		return nil, err
	}
	p.mu.Lock()
	p.group[c] = group
	p.mu.Unlock()
	return c, nil
}

// takeIdle pops the most recently used idle session of key that is still
// open. Called with p.mu held.
func (p *Pool) takeIdle(key Key) *Client {
	list := p.idle[key]
	for len(list) > 0 {
		s := list[len(list)-1]
		list = list[:len(list)-1]
		p.idle[key] = list
		if time.Since(s.since) < p.cfg.IdleTimeout && s.c.alive() {
			// Whatever state the last transaction left, the next one
			// starts with a (pipelined) RSET.
			s.c.dirty = true
			return s.c
		}
		p.dropLocked(s.c)
	}
	delete(p.idle, key)
	return nil
}

// idleOfGroup takes an idle session of group out of the pool, or nil.
// Called with p.mu held.
func (p *Pool) idleOfGroup(group string) *Client {
	for k, list := range p.idle {
		for i, s := range list {
			if p.group[s.c] == group {
				p.idle[k] = append(list[:i:i], list[i+1:]...)
				return s.c
			}
		}
	}
	return nil
}

// Release gives a session back after its transaction: kept when it is
// usable and under MaxMessages, closed (with QUIT) otherwise.
func (p *Pool) Release(key Key, c *Client) {
	p.mu.Lock()
	select {
	case <-p.stop:
		p.mu.Unlock()
		p.closeSession(c)
		return
	default:
	}
	if c.Usable() && c.Messages() < p.cfg.MaxMessages {
		p.idle[key] = append(p.idle[key], idleSession{c: c, since: time.Now()})
		// A Session waiting for a slot may take this one.
		p.signalLocked()
		p.mu.Unlock()
		return
	}
	p.mu.Unlock()
	p.closeSession(c)
}

// closeSession ends a session (QUIT when it is usable) and frees its slot.
func (p *Pool) closeSession(c *Client) {
	_ = c.Quit()
	p.mu.Lock()
	p.dropLocked(c)
	p.mu.Unlock()
}

// dropLocked forgets c and frees its group slot. Called with p.mu held.
func (p *Pool) dropLocked(c *Client) {
	if group, ok := p.group[c]; ok {
		delete(p.group, c)
		p.open[group]--
		if p.open[group] <= 0 {
			delete(p.open, group)
		}
		p.signalLocked()
	}
	if !c.broken {
		go func() { _ = c.Quit() }()
	}
}

func (p *Pool) free(group string) {
	p.mu.Lock()
	p.open[group]--
	if p.open[group] <= 0 {
		delete(p.open, group)
	}
	p.signalLocked()
	p.mu.Unlock()
}

// signalLocked wakes the Sessions waiting for a slot. Called with p.mu
// held.
func (p *Pool) signalLocked() {
	close(p.wake)
	p.wake = make(chan struct{})
}

// Open returns how many sessions of group are open, idle ones included.
func (p *Pool) Open(group string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.open[group]
}

// Idle returns how many sessions are kept idle.
func (p *Pool) Idle() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, l := range p.idle {
		n += len(l)
	}
	return n
}

// janitor closes sessions idle for longer than IdleTimeout.
func (p *Pool) janitor() {
	defer close(p.done)
	tick := time.NewTicker(min(p.cfg.IdleTimeout/2, time.Second))
	defer tick.Stop()
	for {
		select {
		case <-p.stop:
			return
		case <-tick.C:
		}
		p.mu.Lock()
		for k, list := range p.idle {
			kept := list[:0]
			for _, s := range list {
				if time.Since(s.since) >= p.cfg.IdleTimeout {
					p.dropLocked(s.c)
					continue
				}
				kept = append(kept, s)
			}
			if len(kept) == 0 {
				delete(p.idle, k)
			} else {
				p.idle[k] = kept
			}
		}
		p.mu.Unlock()
	}
}

// Close closes every idle session (QUIT, in the background, each bounded
// by a few seconds) and makes the pool refuse new ones; sessions in use are
// closed when released. It does not wait for them.
func (p *Pool) Close() {
	p.mu.Lock()
	select {
	case <-p.stop:
		p.mu.Unlock()
		return
	default:
	}
	close(p.stop)
	for _, list := range p.idle {
		for _, s := range list {
			p.dropLocked(s.c)
		}
	}
	p.idle = map[Key][]idleSession{}
	p.mu.Unlock()
}

// Destruct implements caddy.Destructor: the usage pool calls it when the
// last config using the pool is unloaded.
func (p *Pool) Destruct() error {
	p.Close()
	return nil
}

// pools shares pools across config reloads, so that warm sessions survive
// a reload and deliveries in flight are not cut.
var pools = caddy.NewUsagePool()

// GetPool returns the shared pool for cfg; call release when the config
// that asked is unloaded.
func GetPool(cfg PoolConfig) (*Pool, func(), error) {
	key, err := json.Marshal(cfg)
	if err != nil {
		return nil, nil, err
	}
	v, _, err := pools.LoadOrNew(string(key), func() (caddy.Destructor, error) {
		return NewPool(cfg), nil
	})
	if err != nil {
		return nil, nil, err
	}
	return v.(*Pool), func() { _, _ = pools.Delete(string(key)) }, nil
}

// Interface guards
var _ caddy.Destructor = (*Pool)(nil)

// Drain closes every idle session with QUIT and waits, until ctx ends, for
// them to be closed. For a program that is about to exit (the command
// line); a running Caddy uses Close, which does not wait.
func (p *Pool) Drain(ctx context.Context) {
	p.mu.Lock()
	var idle []*Client
	for _, list := range p.idle {
		for _, s := range list {
			idle = append(idle, s.c)
		}
	}
	p.idle = map[Key][]idleSession{}
	for _, c := range idle {
		if group, ok := p.group[c]; ok {
			delete(p.group, c)
			p.open[group]--
		}
	}
	p.mu.Unlock()
	var wg sync.WaitGroup
	for _, c := range idle {
		wg.Go(func() { _ = c.Quit() })
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
	}
}
