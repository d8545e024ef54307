package pgstore

import (
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/seed7b014b84/caddy-smtp/internal/peertest"
	"github.com/seed7b014b84/caddy-smtp/queue"
	"github.com/seed7b014b84/caddy-smtp/queue/storetest"
)

// TestGroupCommit: messages arriving together are committed together,
// and one the database refuses (a duplicate ID) fails alone; after Close,
// Add refuses as an unavailable queue, without blocking.
func TestGroupCommit(t *testing.T) {
	pg := peertest.StartPostgres(t, peertest.PostgresOptions{})
	s, err := Open(t.Context(), pg.CreateDatabase(t, "group"), "test", nil)
	require.NoError(t, err)

	base := time.Now().Truncate(time.Millisecond)
	dup := storetest.NewMessage(queue.NewID(base), base, "a@example.org", "b@example.net")
	require.NoError(t, s.Add(t.Context(), dup, strings.NewReader("first")))

	const n = 200
	errs := make([]error, n)
	ids := make([]string, n)
	var wg sync.WaitGroup
	for i := range n {
		id := queue.NewID(base.Add(time.Duration(i+1) * time.Microsecond))
		if i == n/2 {
			id = dup.ID
		}
		ids[i] = id
		wg.Add(1)
		go func() {
			defer wg.Done()
			m := storetest.NewMessage(id, base, "a@example.org", "b@example.net")
			errs[i] = s.Add(t.Context(), m, strings.NewReader("Subject: g\r\n\r\nbody "+id+"\r\n"))
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if i == n/2 {
			assert.Error(t, err, "the duplicate is refused")
			continue
		}
		require.NoError(t, err, "message %d", i)
		b, err := s.Body(t.Context(), ids[i])
		require.NoError(t, err)
		buf := make([]byte, b.Size())
		_, err = b.ReadAt(buf, 0)
		require.NoError(t, err)
		assert.Equal(t, "Subject: g\r\n\r\nbody "+ids[i]+"\r\n", string(buf))
		require.NoError(t, b.Close())
	}
	st, err := s.Stats(t.Context())
	require.NoError(t, err)
	assert.Equal(t, int64(n), st.Messages, "199 and the first")

	require.NoError(t, s.Close())
	done := make(chan error, 1)
	go func() {
		done <- s.Add(t.Context(), storetest.NewMessage(queue.NewID(base.Add(time.Hour)), base, "a@example.org", "b@example.net"), strings.NewReader("x"))
	}()
	select {
	case err := <-done:
		assert.Error(t, err)
	case <-time.After(10 * time.Second):
		t.Fatal("Add after Close blocked")
	}
}
