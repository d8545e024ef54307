package httpsend_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	_ "github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	_ "github.com/caddyserver/caddy/v2/modules/caddyhttp/caddyauth"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	_ "github.com/seed7b014b84/caddy-smtp"
	"github.com/seed7b014b84/caddy-smtp/internal/peertest"
)

// startCaddy runs Caddy with an HTTP server whose only route is smtp_send,
// and the smtp app routing bad.test to a sink that refuses recipients
// (-f rcpt), later.test to one that defers them (-r rcpt), and the rest to
// a sink that takes everything. handler is the smtp_send handler's JSON.
//
// The handler is in deliver mode unless handler names a mode: these tests
// read the delivery report.
func startCaddy(t *testing.T, handler string) (base string, good *peertest.Sink) {
	t.Helper()
	base, good, _ = startCaddyQueue(t, handler, `"retry": ["1s"]`)
	return base, good
}

// startCaddyQueue is startCaddy with the smtp app's queue settings (JSON
// object members), and returns Caddy's queue folder.
func startCaddyQueue(t *testing.T, handler, queue string) (base string, good *peertest.Sink, queueDir string) {
	t.Helper()
	if !strings.Contains(handler, `"mode"`) {
		handler = strings.Replace(handler, `"handler": "smtp_send"`, `"handler": "smtp_send", "mode": "deliver"`, 1)
	}
	queueDir = t.TempDir()
	b, err := json.Marshal(queueDir)
	require.NoError(t, err)
	queue = `"path": ` + string(b) + `, ` + queue
	good = peertest.StartSink(t, peertest.SinkOptions{})
	bad := peertest.StartSink(t, peertest.SinkOptions{Flags: []string{"-f", "rcpt"}})
	later := peertest.StartSink(t, peertest.SinkOptions{Flags: []string{"-r", "rcpt"}})
	port := peertest.FreePort(t)
	cfg := fmt.Sprintf(`{
		"admin": {"disabled": true},
		"apps": {
			"http": {"servers": {"send": {"listen": ["127.0.0.1:%d"], "automatic_https": {"disable": true},
				"routes": [{"handle": [%s]}]}}},
			"smtp": {
				"hostname": "web.example.org",
				"queue": {%s},
				"next_hop": [
					{"if": "rcpt_domain == 'bad.test'", "then": "bad"},
					{"if": "rcpt_domain == 'later.test'", "then": "later"},
					{"else": "good"}
				],
				"remotes": {
					"good": {"address": "127.0.0.1", "port": %d},
					"bad": {"address": "127.0.0.1", "port": %d},
					"later": {"address": "127.0.0.1", "port": %d}
				}
			}
		}
	}`, port, handler, queue, good.Port, bad.Port, later.Port)
	require.NoError(t, caddy.Load([]byte(cfg), true))
	t.Cleanup(func() { _ = caddy.Stop() })
	return fmt.Sprintf("http://127.0.0.1:%d/", port), good, queueDir
}

type reportJSON struct {
	Recipients []struct {
		Rcpt   string `json:"rcpt"`
		Status string `json:"status"`
		Route  string `json:"route"`
		Reply  *struct {
			Code int `json:"code"`
		} `json:"reply"`
	} `json:"recipients"`
	Error string `json:"error"`
}

func post(t *testing.T, u, ctype, body string, header http.Header) (int, reportJSON, http.Header) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, u, strings.NewReader(body))
	require.NoError(t, err)
	req.Header.Set("Content-Type", ctype)
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := (&http.Client{Timeout: 30 * time.Second}).Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	var rep reportJSON
	require.NoError(t, json.Unmarshal(raw, &rep), "%s", raw)
	return resp.StatusCode, rep, resp.Header
}

