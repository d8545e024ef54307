package l4submission

import (
	"crypto/tls"
	"net"
	"net/netip"
	"sync"
	"time"
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

	mu    sync.Mutex
	stats sessionStats
}

// sessionStats sum up a connection, for its log line and the metrics.
type sessionStats struct {
	helo, tls, user string
	// delivered, deferred and refused count the messages answered 250,
	// 4xx and 5xx at the end of their data.
	delivered, deferred, refused int
	// relayDenied counts MAIL commands refused for want of AUTH or of an
	// address in relay_networks.
	relayDenied  int
	authFailures int
	// bytes is the size of the messages received.
	bytes int64
}

func newConnState(h *Handler, remote net.Addr) *connState {
	cs := &connState{start: time.Now()}
	if ap, err := netip.ParseAddrPort(remote.String()); err == nil {
		cs.remote = ap.Addr().Unmap()
	}
	cs.inRelayNetworks = inNetworks(h.relay, cs.remote)
	return cs
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

// tlsName names the TLS version of a connection state, "" without TLS.
func tlsName(st tls.ConnectionState, ok bool) string {
	if !ok {
		return ""
	}
	return tls.VersionName(st.Version)
}
