package caddysmtp

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestResolverKeptAcrossReloads provisions the app twice with the same
// resolver settings, as a config reload does, and checks that the second
// config gets the first one's resolver (and so its cache), that the
// resolver's metrics are in Caddy's registry, and that other settings get
// another resolver.
func TestResolverKeptAcrossReloads(t *testing.T) {
	cfg := `{"resolver": {"servers": ["udp://127.0.0.1:53"], "timeout": "2s"}}`
	old := provisioned(t, cfg)
	reloaded := provisioned(t, cfg)
	assert.Same(t, old.DNS(), reloaded.DNS())
	require.NoError(t, old.Cleanup(), "the old config is unloaded after the new one started")

	other := provisioned(t, `{"resolver": {"servers": ["udp://127.0.0.1:53"], "timeout": "3s"}}`)
	assert.NotSame(t, reloaded.DNS(), other.DNS())
	assert.Equal(t, []string{"udp://127.0.0.1:53"}, other.DNS().Servers())
	require.NoError(t, reloaded.Cleanup())
	require.NoError(t, other.Cleanup())

	families, err := old.ctx.GetMetricsRegistry().Gather()
	require.NoError(t, err)
	var names []string
	for _, f := range families {
		names = append(names, f.GetName())
	}
	assert.Contains(t, names, "caddy_smtp_dns_cache_hits_total")
}
