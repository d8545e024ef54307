package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/seed7b014b84/caddy-smtp/internal/peertest"
)

// caddy runs the binary with args and returns its stdout, stderr and error.
func caddy(t *testing.T, args ...string) (string, string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, caddyBin, args...)
	cmd.Dir = repoRoot
	cmd.Env = isolatedEnv(t)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	return stdout.String(), stderr.String(), err
}

// isolatedEnv is the environment for a command of the binary: Caddy's data
// and config folders (and so the default queue path) in a temporary
// folder, never the user's.
func isolatedEnv(t *testing.T) []string {
	home := t.TempDir()
	return append(os.Environ(), "HOME="+home, "XDG_DATA_HOME="+home, "XDG_CONFIG_HOME="+home)
}

func TestListModules(t *testing.T) {
	out, stderr, err := caddy(t, "list-modules")
	require.NoError(t, err, stderr)
	modules := strings.Fields(out)
	assert.Contains(t, modules, "smtp")
	assert.Contains(t, modules, "layer4")
}

// TestAdaptMainExample checks the README's promise: adapting
// examples/Caddyfile prints examples/caddy.json.
func TestAdaptMainExample(t *testing.T) {
	want, err := os.ReadFile(filepath.Join(repoRoot, "examples/caddy.json"))
	require.NoError(t, err)

	pretty, stderr, err := caddy(t, "adapt", "--config", "examples/Caddyfile", "--pretty")
	require.NoError(t, err, stderr)
	assert.Equal(t, string(want), pretty)
	assert.NotContains(t, stderr, "WARN", "adapting gives no warnings")

	compact, stderr, err := caddy(t, "adapt", "--config", "examples/Caddyfile")
	require.NoError(t, err, stderr)
	var buf bytes.Buffer
	require.NoError(t, json.Compact(&buf, want))
	assert.Equal(t, buf.String()+"\n", compact)
}

// TestValidateExamples runs `caddy validate` on every example, in both forms.
func TestValidateExamples(t *testing.T) {
	files := []string{"examples/Caddyfile", "examples/caddy.json"}
	for _, glob := range []string{"examples/reference/*.caddyfile", "examples/reference/*.json"} {
		matches, err := filepath.Glob(filepath.Join(repoRoot, glob))
		require.NoError(t, err)
		for _, m := range matches {
			rel, _ := filepath.Rel(repoRoot, m)
			files = append(files, rel)
		}
	}
	require.GreaterOrEqual(t, len(files), 18)
	for _, f := range files {
		t.Run(f, func(t *testing.T) {
			stdout, stderr, err := caddy(t, "validate", "--config", f)
			require.NoError(t, err, stderr)
			assert.Contains(t, stdout, "Valid configuration")
		})
	}
}

func TestValidateRejects(t *testing.T) {
	path := filepath.Join(t.TempDir(), "bad.json")
	require.NoError(t, os.WriteFile(path, []byte(`{"apps":{"smtp":{"remotes":{"r":{"address":"a.example","port":99999}}}}}`), 0o644))
	_, stderr, err := caddy(t, "validate", "--config", path)
	require.Error(t, err)
	assert.Contains(t, stderr, "remotes.r.port: 99999 is out of range 1-65535")

	bad := filepath.Join(t.TempDir(), "Caddyfile")
	require.NoError(t, os.WriteFile(bad, []byte("{\n\tsmtp {\n\t\tip_strategy sideways\n\t}\n}\n"), 0o644))
	_, stderr, err = caddy(t, "validate", "--config", bad)
	require.Error(t, err)
	assert.Contains(t, stderr, bad+":3")
	assert.Contains(t, stderr, `unknown ip_strategy \"sideways\"`)
}

// freePort is a fresh loopback port, never handed out before in this test
// binary (peertest.FreePort: the peers bind with SO_REUSEPORT).
func freePort(t *testing.T) int {
	t.Helper()
	return peertest.FreePort(t)
}

