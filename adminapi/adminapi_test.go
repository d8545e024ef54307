package adminapi_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	_ "github.com/seed7b014b84/caddy-smtp"
	"github.com/seed7b014b84/caddy-smtp/internal/peertest"
)

func TestMain(m *testing.M) { os.Exit(peertest.RunIsolated(m)) }

// admin is a running Caddy whose smtp app routes soft.test to a sink that
// defers every recipient and the rest to one that takes them.
type admin struct {
	base string
	good *peertest.Sink
}

func startAdmin(t *testing.T) *admin {
	t.Helper()
	good := peertest.StartSink(t, peertest.SinkOptions{})
	soft := peertest.StartSink(t, peertest.SinkOptions{Flags: []string{"-r", "rcpt"}})
	port := peertest.FreePort(t)
	qdir, err := json.Marshal(t.TempDir())
	require.NoError(t, err)
	cfg := fmt.Sprintf(`{
		"admin": {"listen": "127.0.0.1:%d"},
		"apps": {"smtp": {
			"hostname": "out.example.org",
			"queue": {"path": %s, "retry": ["1h"]},
			"next_hop": [{"if": "rcpt_domain.endsWith('soft.test')", "then": "soft"}, {"else": "good"}],
			"remotes": {
				"good": {"address": "127.0.0.1", "port": %d},
				"soft": {"address": "127.0.0.1", "port": %d}
			}
		}}
	}`, port, qdir, good.Port, soft.Port)
	require.NoError(t, caddy.Load([]byte(cfg), true))
	t.Cleanup(func() { _ = caddy.Stop() })
	return &admin{base: fmt.Sprintf("http://127.0.0.1:%d", port), good: good}
}

func (a *admin) call(t *testing.T, method, path string, body io.Reader, ctype string) (int, map[string]any) {
	t.Helper()
	req, err := http.NewRequest(method, a.base+path, body)
	require.NoError(t, err)
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	resp, err := (&http.Client{Timeout: 30 * time.Second}).Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	var out map[string]any
	if strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") {
		require.NoError(t, json.Unmarshal(raw, &out), "%s", raw)
	} else {
		out = map[string]any{"raw": string(raw)}
	}
	return resp.StatusCode, out
}

func (a *admin) submit(t *testing.T, from string, to ...string) string {
	t.Helper()
	q := url.Values{"from": {from}, "to": to}
	code, out := a.call(t, http.MethodPost, "/smtp/queue?"+q.Encode(), strings.NewReader("Subject: t\r\n\r\nbody\r\n"), "message/rfc822")
	require.Equal(t, http.StatusAccepted, code, "%v", out)
	return out["id"].(string)
}

func ids(out map[string]any) []string {
	var s []string
	for _, m := range out["messages"].([]any) {
		s = append(s, m.(map[string]any)["id"].(string))
	}
	return s
}

