package pgstore

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/seed7b014b84/caddy-smtp/delivery"

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

// TestLeaseCutBetweenItsWrites: the database goes away (an immediate
// shutdown, as a crash) after Lease took a message and before it wrote the
// attempt mark. Lease fails; once the database is back, the message stays
// leased until the lease ends (no instance takes it meanwhile), and is then
// taken again with no attempt counted for the one never made.
func TestLeaseCutBetweenItsWrites(t *testing.T) {
	// Durable commits, as in production: the shutdown is a crash.
	pg := peertest.StartPostgres(t, peertest.PostgresOptions{Fsync: true})
	s, err := Open(t.Context(), pg.CreateDatabase(t, "cut"), "test", nil)
	require.NoError(t, err)
	t.Cleanup(func() { _ = s.Close() })
	now := time.Now().Truncate(time.Millisecond)
	m := storetest.NewMessage(queue.NewID(now), now, "a@example.org", "b@example.net")
	require.NoError(t, s.Add(t.Context(), m, strings.NewReader("Subject: x\r\n\r\ny\r\n")))

	leases, err := s.Lease(t.Context(), now, 10, 5*time.Second, func(m *queue.Message) {
		pg.Stop(true)
		m.Recipients[0].Attempts++
		m.Recipients[0].NextAttempt = now.Add(time.Hour)
		m.NextAttempt = now.Add(time.Hour)
	})
	require.Error(t, err)
	assert.ErrorIs(t, err, delivery.ErrQueueUnavailable)
	assert.Empty(t, leases)

	pg.Start()
	var got *queue.Message
	assert.Eventually(t, func() bool {
		got, err = s.Get(t.Context(), m.ID)
		return err == nil
	}, 20*time.Second, 100*time.Millisecond, "the store reconnects")
	require.NoError(t, err)
	assert.Zero(t, got.Recipients[0].Attempts, "no attempt was made, none is counted")
	leases, err = s.Lease(t.Context(), now.Add(time.Second), 10, 5*time.Second, storeMark(now))
	require.NoError(t, err)
	assert.Empty(t, leases, "leased until its lease ends")
	leases, err = s.Lease(t.Context(), now.Add(6*time.Second), 10, 5*time.Second, storeMark(now))
	require.NoError(t, err)
	require.Len(t, leases, 1, "taken again once the lease ended")
	assert.Equal(t, 1, leases[0].Message.Recipients[0].Attempts)
	got, err = s.Get(t.Context(), m.ID)
	require.NoError(t, err)
	assert.Equal(t, 1, got.Recipients[0].Attempts, "the attempt mark is written")
}

// storeMark counts an attempt of every due recipient, next due in an hour.
func storeMark(now time.Time) func(*queue.Message) {
	return func(m *queue.Message) {
		for i := range m.Recipients {
			m.Recipients[i].Attempts++
			m.Recipients[i].NextAttempt = now.Add(time.Hour)
		}
		m.NextAttempt = now.Add(time.Hour)
	}
}
