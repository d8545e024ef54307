package notify

import (
	"fmt"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyevents"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	_ "github.com/seed7b014b84/caddy-smtp"
	"github.com/seed7b014b84/caddy-smtp/internal/peertest"
)

// TestNotify runs Caddy with the events app subscribed to an event with
// mail_notify and the smtp app relaying to smtp-sink, emits the event, and
// finds the mail at the sink.
func TestNotify(t *testing.T) {
	sink := peertest.StartSink(t, peertest.SinkOptions{})
	cfg := fmt.Sprintf(`{"admin": {"disabled": true}, "apps": {
		"events": {"subscriptions": [{"events": ["cert_failed"], "handlers": [
			{"handler": "mail_notify", "from": "caddy@example.org", "to": ["admin@example.org"]}]}]},
		"smtp": {"next_hop": "relay", "remotes": {"relay": {"address": "127.0.0.1", "port": %d}}}
	}}`, sink.Port)
	require.NoError(t, caddy.Load([]byte(cfg), true))
	t.Cleanup(func() { _ = caddy.Stop() })
	app, err := caddy.ActiveContext().App("events")
	require.NoError(t, err)
	app.(*caddyevents.App).Emit(caddy.ActiveContext(), "cert_failed", map[string]any{"identifier": "www.example.org"})

	msgs := sink.WaitMessages(t, 1, 10*time.Second)
	assert.Equal(t, []string{"admin@example.org"}, msgs[0].To)
	assert.Contains(t, string(msgs[0].Header), "Subject: Caddy event cert_failed")
	assert.Contains(t, string(msgs[0].Body), "identifier: www.example.org")
}