func TestAdminAPI(t *testing.T) {
	a := startAdmin(t)
	delivered := a.submit(t, "app@example.org", "ok@good.test")
	var soft []string
	for i := range 3 {
		soft = append(soft, a.submit(t, "app@example.org", fmt.Sprintf("u%d@soft.test", i)))
	}
	news := a.submit(t, "news@lists.example.org", "v@soft.test")
	a.good.WaitMessages(t, 1, 10*time.Second)
	require.Eventually(t, func() bool {
		_, out := a.call(t, http.MethodGet, "/smtp/queue?state=deferred", nil, "")
		return len(out["messages"].([]any)) == 4
	}, 10*time.Second, 20*time.Millisecond)
	_ = delivered

	t.Run("filters", func(t *testing.T) {
		for _, c := range []struct {
			query string
			want  []string
		}{
			{"", append(append([]string{}, soft...), news)},
			{"from=%40lists.example.org", []string{news}},
			{"to=u1%40soft.test", soft[1:2]},
			{"domain=soft.test", append(append([]string{}, soft...), news)},
			{"destination=remote%3Asoft", append(append([]string{}, soft...), news)},
			{"state=pending", nil},
			{"held=true", nil},
			{"younger_than=1h", append(append([]string{}, soft...), news)},
			{"older_than=1h", nil},
			{"id=" + soft[0] + "&id=" + soft[2], []string{soft[0], soft[2]}},
		} {
			code, out := a.call(t, http.MethodGet, "/smtp/queue?"+c.query, nil, "")
			require.Equal(t, http.StatusOK, code, "%s: %v", c.query, out)
			assert.ElementsMatch(t, c.want, ids(out), c.query)
		}
		code, out := a.call(t, http.MethodGet, "/smtp/queue?limit=2", nil, "")
		require.Equal(t, http.StatusOK, code)
		assert.Len(t, ids(out), 2)
		next := out["next"].(string)
		require.NotEmpty(t, next)
		_, out = a.call(t, http.MethodGet, "/smtp/queue?limit=2&cursor="+next, nil, "")
		assert.Len(t, ids(out), 2)
		code, out = a.call(t, http.MethodGet, "/smtp/queue?state=nope", nil, "")
		assert.Equal(t, http.StatusBadRequest, code)
		assert.Contains(t, out["error"], "state")
	})

	t.Run("show and body", func(t *testing.T) {
		code, out := a.call(t, http.MethodGet, "/smtp/queue/"+soft[0], nil, "")
		require.Equal(t, http.StatusOK, code)
		assert.Equal(t, "deferred", out["state"])
		r := out["recipients"].([]any)[0].(map[string]any)
		assert.Equal(t, "u0@soft.test", r["addr"])
		assert.EqualValues(t, 1, r["attempts"])
		assert.NotEmpty(t, r["next_attempt"])
		assert.EqualValues(t, 450, r["last_reply"].(map[string]any)["code"])
		hist := r["attempts_made"].([]any)
		require.Len(t, hist, 1)
		assert.Contains(t, hist[0].(map[string]any)["address"], "127.0.0.1:")
		code, out = a.call(t, http.MethodGet, "/smtp/queue/"+soft[0]+"/body", nil, "")
		require.Equal(t, http.StatusOK, code)
		assert.Equal(t, "Subject: t\r\n\r\nbody\r\n", out["raw"])
		code, _ = a.call(t, http.MethodGet, "/smtp/queue/00000000000000000000", nil, "")
		assert.Equal(t, http.StatusNotFound, code)
	})

	t.Run("summary", func(t *testing.T) {
		code, out := a.call(t, http.MethodGet, "/smtp/queue/summary", nil, "")
		require.Equal(t, http.StatusOK, code)
		d := out["destinations"].([]any)
		require.Len(t, d, 1)
		assert.Equal(t, "remote:soft", d[0].(map[string]any)["destination"])
		assert.EqualValues(t, 4, d[0].(map[string]any)["messages"])
		assert.Contains(t, d[0].(map[string]any)["last_error"], "450 4.3.0")
	})

	t.Run("actions", func(t *testing.T) {
		code, out := a.call(t, http.MethodPost, "/smtp/queue/hold", nil, "")
		assert.Equal(t, http.StatusBadRequest, code, "a bulk action needs a filter or all=true")
		assert.Contains(t, out["error"], "all=true")
		code, out = a.call(t, http.MethodPost, "/smtp/queue/hold?from=%40lists.example.org&reason=spam+run", nil, "")
		require.Equal(t, http.StatusOK, code, "%v", out)
		assert.EqualValues(t, 1, out["touched"])
		_, out = a.call(t, http.MethodGet, "/smtp/queue?state=held", nil, "")
		assert.Equal(t, []string{news}, ids(out))
		code, out = a.call(t, http.MethodPost, "/smtp/queue/"+news+"/release", nil, "")
		require.Equal(t, http.StatusOK, code)
		assert.EqualValues(t, 1, out["touched"])
		code, out = a.call(t, http.MethodDelete, "/smtp/queue/"+soft[2], nil, "")
		require.Equal(t, http.StatusOK, code)
		assert.EqualValues(t, 1, out["touched"])
		code, _ = a.call(t, http.MethodGet, "/smtp/queue/"+soft[2], nil, "")
		assert.Equal(t, http.StatusNotFound, code)
		code, out = a.call(t, http.MethodPost, "/smtp/queue/"+soft[1]+"/bounce", nil, "")
		require.Equal(t, http.StatusOK, code)
		assert.EqualValues(t, 1, out["touched"])
		code, out = a.call(t, http.MethodPost, "/smtp/queue/"+soft[0]+"/explode", nil, "")
		assert.Equal(t, http.StatusNotFound, code, "%v", out)
	})

	t.Run("hold rules and pause", func(t *testing.T) {
		code, out := a.call(t, http.MethodPost, "/smtp/queue/holds",
			strings.NewReader(`{"recipient_domain": "soft.test", "comment": "block", "expires_in": "1h"}`), "application/json")
		require.Equal(t, http.StatusCreated, code, "%v", out)
		id := out["hold"].(map[string]any)["id"].(string)
		assert.GreaterOrEqual(t, out["touched"], 1.0)
		fresh := a.submit(t, "app@example.org", "w@soft.test")
		_, out = a.call(t, http.MethodGet, "/smtp/queue/"+fresh, nil, "")
		assert.Equal(t, "held", out["state"], "a new message is held by the rule")
		_, out = a.call(t, http.MethodGet, "/smtp/queue/holds", nil, "")
		assert.Len(t, out["holds"].([]any), 1)
		code, _ = a.call(t, http.MethodDelete, "/smtp/queue/holds/"+id, nil, "")
		assert.Equal(t, http.StatusOK, code)
		_, out = a.call(t, http.MethodGet, "/smtp/queue/"+fresh, nil, "")
		assert.NotEqual(t, "held", out["state"])
		code, out = a.call(t, http.MethodPost, "/smtp/queue/pause", nil, "")
		require.Equal(t, http.StatusOK, code)
		assert.Equal(t, true, out["paused"])
		before := len(a.good.Messages(t))
		a.submit(t, "app@example.org", "paused@good.test")
		time.Sleep(500 * time.Millisecond)
		assert.Len(t, a.good.Messages(t), before, "nothing goes out while paused")
		_, out = a.call(t, http.MethodPost, "/smtp/queue/resume", nil, "")
		assert.Equal(t, false, out["paused"])
		a.good.WaitMessages(t, before+1, 10*time.Second)
	})

	t.Run("submission errors", func(t *testing.T) {
		code, out := a.call(t, http.MethodPost, "/smtp/queue?from=a%40example.org", bytes.NewReader([]byte("x")), "message/rfc822")
		assert.Equal(t, http.StatusBadRequest, code)
		assert.Contains(t, out["error"], "to")
		code, _ = a.call(t, http.MethodPost, "/smtp/queue?to=%0D%0ARCPT", bytes.NewReader([]byte("x")), "message/rfc822")
		assert.Equal(t, http.StatusBadRequest, code)
	})
}
