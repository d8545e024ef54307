// Package adminclient talks to a running Caddy's admin endpoint for the
// commands (caddy sendmail, caddy smtp-queue). It does what caddycmd's
// AdminAPIRequest does (TCP, unix socket or fd address, the Origin header
// the endpoint checks), but hands back every answer, errors included, so
// that a command can tell "Caddy refused this" (a 4xx: do not retry) from
// "Caddy is not there" (retry later); AdminAPIRequest turns both into the
// same error.
package adminclient

import (
	"context"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
)

// Do sends one request to the admin endpoint at addr (as
// caddycmd.DetermineAdminAPIAddress gives it) and returns the response,
// whatever its status. An error means no answer was had: the address is
// bad, Caddy is not listening, or the body could not be read (the error
// wraps the body's).
func Do(ctx context.Context, addr, method, uri string, headers http.Header, body io.Reader) (*http.Response, error) {
	parsed, err := caddy.ParseNetworkAddress(addr)
	if err != nil || parsed.PortRangeSize() > 1 {
		return nil, fmt.Errorf("invalid admin address %s: %v", addr, err)
	}
	origin := "http://" + parsed.JoinHostPort(0)
	dialAddr := parsed.JoinHostPort(0)
	local := parsed.IsUnixNetwork() || parsed.IsFdNetwork()
	if local {
		// The host is a stand-in that keeps the request on this machine
		// should anything look at it, as Caddy's own client does.
		origin = "http://127.0.0.1"
		if parsed.IsUnixNetwork() {
			// A unix address may carry the socket's permissions after a
			// '|': they are not part of the path.
			dialAddr, _, _ = strings.Cut(parsed.Host, "|")
		}
	}
	req, err := http.NewRequestWithContext(ctx, method, origin+uri, body)
	if err != nil {
		return nil, fmt.Errorf("making request: %w", err)
	}
	if !local {
		req.Header.Set("Origin", origin)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	maps.Copy(req.Header, headers)
	client := http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, parsed.Network, dialAddr)
		},
		ResponseHeaderTimeout: 10 * time.Minute,
	}}
	resp, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("performing request: %w", err)
	}
	return resp, nil
}