// TestRunAndReload runs Caddy on examples/Caddyfile (with its admin API on a
// free loopback port), then changes the smtp app through the admin API: a
// good change takes effect, a bad one is refused with its key path and
// leaves the running config as it was.
func TestRunAndReload(t *testing.T) {
	example, err := os.ReadFile(filepath.Join(repoRoot, "examples/Caddyfile"))
	require.NoError(t, err)
	admin := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	body := strings.Replace(string(example), "{\n", "{\n\tadmin "+admin+"\n", 1)
	// The example's listeners, on free ports.
	body = strings.ReplaceAll(body, "127.0.0.1:2525", fmt.Sprintf("127.0.0.1:%d", freePort(t)))
	body = strings.ReplaceAll(body, "127.0.0.1:8025", fmt.Sprintf("127.0.0.1:%d", freePort(t)))
	cfgPath := filepath.Join(t.TempDir(), "Caddyfile")
	require.NoError(t, os.WriteFile(cfgPath, []byte(body), 0o644))

	var logs lockedBuffer
	cmd := exec.Command(caddyBin, "run", "--config", cfgPath)
	cmd.Dir = t.TempDir()
	cmd.Env = append(os.Environ(), "HOME="+cmd.Dir, "XDG_DATA_HOME="+cmd.Dir, "XDG_CONFIG_HOME="+cmd.Dir)
	cmd.Stdout, cmd.Stderr = &logs, &logs
	require.NoError(t, cmd.Start())
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		if t.Failed() {
			t.Logf("caddy output:\n%s", logs.String())
		}
	})

	base := "http://" + admin
	// No kept connections: Caddy restarts its admin server at every config
	// change, closing them, and a request sent on one as it closes gets EOF.
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	get := func(path string) (int, string) {
		resp, err := client.Get(base + path)
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	send := func(method, path, body string) (int, string) {
		req, err := http.NewRequest(method, base+path, strings.NewReader(body))
		require.NoError(t, err)
		req.Header.Set("Content-Type", "application/json")
		resp, err := client.Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}

	require.Eventually(t, func() bool {
		code, _ := get("/config/apps/smtp/hostname")
		return code == http.StatusOK
	}, 20*time.Second, 100*time.Millisecond, "admin API did not come up")
	assert.Contains(t, logs.String(), "smtp app started")

	code, out := get("/config/apps/smtp/hostname")
	require.Equal(t, http.StatusOK, code)
	assert.JSONEq(t, `"mx.example.org"`, out)

	// A good change through the admin API is applied.
	code, out = send(http.MethodPatch, "/config/apps/smtp/ip_strategy", `"ipv6-then-ipv4"`)
	require.Equal(t, http.StatusOK, code, out)
	code, out = get("/config/apps/smtp/ip_strategy")
	require.Equal(t, http.StatusOK, code)
	assert.JSONEq(t, `"ipv6-then-ipv4"`, out)

	// A bad change is refused with the key path, and nothing changes.
	// (Caddy answers 500 for a config that fails to provision via /config.)
	code, out = send(http.MethodPatch, "/config/apps/smtp/limits", `{"mx": 0}`)
	assert.GreaterOrEqual(t, code, 400)
	assert.Contains(t, out, "limits.mx: 0 is below 1")
	code, out = send(http.MethodPost, "/load", `{"admin":{"listen":"`+admin+`"},"apps":{"smtp":{"hostnme":"x"}}}`)
	assert.Equal(t, http.StatusBadRequest, code)
	assert.Contains(t, out, "hostnme: unknown key")
	code, out = get("/config/apps/smtp/ip_strategy")
	require.Equal(t, http.StatusOK, code)
	assert.JSONEq(t, `"ipv6-then-ipv4"`, out)

	// A whole new config through /load replaces the app.
	code, out = send(http.MethodPost, "/load", `{"admin":{"listen":"`+admin+`"},"apps":{"smtp":{"hostname":"out.example.net"}}}`)
	require.Equal(t, http.StatusOK, code, out)
	code, out = get("/config/apps/smtp/hostname")
	require.Equal(t, http.StatusOK, code)
	assert.JSONEq(t, `"out.example.net"`, out)

	// Stop through the admin API: the process exits cleanly and promptly.
	// (Caddy may exit before its answer is flushed, so the answer is not
	// checked; the exit is.)
	if resp, err := client.Post(base+"/stop", "application/json", nil); err == nil {
		resp.Body.Close()
	}
	select {
	case err := <-exited:
		require.NoError(t, err)
	case <-time.After(15 * time.Second):
		t.Fatal("caddy did not exit within 15s of /stop")
	}
}

// lockedBuffer collects a process's output while the test reads it.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
