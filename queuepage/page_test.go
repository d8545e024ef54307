package queuepage_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	_ "github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	_ "github.com/caddyserver/caddy/v2/modules/standard"
	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/crypto/bcrypt"

	_ "github.com/seed7b014b84/caddy-smtp"
	"github.com/seed7b014b84/caddy-smtp/internal/peertest"
)

func TestMain(m *testing.M) { os.Exit(peertest.RunIsolated(m)) }

const (
	user     = "admin"
	password = "queue page password"
)

// site runs Caddy with the queue page behind basic_auth under /queue/, and
// smtp_send under /send, the smtp app deferring every recipient of
// soft.test.
func site(t *testing.T) (base string) {
	t.Helper()
	soft := peertest.StartSink(t, peertest.SinkOptions{Flags: []string{"-r", "rcpt"}})
	good := peertest.StartSink(t, peertest.SinkOptions{})
	port := peertest.FreePort(t)
	hash, err := bcrypt.GenerateFromPassword([]byte(password), bcrypt.MinCost)
	require.NoError(t, err)
	caddyfile := fmt.Sprintf(`{
	admin off
	smtp {
		hostname out.example.org
		queue {
			path %s
			retry 1h
		}
		next_hop {
			if "rcpt_domain.endsWith('soft.test')" soft
			else good
		}
		remote soft {
			address 127.0.0.1
			port %d
		}
		remote good {
			address 127.0.0.1
			port %d
		}
	}
}

http://127.0.0.1:%d {
	bind 127.0.0.1
	handle_path /queue/* {
		basic_auth {
			%s %s
		}
		smtp_queue
	}
	handle /send {
		smtp_send
	}
}
`, t.TempDir(), soft.Port, good.Port, port, user, hash)
	cfg, warnings, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(caddyfile), nil)
	require.NoError(t, err)
	require.Empty(t, warnings)
	require.NoError(t, caddy.Load(cfg, true))
	t.Cleanup(func() { _ = caddy.Stop() })
	return fmt.Sprintf("http://127.0.0.1:%d", port)
}

func send(t *testing.T, base, from, to string) string {
	t.Helper()
	q := url.Values{"from": {from}, "to": {to}}
	resp, err := http.Post(base+"/send?"+q.Encode(), "message/rfc822", strings.NewReader("Subject: page\r\n\r\nhi\r\n"))
	require.NoError(t, err)
	defer resp.Body.Close()
	var out map[string]string
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&out))
	require.Equal(t, http.StatusAccepted, resp.StatusCode, "%v", out)
	return out["id"]
}

func authHeader() string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+password))
}

