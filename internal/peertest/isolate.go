package peertest

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

// RunIsolated runs a package's tests (call it from TestMain: os.Exit(
// peertest.RunIsolated(m))) with Caddy's data and config folders in a
// temporary folder of their own (XDG_DATA_HOME, XDG_CONFIG_HOME), so that
// the configs they run (the smtp app's queue and DKIM keys live in Caddy's
// data folder by default, and Caddy autosaves its config) write nothing
// under the user's home. The folder is removed when the tests end.
func RunIsolated(m *testing.M) int {
	dir, err := os.MkdirTemp("", "caddy-smtp-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "peertest:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	os.Setenv("XDG_DATA_HOME", filepath.Join(dir, "data"))
	os.Setenv("XDG_CONFIG_HOME", filepath.Join(dir, "config"))
	return m.Run()
}
