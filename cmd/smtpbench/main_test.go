package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/seed7b014b84/caddy-smtp/internal/peertest"
)

// The smoke tests run each mode of the command on a few messages, so that
// it keeps working: it must measure every row and print its table. (The
// figures themselves are for BENCHMARKS.md, not for a test.) The command
// and Caddy (from xcaddy.json, unless CADDY_BIN names a binary built
// already) are built once.

var (
	benchBin, caddyBin string
	buildErr           error
)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "smtpbench-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	benchBin = filepath.Join(dir, "smtpbench")
	if out, err := exec.Command("go", "build", "-o", benchBin, ".").CombinedOutput(); err != nil {
		buildErr = fmt.Errorf("building smtpbench: %w\n%s", err, out)
	}
	caddyBin = os.Getenv("CADDY_BIN")
	if caddyBin == "" && buildErr == nil {
		caddyBin = filepath.Join(dir, "caddy")
		build := exec.Command("go", "run", "./cmd/caddybuild", "-recipe", "xcaddy.json", "-o", caddyBin)
		build.Dir = filepath.Join("..", "..")
		if out, err := build.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("building caddy: %w\n%s", err, out)
		}
	}
	code := m.Run()
	_ = os.RemoveAll(dir)
	os.Exit(code)
}

// runBench runs the command with args and returns its table (stdout).
func runBench(t *testing.T, limit time.Duration, args ...string) string {
	t.Helper()
	peertest.Need(t, "postfix", "smtp-sink", "smtp-source", "postconf", "postqueue")
	require.NoError(t, buildErr)
	ctx, cancel := context.WithTimeout(t.Context(), limit)
	defer cancel()
	args = append([]string{"-caddy", caddyBin, "-quiet", "0"}, args...)
	cmd := exec.CommandContext(ctx, benchBin, args...)
	stdout, err := cmd.Output()
	var stderr []byte
	if ee, ok := err.(*exec.ExitError); ok {
		stderr = ee.Stderr
	}
	require.NoError(t, err, "%s\n%s", stdout, stderr)
	t.Logf("%s", stdout)
	return string(stdout)
}

func TestSmokeE2E(t *testing.T) {
	table := runBench(t, 3*time.Minute, "-n", "300", "-conns", "4", "-timeout", "1m")
	assert.Contains(t, table, "| this app (caddy: smtp_submission → queue → delivery) | 300 |")
	assert.Contains(t, table, "| Postfix (smtpd → queue → smtp) | 300 |")
	assert.Contains(t, table, "| smtp-source → smtp-sink (ceiling) | 300 |")
	assert.Contains(t, table, "caddy logged 300 queued, 300 delivered, 0 deferred, 0 failed")
}

func TestSmokeTransport(t *testing.T) {
	table := runBench(t, 3*time.Minute, "-mode", "transport", "-n", "300", "-conns", "4", "-timeout", "1m")
	assert.Contains(t, table, "this app")
	assert.Contains(t, table, "Postfix relay")
	assert.Contains(t, table, "smtp-source")
	assert.Contains(t, table, "| 300 |", "each sender delivered all 300")
}

func TestSmokeBacklog(t *testing.T) {
	table := runBench(t, 3*time.Minute, "-mode", "backlog", "-n", "400", "-ref", "200", "-conns", "4",
		"-retry", "5s", "-ref-retry", "5s")
	assert.Contains(t, table, "| 200 messages |")
	assert.Contains(t, table, "| 400 messages |")
	assert.Contains(t, table, "200 queued, 200 deferred, 0 delivered, 0 failed while filling; 200 delivered, 0 deferred, 0 failed after the restart")
	assert.Contains(t, table, "400 queued, 400 deferred, 0 delivered, 0 failed while filling; 400 delivered, 0 deferred, 0 failed after the restart")
}

func TestSmokeLarge(t *testing.T) {
	table := runBench(t, 3*time.Minute, "-mode", "large", "-large", "3000000")
	for _, path := range []string{"SMTP submission", "HTTP smtp_send, raw", "HTTP smtp_send, JSON", "admin API", "`caddy sendmail`"} {
		assert.Contains(t, table, "| "+path)
	}
	assert.Contains(t, table, "exit 0")
	assert.Equal(t, 3, strings.Count(table, ": 202 {\"id\":"), "the three HTTP paths answered 202 with an ID")
}