func TestSend(t *testing.T) {
	base, good := startCaddy(t, `{"handler": "smtp_send", "max_size": 4096}`)
	raw := "From: app@example.org\r\nSubject: raw\r\n\r\nraw body\r\n"

	t.Run("raw message, envelope in the query", func(t *testing.T) {
		q := url.Values{"from": {"app@example.org"}, "to": {"a@example.net", "Bee <b@example.net>"}}
		code, rep, _ := post(t, base+"?"+q.Encode(), "message/rfc822", raw, nil)
		require.Equal(t, http.StatusOK, code)
		require.Len(t, rep.Recipients, 2)
		assert.Equal(t, "delivered", rep.Recipients[0].Status)
		assert.Equal(t, "b@example.net", rep.Recipients[1].Rcpt)
		assert.Equal(t, "good", rep.Recipients[0].Route)
	})
	t.Run("raw message, envelope in headers", func(t *testing.T) {
		code, rep, _ := post(t, base, "text/plain", raw, http.Header{"Smtp-From": {"app@example.org"}, "Smtp-To": {"c@example.net, d@example.net"}})
		require.Equal(t, http.StatusOK, code)
		assert.Len(t, rep.Recipients, 2)
	})
	t.Run("JSON form", func(t *testing.T) {
		code, rep, _ := post(t, base, "application/json",
			`{"from": "app@example.org", "to": ["e@example.net"], "subject": "Grüße", "text": "héllo\nworld", "headers": {"Reply-To": "help@example.org"}}`, nil)
		require.Equal(t, http.StatusOK, code)
		assert.Equal(t, "delivered", rep.Recipients[0].Status)
	})
	msgs := good.WaitMessages(t, 3, 10*time.Second)
	var form string
	for _, m := range msgs {
		if m.To[0] == "e@example.net" {
			form = string(m.Header) + "\n" + string(m.Body)
		}
	}
	assert.Contains(t, form, "Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=")
	assert.Contains(t, form, "Reply-To: <help@example.org>")
	assert.Contains(t, form, "Content-Type: text/plain; charset=utf-8")
	assert.Contains(t, form, "Content-Transfer-Encoding: quoted-printable")
	assert.Contains(t, form, "h=C3=A9llo\nworld")
	assert.Contains(t, form, "@web.example.org>", "Message-ID names the app's host")

	t.Run("mixed outcome is 207", func(t *testing.T) {
		q := url.Values{"from": {"app@example.org"}, "to": {"f@example.net", "g@bad.test"}}
		code, rep, _ := post(t, base+"?"+q.Encode(), "message/rfc822", raw, nil)
		assert.Equal(t, http.StatusMultiStatus, code)
		assert.Equal(t, "failed", rep.Recipients[1].Status)
		assert.Equal(t, 5, rep.Recipients[1].Reply.Code/100)
	})
	t.Run("all failed is 422", func(t *testing.T) {
		code, _, _ := post(t, base+"?from=app@example.org&to=h@bad.test", "message/rfc822", raw, nil)
		assert.Equal(t, http.StatusUnprocessableEntity, code)
	})
	t.Run("deferred is 503 with Retry-After", func(t *testing.T) {
		code, rep, h := post(t, base+"?from=app@example.org&to=i@later.test", "message/rfc822", raw, nil)
		assert.Equal(t, http.StatusServiceUnavailable, code)
		assert.Equal(t, "deferred", rep.Recipients[0].Status)
		assert.Equal(t, "300", h.Get("Retry-After"))
	})
	bad := []struct {
		name, query, ctype, body string
		status                   int
		want                     string
	}{
		{"no recipient", "?from=app@example.org", "message/rfc822", raw, 400, "to: at least one recipient"},
		{"bad recipient", "?from=app@example.org&to=not-an-address", "message/rfc822", raw, 400, "to[0]"},
		{"bad sender", "?from=a@b@c&to=x@example.net", "message/rfc822", raw, 400, "from:"},
		{"empty body", "?from=app@example.org&to=x@example.net", "message/rfc822", "  ", 400, "body: empty"},
		{"unknown JSON field", "", "application/json", `{"from": "a@example.org", "to": ["x@example.net"], "body": "x"}`, 400, `unknown field "body"`},
		{"header injection", "", "application/json", `{"from": "a@example.org", "to": ["x@example.net"], "subject": "a\r\nBcc: evil@example.org"}`, 400, "subject: CR at byte 1"},
		{"reserved header", "", "application/json", `{"from": "a@example.org", "to": ["x@example.net"], "headers": {"From": "x@y.z"}}`, 400, "set by the form"},
		{"too big", "?from=app@example.org&to=x@example.net", "message/rfc822", strings.Repeat("x", 5000), 413, "max_size"},
	}
	for _, tt := range bad {
		t.Run(tt.name, func(t *testing.T) {
			code, rep, _ := post(t, base+tt.query, tt.ctype, tt.body, nil)
			assert.Equal(t, tt.status, code)
			assert.Contains(t, rep.Error, tt.want)
		})
	}
	t.Run("GET is refused", func(t *testing.T) {
		resp, err := http.Get(base)
		require.NoError(t, err)
		resp.Body.Close()
		assert.Equal(t, http.StatusMethodNotAllowed, resp.StatusCode)
		assert.Equal(t, "POST", resp.Header.Get("Allow"))
	})
}

func TestCaddyfile(t *testing.T) {
	in := "{\n\tsmtp {\n\t\tnext_hop false\n\t}\n}\n\n:8025 {\n\tbasic_auth {\n\t\tapp $2a$14$Zkx19XLiW6VYouLHR5NmfOFU0z2GTNmpkT/5qqR7hx4IjWJPDhjvG\n\t}\n\tsmtp_send {\n\t\tmax_size 10MB\n\t}\n}\n"
	out, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(in), nil)
	require.NoError(t, err)
	assert.Contains(t, string(out), `{"handler":"smtp_send","max_size":10000000}`)
	assert.Regexp(t, `"handler":"authentication".*"handler":"smtp_send"`, string(out), "ordered after authentication")

	_, _, err = caddyconfig.GetAdapter("caddyfile").Adapt([]byte(":8025 {\n\tsmtp_send {\n\t\tmax_size lots\n\t}\n}\n"), map[string]any{"filename": "Caddyfile"})
	require.Error(t, err)
	assert.Contains(t, err.Error(), "Caddyfile:3")

	out, _, err = caddyconfig.GetAdapter("caddyfile").Adapt([]byte(":8025 {\n\tsmtp_send {\n\t\tmax_recipients 10\n\t\tmax_concurrent 8\n\t}\n}\n"), nil)
	require.NoError(t, err)
	assert.Contains(t, string(out), `{"handler":"smtp_send","max_concurrent":8,"max_recipients":10}`)
	for _, bad := range []struct{ line, want string }{
		{"max_recipients 0", `max_recipients "0": want a whole number above 0`},
		{"max_recipients -3", `max_recipients "-3": want a whole number above 0`},
		{"max_concurrent many", `max_concurrent "many": want a whole number above 0`},
		{"max_concurrent", "wrong argument count"},
		{"max_concurrent 1 2", "wrong argument count"},
		{"max_senders 1", `unknown smtp_send option "max_senders"`},
	} {
		_, _, err = caddyconfig.GetAdapter("caddyfile").Adapt([]byte(":8025 {\n\tsmtp_send {\n\t\t"+bad.line+"\n\t}\n}\n"), map[string]any{"filename": "Caddyfile"})
		require.Error(t, err, bad.line)
		assert.Contains(t, err.Error(), bad.want)
		assert.Contains(t, err.Error(), "Caddyfile:3")
	}
}
