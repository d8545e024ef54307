package httpsend_test

import (
	"encoding/json"
	"fmt"
	"io"
	"mime/quotedprintable"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/seed7b014b84/caddy-smtp/queue"
)

// postQueue posts a request and returns its status and JSON answer.
func postQueue(t *testing.T, u, ctype string, body io.Reader) (int, map[string]any) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, u, body)
	require.NoError(t, err)
	req.Header.Set("Content-Type", ctype)
	resp, err := (&http.Client{Timeout: 60 * time.Second}).Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	var out map[string]any
	require.NoError(t, json.Unmarshal(raw, &out), "%s", raw)
	return resp.StatusCode, out
}

// TestQueueMode: in queue mode (the default) the message streams into the
// queue, the answer is 202 with its ID, and the queue delivers it.
func TestQueueMode(t *testing.T) {
	base, good, _ := startCaddyQueue(t, `{"handler": "smtp_send", "mode": "queue", "max_size": 8388608}`, `"retry": ["1s"]`)
	q := url.Values{"from": {"app@example.org"}, "to": {"q1@example.net"}}

	t.Run("raw message", func(t *testing.T) {
		code, out := postQueue(t, base+"?"+q.Encode(), "message/rfc822", strings.NewReader("Subject: queued\r\n\r\nhello\r\n"))
		require.Equal(t, http.StatusAccepted, code, "%v", out)
		assert.Len(t, out["id"], 20)
		require.Eventually(t, func() bool { return len(good.Messages(t)) == 1 }, 10*time.Second, 20*time.Millisecond)
		assert.Equal(t, "hello\n", string(good.Messages(t)[0].Body))
	})

	t.Run("JSON form, the text first and large", func(t *testing.T) {
		// 3 MiB of text with escapes, a long line and non-ASCII: it
		// streams, and arrives quoted-printable, whole.
		var text strings.Builder
		for text.Len() < 3<<20 {
			text.WriteString("Ligne \"été\"\t\\ ")
			text.WriteString(strings.Repeat("x", 50))
			text.WriteString("\n")
		}
		text.WriteString(strings.Repeat("y", 2000) + "\n")
		enc, err := json.Marshal(text.String())
		require.NoError(t, err)
		body := `{"text": ` + string(enc) + `, "subject": "Grand", "from": "app@example.org", "to": ["q2@example.net"]}`
		code, out := postQueue(t, base, "application/json", strings.NewReader(body))
		require.Equal(t, http.StatusAccepted, code, "%v", out)
		require.Eventually(t, func() bool { return len(good.Messages(t)) == 2 }, 20*time.Second, 20*time.Millisecond)
		var got []byte
		for _, m := range good.Messages(t) {
			if m.To[0] == "q2@example.net" {
				assert.Contains(t, string(m.Header), "Content-Transfer-Encoding: quoted-printable")
				got = m.Body
			}
		}
		dec, err := io.ReadAll(quotedprintable.NewReader(strings.NewReader(strings.ReplaceAll(string(got), "\n", "\r\n"))))
		require.NoError(t, err)
		assert.Equal(t, strings.ReplaceAll(text.String(), "\n", "\r\n"), string(dec), "the text arrives whole")
	})

	t.Run("a line too long", func(t *testing.T) {
		msg := "Subject: long\r\n\r\nshort\r\n" + strings.Repeat("z", 999) + "\r\nmore\r\n"
		code, out := postQueue(t, base+"?"+q.Encode(), "message/rfc822", strings.NewReader(msg))
		assert.Equal(t, http.StatusBadRequest, code)
		assert.Contains(t, out["error"], "line 4")
	})

	t.Run("too large", func(t *testing.T) {
		code, out := postQueue(t, base+"?"+q.Encode(), "message/rfc822", strings.NewReader(strings.Repeat("a\r\n", 3<<20)))
		assert.Equal(t, http.StatusRequestEntityTooLarge, code, "%v", out)
		code, out = postQueue(t, base, "application/json",
			strings.NewReader(`{"from": "app@example.org", "to": ["x@example.net"], "text": "`+strings.Repeat("b", 9<<20)+`"}`))
		assert.Equal(t, http.StatusRequestEntityTooLarge, code, "%v", out)
	})

	t.Run("empty", func(t *testing.T) {
		code, out := postQueue(t, base+"?"+q.Encode(), "message/rfc822", strings.NewReader(" \r\n"))
		assert.Equal(t, http.StatusBadRequest, code)
		assert.Contains(t, out["error"], "empty message")
	})

	t.Run("malformed JSON", func(t *testing.T) {
		for _, body := range []string{`{"from": "a@example.org", "to": ["b@example.net"], "text": "unended`,
			`{"from": "a@example.org" "to": []}`, `{"text": "\x01"}`, `{"text": "ok", "text": "twice"}`, `{"nope": 1}`, `[]`} {
			code, out := postQueue(t, base, "application/json", strings.NewReader(body))
			assert.Equal(t, http.StatusBadRequest, code, "%s: %v", body, out)
			assert.Contains(t, out["error"], "json form", body)
		}
	})

	t.Run("DSN parameters", func(t *testing.T) {
		code, out := postQueue(t, base, "application/json", strings.NewReader(
			`{"from": "app@example.org", "to": ["dsn@example.net"], "text": "x", "notify": ["success", "failure"], "ret": "hdrs", "envid": "order-17"}`))
		require.Equal(t, http.StatusAccepted, code, "%v", out)
		app, err := caddy.ActiveContext().App("smtp")
		require.NoError(t, err)
		m, err := app.(interface{ QueueRunning() *queue.Queue }).QueueRunning().Store().Get(t.Context(), out["id"].(string))
		if err == nil { // delivered already: then the sink saw it
			assert.Equal(t, "HDRS", m.Ret)
			assert.Equal(t, "order-17", m.EnvID)
			assert.Equal(t, []string{"SUCCESS", "FAILURE"}, m.Recipients[0].Notify)
		}
		q2 := url.Values{"from": {"app@example.org"}, "to": {"dsn2@example.net"}, "notify": {"sometimes"}}
		code, out = postQueue(t, base+"?"+q2.Encode(), "message/rfc822", strings.NewReader("Subject: x\r\n\r\ny\r\n"))
		assert.Equal(t, http.StatusBadRequest, code)
		assert.Contains(t, out["error"], "notify")
	})

	t.Run("header injection still refused", func(t *testing.T) {
		code, out := postQueue(t, base, "application/json",
			strings.NewReader(`{"from": "\r\nBcc: evil@example.org;", "to": ["b@example.net"], "text": "x"}`))
		assert.Equal(t, http.StatusBadRequest, code)
		assert.Contains(t, out["error"], "from")
	})
	require.Eventually(t, func() bool { return len(good.Messages(t)) == 3 }, 10*time.Second, 20*time.Millisecond,
		"nothing but the three good messages was delivered")
}

// TestQueueFull: a full queue answers 507, and takes nothing.
func TestQueueFull(t *testing.T) {
	base, _, dir := startCaddyQueue(t, `{"handler": "smtp_send", "mode": "queue"}`, `"max_messages": 1, "retry": ["1h"]`)
	q := url.Values{"from": {"app@example.org"}, "to": {"x@later.test"}}
	code, out := postQueue(t, base+"?"+q.Encode(), "message/rfc822", strings.NewReader("Subject: 1\r\n\r\none\r\n"))
	require.Equal(t, http.StatusAccepted, code, "%v", out)
	code, out = postQueue(t, base+"?"+q.Encode(), "message/rfc822", strings.NewReader("Subject: 2\r\n\r\ntwo\r\n"))
	assert.Equal(t, http.StatusInsufficientStorage, code, "%v", out)
	assert.Contains(t, out["error"], "queue is full")
	entries, err := os.ReadDir(filepath.Join(dir, "bodies"))
	require.NoError(t, err)
	assert.Empty(t, entries, fmt.Sprint(entries))
}