// TestAccess: without credentials the page and its API are 401; a request
// that changes the queue needs the page's header and the page's origin.
func TestAccess(t *testing.T) {
	base := site(t)
	for _, path := range []string{"/queue/", "/queue/api/", "/queue/api/summary"} {
		resp, err := http.Get(base + path)
		require.NoError(t, err)
		resp.Body.Close()
		assert.Equal(t, http.StatusUnauthorized, resp.StatusCode, path)
	}
	do := func(method, path string, header http.Header) int {
		req, err := http.NewRequest(method, base+path, nil)
		require.NoError(t, err)
		req.Header = header
		req.Header.Set("Authorization", authHeader())
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	assert.Equal(t, http.StatusOK, do(http.MethodGet, "/queue/", http.Header{}))
	assert.Equal(t, http.StatusOK, do(http.MethodGet, "/queue/api/summary", http.Header{}))
	assert.Equal(t, http.StatusForbidden, do(http.MethodPost, "/queue/api/pause", http.Header{}),
		"a form of another site could post this with the browser's credentials")
	assert.Equal(t, http.StatusForbidden, do(http.MethodPost, "/queue/api/pause",
		http.Header{"Smtp-Queue-Request": {"1"}, "Origin": {"http://evil.example"}}))
	assert.Equal(t, http.StatusOK, do(http.MethodPost, "/queue/api/resume", http.Header{"Smtp-Queue-Request": {"1"}}))
}

// TestPageInChromium opens the page in a real browser: it filters the
// list, holds a message and sees it held.
func TestPageInChromium(t *testing.T) {
	peertest.Need(t, "/usr/bin/chromium")
	base := site(t)
	var ids []string
	for i := range 3 {
		ids = append(ids, send(t, base, "app@example.org", fmt.Sprintf("u%d@soft.test", i)))
	}
	other := send(t, base, "app@example.org", "x@other.soft.test")

	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath("/usr/bin/chromium"), chromedp.NoSandbox, chromedp.Headless, chromedp.DisableGPU,
		chromedp.Flag("disable-background-networking", true), chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true), chromedp.Flag("no-first-run", true), chromedp.Flag("disable-quic", true),
		chromedp.UserDataDir(t.TempDir()))
	actx, cancel := chromedp.NewExecAllocator(t.Context(), opts...)
	defer cancel()
	ctx, cancel := chromedp.NewContext(actx)
	defer cancel()
	ctx, cancel = context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	screenshot := func() {
		sctx, scancel := context.WithTimeout(ctx, 10*time.Second)
		defer scancel()
		if png, err := chromedp.Run(sctx, chromedp.CaptureScreenshot()); err == nil {
			dir := os.Getenv("SMTP_TEST_ARTIFACTS")
			if dir == "" {
				dir = os.TempDir()
			}
			path := filepath.Join(dir, "queuepage-failure.png")
			_ = os.WriteFile(path, png, 0o644)
			t.Logf("screenshot: %s", path)
		}
	}
	defer func() {
		if t.Failed() {
			screenshot()
		}
	}()

	rowState := func(id string) string {
		return fmt.Sprintf(`(document.querySelector('#messages tr[data-id=%q] td.state') || {}).textContent || ""`, id)
	}
	// poll waits, at most 20 seconds, for a JavaScript condition.
	poll := func(expr string) chromedp.Action[chromedp.Void] { return peertest.PollJS(expr, 20*time.Second) }
	err := chromedp.Do(ctx,
		chromedp.Func(func(ctx context.Context, _ *chromedp.Target) error {
			if _, err := chromedp.Call(ctx, network.Enable, network.EnableParams{}); err != nil {
				return err
			}
			_, err := chromedp.Call(ctx, network.SetExtraHTTPHeaders, network.SetExtraHTTPHeadersParams{
				Headers: network.Headers{"Authorization": authHeader()}})
			return err
		}),
		chromedp.Navigate(base+"/queue/"),
		poll(`document.querySelectorAll('#messages tbody tr').length === 4`),
		chromedp.SendKeys(chromedp.CSS(`#filters input[name=to]`), "x@other.soft.test"),
		chromedp.Click(chromedp.CSS(`#filters button[type=submit]`)),
		poll(`document.querySelectorAll('#messages tbody tr').length === 1`),
		chromedp.Click(chromedp.CSS(fmt.Sprintf(`#messages tr[data-id=%q] button[data-action=hold]`, other))),
		poll("("+rowState(other)+`) === "held"`),
	)
	require.NoError(t, err)
	rows, err := chromedp.Run(ctx, chromedp.Evaluate[int](`document.querySelectorAll('#messages tbody tr').length`))
	require.NoError(t, err)
	state, err := chromedp.Run(ctx, chromedp.Evaluate[string](rowState(other)))
	require.NoError(t, err)
	assert.Equal(t, 1, rows, "the filter selects the one message")
	assert.Equal(t, "held", state)

	// The hold is real: the queue says so.
	req, err := http.NewRequest(http.MethodGet, base+"/queue/api/"+other, nil)
	require.NoError(t, err)
	req.Header.Set("Authorization", authHeader())
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	var m map[string]any
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&m))
	assert.Equal(t, "held", m["state"])
	_ = ids
}
