package l4submission

import (
	"net/netip"
	"testing"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestRelayNetworks(t *testing.T) {
	nets, err := parseNetworks([]string{"10.1.2.3/8", "192.0.2.7", "2001:db8::/32", "::ffff:198.51.100.1"})
	require.NoError(t, err)
	assert.Equal(t, []netip.Prefix{
		netip.MustParsePrefix("10.0.0.0/8"),
		netip.MustParsePrefix("192.0.2.7/32"),
		netip.MustParsePrefix("2001:db8::/32"),
		netip.MustParsePrefix("198.51.100.1/32"),
	}, nets)
	tests := []struct {
		addr string
		in   bool
	}{
		{"10.200.0.1", true},
		{"11.0.0.1", false},
		{"192.0.2.7", true},
		{"192.0.2.8", false},
		{"2001:db8::1", true},
		{"2001:db9::1", false},
		{"198.51.100.1", true},
	}
	for _, tt := range tests {
		assert.Equal(t, tt.in, inNetworks(nets, netip.MustParseAddr(tt.addr)), tt.addr)
	}
	assert.False(t, inNetworks(nets, netip.Addr{}), "an unknown address is in no network")
}

func TestRelayNetworksTooWide(t *testing.T) {
	_, err := parseNetworks(append([]string{"127.0.0.0/8", "::1"}, caddyhttp.PrivateRangesCIDR()...))
	require.NoError(t, err, "private_ranges has fd00::/8, within fc00::/7")
	_, err = parseNetworks([]string{"fc00::/7", "2001:db8::/32", "10.0.0.0/8"})
	require.NoError(t, err)

	for _, tt := range []struct{ network, want string }{
		{"0.0.0.0/0", `"0.0.0.0/0": a range shorter than /8 would make an open relay`},
		{"10.0.0.0/7", `"10.0.0.0/7": a range shorter than /8 would make an open relay`},
		{"::/0", `"::/0": a range shorter than /32 would make an open relay`},
		{"2001:db8::/31", `"2001:db8::/31": a range shorter than /32 would make an open relay`},
		{"fc00::/6", `"fc00::/6": a range shorter than /32 would make an open relay`},
	} {
		_, err := parseNetworks([]string{"127.0.0.1", tt.network})
		assert.ErrorContains(t, err, tt.want, tt.network)
	}
}
