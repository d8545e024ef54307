package l4submission

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/netip"
	"sync"

	"github.com/caddyserver/caddy/v2"
)

// guard is the state that a handler's connections share: how many are
// open, in all and per client, and the authentication throttle. It lives
// in a usage pool keyed by the handler's config, so that a reload that
// leaves the handler as it was keeps it: the connections opened before
// the reload still count, and a client locked out of AUTH stays locked
// out. Handlers with the same config (on two listeners, say) share one
// guard. A handler whose users or passwords changed gets a new guard,
// which forgets the logins it had cached.
type guard struct {
	maxConns, maxPerClient int

	mu    sync.Mutex
	conns int
	// perClient counts the open connections of each client (its address,
	// or its /64 for IPv6) that is not in relay_networks.
	perClient map[netip.Prefix]int

	auth *authThrottle
}

// guards holds the guards of the handlers in use.
var guards = caddy.NewUsagePool()

// guardKey is the key of a handler's guard: a digest of its config as it
// was loaded.
func guardKey(h *Handler) (string, error) {
	b, err := json.Marshal(h)
	if err != nil {
		return "", fmt.Errorf("digesting the config: %w", err)
	}
	sum := sha256.Sum256(b)
	return "l4submission.guard." + hex.EncodeToString(sum[:]), nil
}

// loadGuard returns the guard for the key, making it if no handler holds
// it yet. The handler gives it back with guards.Delete(key) in Cleanup.
func loadGuard(key string, maxConns, maxPerClient int) (*guard, error) {
	v, _, err := guards.LoadOrNew(key, func() (caddy.Destructor, error) {
		return &guard{
			maxConns:     maxConns,
			maxPerClient: maxPerClient,
			perClient:    make(map[netip.Prefix]int),
			auth:         newAuthThrottle(),
		}, nil
	})
	if err != nil {
		return nil, err
	}
	return v.(*guard), nil
}

// Destruct satisfies caddy.Destructor; a guard holds nothing to release.
func (*guard) Destruct() error { return nil }

// clientKey is what a client is counted by: its IPv4 address, or the /64
// its IPv6 address is in, since one host commonly has a whole /64 to
// choose addresses from.
func clientKey(a netip.Addr) netip.Prefix {
	if !a.IsValid() {
		return netip.Prefix{}
	}
	a = a.Unmap()
	bits := 32
	if a.Is6() {
		bits = 64
	}
	p, _ := a.Prefix(bits)
	return p
}

// Why admit refuses a connection.
const (
	refusedTotal     = "max_connections"
	refusedPerClient = "max_connections_per_ip"
)

// admit counts a new connection from client, and returns the function
// that uncounts it when it ends; or, when the handler has max_connections
// open already, or the client (unless exempt, being in relay_networks) has
// max_connections_per_ip, the name of the limit it would pass.
func (g *guard) admit(client netip.Addr, exempt bool) (release func(), refused string) {
	key := clientKey(client)
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.conns >= g.maxConns {
		return nil, refusedTotal
	}
	if !exempt && g.perClient[key] >= g.maxPerClient {
		return nil, refusedPerClient
	}
	g.conns++
	if !exempt {
		g.perClient[key]++
	}
	var once sync.Once
	return func() {
		once.Do(func() {
			g.mu.Lock()
			defer g.mu.Unlock()
			g.conns--
			if exempt {
				return
			}
			if g.perClient[key]--; g.perClient[key] <= 0 {
				delete(g.perClient, key)
			}
		})
	}, ""
}

// Interface guards
var _ caddy.Destructor = (*guard)(nil)
