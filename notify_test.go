package caddysmtp

import (
	"bytes"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/mail"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/seed7b014b84/caddy-smtp/internal/peertest"
	"github.com/seed7b014b84/caddy-smtp/queue"
	"github.com/seed7b014b84/caddy-smtp/transport"
)

// notifyLab runs Caddy whose smtp app sends bad.test to a sink that refuses
// recipients, later.test to one that defers them, and the rest (the
// senders' domain) to a sink that keeps what it gets: the notices.
type notifyLab struct {
	app   *App
	inbox *peertest.Sink
}

func startNotifyLab(t *testing.T, queueExtra string) *notifyLab {
	t.Helper()
	bad := peertest.StartSink(t, peertest.SinkOptions{Flags: []string{"-f", "rcpt"}})
	later := peertest.StartSink(t, peertest.SinkOptions{Flags: []string{"-r", "rcpt"}})
	inbox := peertest.StartSink(t, peertest.SinkOptions{})
	cfg := fmt.Sprintf(`{
		"admin": {"disabled": true},
		"apps": {
			"events": {"subscriptions": [{"events": ["smtp.dsn", "smtp.double_bounce", "smtp.queued"], "handlers": [{"handler": "smtp_test_collector"}]}]},
			"smtp": {
				"hostname": "mx.example.org",
				"queue": {"path": %q, "retry": ["500ms"], "expire": "2s", "notify": ["1s"]%s},
				"next_hop": [
					{"if": "rcpt_domain == 'bad.test'", "then": "bad"},
					{"if": "rcpt_domain == 'later.test'", "then": "later"},
					{"else": "inbox"}
				],
				"remotes": {
					"bad": {"address": "127.0.0.1", "port": %d},
					"later": {"address": "127.0.0.1", "port": %d},
					"inbox": {"address": "127.0.0.1", "port": %d}
				}
			}
		}
	}`, t.TempDir(), queueExtra, bad.Port, later.Port, inbox.Port)
	require.NoError(t, caddy.Load([]byte(cfg), true))
	t.Cleanup(func() { _ = caddy.Stop() })
	appIface, err := caddy.ActiveContext().App("smtp")
	require.NoError(t, err)
	return &notifyLab{app: appIface.(*App), inbox: inbox}
}

// parts returns a notice's MIME parts: content types and bodies.
func parts(t *testing.T, m peertest.SinkMessage) (map[string]string, string) {
	t.Helper()
	msg, err := mail.ReadMessage(bytes.NewReader(append(append([]byte{}, m.Header...), append([]byte("\n"), m.Body...)...)))
	require.NoError(t, err)
	mt, params, err := mime.ParseMediaType(msg.Header.Get("Content-Type"))
	require.NoError(t, err)
	require.Equal(t, "multipart/report", mt)
	out := map[string]string{}
	mr := multipart.NewReader(msg.Body, params["boundary"])
	for {
		p, err := mr.NextPart()
		if err == io.EOF {
			break
		}
		require.NoError(t, err)
		b, err := io.ReadAll(p)
		require.NoError(t, err)
		ct, _, _ := mime.ParseMediaType(p.Header.Get("Content-Type"))
		out[ct] = string(b)
	}
	return out, params["report-type"]
}

// TestNotices: a refusal and an expiry each get a failure notice, a delay
// a delay notice, all to the sender, from the null sender, and RET=FULL
// returns the message whole.
func TestNotices(t *testing.T) {
	l := startNotifyLab(t, "")
	collectedMu.Lock()
	collected = nil
	collectedMu.Unlock()
	body := "From: app@example.org\r\nSubject: to bounce\r\nMessage-ID: <orig@example.org>\r\n\r\nthe original\r\n"
	_, err := l.app.Enqueue(t.Context(), &Message{From: "app@example.org", Ret: "FULL", EnvID: "env-42", Reader: strings.NewReader(body),
		To: []transport.Recipient{{Addr: "x@bad.test", ORCPT: "orig-x@bad.test"}, {Addr: "y@later.test"}}})
	require.NoError(t, err)
	notices := l.inbox.WaitMessages(t, 3, 20*time.Second)
	byKind := map[string]peertest.SinkMessage{}
	for _, n := range notices {
		assert.Equal(t, "", n.From, "from the null sender")
		assert.Equal(t, []string{"app@example.org"}, n.To)
		p, reportType := parts(t, n)
		assert.Equal(t, "delivery-status", reportType)
		status := p["message/delivery-status"]
		require.NotEmpty(t, status, "%s", n.Header)
		switch {
		case strings.Contains(status, "Action: delayed"):
			byKind["delayed"] = n
			assert.Contains(t, status, "Will-Retry-Until:")
			assert.Contains(t, p, "text/rfc822-headers", "a delay returns the headers only")
		case strings.Contains(status, "Final-Recipient: rfc822;x@bad.test"):
			byKind["refused"] = n
			assert.Contains(t, status, "Original-Recipient: rfc822;orig-x@bad.test")
			assert.Contains(t, status, "Original-Envelope-Id: env-42")
			assert.Contains(t, status, "Reporting-MTA: dns; mx.example.org")
			assert.Contains(t, status, "Action: failed")
			assert.Contains(t, status, "Diagnostic-Code: smtp; 500 5.3.0 Error: command failed")
			assert.Contains(t, p["message/rfc822"], "the original", "RET=FULL returns the message")
		case strings.Contains(status, "Final-Recipient: rfc822;y@later.test"):
			byKind["expired"] = n
			assert.Contains(t, status, "Action: failed")
			assert.Contains(t, status, "Status: 5.4.7")
		}
	}
	assert.Len(t, byKind, 3, "one notice of each: %v", byKind)
	time.Sleep(time.Second)
	assert.Len(t, l.inbox.Messages(t), 3, "each notice once")
	// smtp.queued for the message, and for each notice the queue made.
	sources := map[string]int{}
	collectedMu.Lock()
	for _, e := range collected {
		if e.Name() == queue.EventQueued {
			sources[fmt.Sprint(e.Data["source"])]++
		}
	}
	collectedMu.Unlock()
	assert.Equal(t, map[string]int{"api": 1, "dsn": 3}, sources)
}

// TestNoticeAsEvent: queue.dsn event makes an event instead of a notice;
// a message from the null sender that fails makes a double-bounce event.
func TestNoticeAsEvent(t *testing.T) {
	l := startNotifyLab(t, `, "dsn": [{"if": "sender_domain == 'events.example.org'", "then": "event"}, {"else": "mail"}]`)
	collectedMu.Lock()
	collected = nil
	collectedMu.Unlock()
	for _, from := range []string{"app@events.example.org", ""} {
		_, err := l.app.Enqueue(t.Context(), &Message{From: from, Reader: strings.NewReader("Subject: x\r\n\r\ny\r\n"),
			To: []transport.Recipient{{Addr: "x@bad.test"}}})
		require.NoError(t, err)
	}
	names := func() map[string]int {
		collectedMu.Lock()
		defer collectedMu.Unlock()
		n := map[string]int{}
		for _, e := range collected {
			n[e.Name()]++
		}
		return n
	}
	require.Eventually(t, func() bool { n := names(); return n[EventDSN] == 1 && n[EventDoubleBounce] == 1 },
		10*time.Second, 20*time.Millisecond, "%v", names())
	time.Sleep(time.Second)
	assert.Empty(t, l.inbox.Messages(t), "no notice by mail")
}
