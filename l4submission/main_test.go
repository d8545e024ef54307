package l4submission

import (
	"os"
	"testing"

	"github.com/seed7b014b84/caddy-smtp/internal/peertest"
)

// TestMain gives the tests a data and a config folder of their own, so
// that the configs they run (each with the smtp app's queue, in Caddy's
// data folder by default, and Caddy's autosaved config) write nothing
// under the user's home.
func TestMain(m *testing.M) { os.Exit(peertest.RunIsolated(m)) }
