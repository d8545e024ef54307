package pgstore

import (
	"fmt"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/seed7b014b84/caddy-smtp/internal/peertest"
	"github.com/seed7b014b84/caddy-smtp/queue"
	"github.com/seed7b014b84/caddy-smtp/queue/storetest"
)

// TestSuite runs the stores' suite against PostgreSQL: a private cluster,
// a database per store the suite opens.
func TestSuite(t *testing.T) {
	pg := peertest.StartPostgres(t, peertest.PostgresOptions{})
	var mu sync.Mutex
	dbs := map[string]string{}
	storetest.Run(t, func(t *testing.T, dir string) queue.Store {
		mu.Lock()
		url, ok := dbs[dir]
		if !ok {
			url = pg.CreateDatabase(t, fmt.Sprintf("suite%d", len(dbs)))
			dbs[dir] = url
		}
		mu.Unlock()
		s, err := Open(t.Context(), url, "test", nil)
		require.NoError(t, err)
		t.Cleanup(func() { _ = s.Close() })
		return s
	})
}
