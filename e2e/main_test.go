// Package e2e tests a real Caddy binary built with this module from
// xcaddy.json, the way a user builds and runs it.
package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// caddyBin is the binary under test, built once by TestMain.
var caddyBin string

// repoRoot is the repository's top folder.
var repoRoot string

// TestMain builds Caddy from xcaddy.json with the repository's build
// command (go run ./cmd/caddybuild), unless CADDY_BIN names a binary built
// already.
func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	root, err := filepath.Abs("..")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	repoRoot = root
	if bin := os.Getenv("CADDY_BIN"); bin != "" {
		caddyBin = bin
		return m.Run()
	}
	dir, err := os.MkdirTemp("", "caddy-smtp-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	caddyBin = filepath.Join(dir, "caddy")
	build := exec.Command("go", "run", "./cmd/caddybuild", "-recipe", "xcaddy.json", "-o", caddyBin)
	build.Dir = repoRoot
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "building caddy from xcaddy.json failed: %v\n%s", err, out)
		return 1
	}
	return m.Run()
}
