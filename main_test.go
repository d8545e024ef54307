package caddysmtp

import (
	"os"
	"testing"
)

// TestMain gives the tests a data and a config folder of their own, so
// that the configs they run (each with the smtp app's queue, in Caddy's
// data folder by default, and Caddy's autosaved config) write nothing
// under the user's home.
func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "caddy-smtp-test-")
	if err != nil {
		panic(err)
	}
	os.Setenv("XDG_DATA_HOME", dir+"/data")
	os.Setenv("XDG_CONFIG_HOME", dir+"/config")
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}
