package main

import (
	"context"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/seed7b014b84/caddy-smtp/internal/peertest"
)

// TestSmoke runs the benchmark command on a few messages, so that it keeps
// working: it must measure all three senders and print the table. (The
// figures themselves are for BENCHMARKS.md, not for a test.)
func TestSmoke(t *testing.T) {
	peertest.Need(t, "postfix", "smtp-sink", "smtp-source", "postconf", "postqueue")
	bin := filepath.Join(t.TempDir(), "smtpbench")
	build := exec.Command("go", "build", "-o", bin, ".")
	out, err := build.CombinedOutput()
	require.NoError(t, err, "%s", out)

	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "-n", "300", "-conns", "4", "-timeout", "1m")
	stdout, err := cmd.Output()
	var stderr []byte
	if ee, ok := err.(*exec.ExitError); ok {
		stderr = ee.Stderr
	}
	require.NoError(t, err, "%s\n%s", stdout, stderr)
	table := string(stdout)
	assert.Contains(t, table, "this app")
	assert.Contains(t, table, "Postfix relay")
	assert.Contains(t, table, "smtp-source")
	assert.Contains(t, table, "| 300 |", "each sender delivered all 300")
}
