package caddysmtp

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyevents"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/seed7b014b84/caddy-smtp/internal/peertest"
	"github.com/seed7b014b84/caddy-smtp/transport"
)

func init() {
	caddy.RegisterModule(eventCollector{})
}

// collected are the events the test handler saw.
var (
	collectedMu sync.Mutex
	collected   []caddy.Event
)

// eventCollector is an events handler for the tests: it keeps the events.
type eventCollector struct{}

func (eventCollector) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "events.handlers.smtp_test_collector", New: func() caddy.Module { return eventCollector{} }}
}

func (eventCollector) Handle(_ context.Context, e caddy.Event) error {
	collectedMu.Lock()
	defer collectedMu.Unlock()
	collected = append(collected, e)
	return nil
}

// TestEventsAfterReload runs Caddy with the events app and the smtp app,
// reloads the config, and checks that deliveries emit smtp.delivered and
// smtp.failed through the running config's events app.
func TestEventsAfterReload(t *testing.T) {
	sink := peertest.StartSink(t, peertest.SinkOptions{Flags: []string{"-f", "rcpt"}})
	good := peertest.StartSink(t, peertest.SinkOptions{})
	config := func(hostname string) []byte {
		cfg := fmt.Sprintf(`{
			"admin": {"disabled": true},
			"apps": {
				"events": {"subscriptions": [{"events": ["smtp.delivered", "smtp.failed"], "handlers": [{"handler": "smtp_test_collector"}]}]},
				"smtp": {
					"hostname": %q,
					"next_hop": [{"if": "rcpt_domain == 'bad.test'", "then": "bad"}, {"else": "good"}],
					"remotes": {"bad": {"address": "127.0.0.1", "port": %d}, "good": {"address": "127.0.0.1", "port": %d}}
				}
			}
		}`, hostname, sink.Port, good.Port)
		return []byte(cfg)
	}
	require.NoError(t, caddy.Load(config("one.example.org"), true))
	t.Cleanup(func() { _ = caddy.Stop() })
	require.NoError(t, caddy.Load(config("two.example.org"), true), "a reload")

	appIface, err := caddy.ActiveContext().App("smtp")
	require.NoError(t, err)
	app := appIface.(*App)
	body := "Subject: e\r\n\r\nx\r\n"
	collectedMu.Lock()
	collected = nil
	collectedMu.Unlock()
	report, err := app.Deliver(t.Context(), &Message{From: "a@example.org", Body: strings.NewReader(body), Size: int64(len(body)),
		To: []transport.Recipient{{Addr: "x@good.test"}, {Addr: "y@bad.test"}}})
	require.NoError(t, err)
	d, _, f := report.Counts()
	require.Equal(t, [2]int{1, 1}, [2]int{d, f})

	collectedMu.Lock()
	defer collectedMu.Unlock()
	require.Len(t, collected, 2)
	byName := map[string]caddy.Event{}
	for _, e := range collected {
		byName[e.Name()] = e
	}
	assert.Equal(t, "x@good.test", byName[EventDelivered].Data["rcpt"])
	assert.Equal(t, "y@bad.test", byName[EventFailed].Data["rcpt"])
	assert.Equal(t, 5, byName[EventFailed].Data["reply_code"].(int)/100)
	assert.Equal(t, "two.example.org", good.WaitMessages(t, 1, 5*time.Second)[0].Helo, "the reloaded config delivers")
	raw, err := json.Marshal(byName[EventDelivered].Data)
	require.NoError(t, err)
	assert.Contains(t, string(raw), `"route":"good"`)
	var _ caddyevents.Handler = eventCollector{}
}
