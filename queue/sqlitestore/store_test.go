package sqlitestore

import (
	"database/sql"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/seed7b014b84/caddy-smtp/delivery"
	"github.com/seed7b014b84/caddy-smtp/queue"
	"github.com/seed7b014b84/caddy-smtp/queue/storetest"
)

func open(t *testing.T, dir string) queue.Store {
	t.Helper()
	s, err := Open(dir, Options{MinFree: 1})
	require.NoError(t, err)
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func TestSuite(t *testing.T) { storetest.Run(t, open) }

var base = time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)

// TestCorruptRecord: a record that cannot be read puts its message on
// hold with the error; the rest of the queue goes on.
func TestCorruptRecord(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir).(*Store)
	bad := storetest.NewMessage(queue.NewID(base), base, "a@example.org", "b@example.net")
	good := storetest.NewMessage(queue.NewID(base.Add(time.Millisecond)), base, "a@example.org", "c@example.net")
	require.NoError(t, s.Add(t.Context(), bad, strings.NewReader("x")))
	require.NoError(t, s.Add(t.Context(), good, strings.NewReader("y")))
	db, err := sql.Open("sqlite", filepath.Join(dir, "queue.db"))
	require.NoError(t, err)
	_, err = db.Exec(`UPDATE messages SET data = '{"id": "broken' WHERE id = ?`, bad.ID)
	require.NoError(t, err)
	require.NoError(t, db.Close())

	leases, err := s.Lease(t.Context(), base, 10, time.Minute, func(*queue.Message) {})
	require.NoError(t, err)
	require.Len(t, leases, 1)
	assert.Equal(t, good.ID, leases[0].Message.ID)
	m, err := s.Get(t.Context(), bad.ID)
	require.NoError(t, err)
	assert.True(t, m.Held)
	assert.Contains(t, m.HoldReason, "corrupt record")
	st, err := s.Stats(t.Context())
	require.NoError(t, err)
	assert.Equal(t, int64(1), st.ByState[queue.Held])
}

// TestMissingBodyFile: a body file that went missing is an error naming
// it, not a panic.
func TestMissingBodyFile(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir)
	m := storetest.NewMessage(queue.NewID(base), base, "a@example.org", "b@example.net")
	require.NoError(t, s.Add(t.Context(), m, strings.NewReader(strings.Repeat("x", InlineMax+10))))
	require.NoError(t, os.Remove(filepath.Join(dir, "bodies", m.ID)))
	_, err := s.Body(t.Context(), m.ID)
	assert.ErrorIs(t, err, queue.ErrCorrupt)
}

// TestOrphanBodies: a body file that no row names (a crash between the
// file and the commit) is removed when the store opens.
func TestOrphanBodies(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir)
	m := storetest.NewMessage(queue.NewID(base), base, "a@example.org", "b@example.net")
	require.NoError(t, s.Add(t.Context(), m, strings.NewReader(strings.Repeat("x", InlineMax+10))))
	require.NoError(t, s.Close())
	orphan := filepath.Join(dir, "bodies", queue.NewID(base.Add(time.Second)))
	require.NoError(t, os.WriteFile(orphan, []byte("left by a crash"), 0o600))
	tmp := filepath.Join(dir, "bodies", queue.NewID(base.Add(2*time.Second))+".tmp")
	require.NoError(t, os.WriteFile(tmp, []byte("half written"), 0o600))
	s = open(t, dir)
	assert.NoFileExists(t, orphan)
	assert.NoFileExists(t, tmp)
	assert.FileExists(t, filepath.Join(dir, "bodies", m.ID))
}

// TestMinFree: under min_free, new messages are refused as a full queue.
func TestMinFree(t *testing.T) {
	s, err := Open(t.TempDir(), Options{MinFree: 1 << 62})
	require.NoError(t, err)
	defer s.Close()
	m := storetest.NewMessage(queue.NewID(base), base, "a@example.org", "b@example.net")
	err = s.Add(t.Context(), m, strings.NewReader("x"))
	assert.ErrorIs(t, err, delivery.ErrQueueFull)
	assert.ErrorContains(t, err, "min_free")
}

// TestGroupCommit: concurrent arrivals share commits.
func TestGroupCommit(t *testing.T) {
	s := open(t, t.TempDir()).(*Store)
	var wg sync.WaitGroup
	for i := range 400 {
		wg.Go(func() {
			m := storetest.NewMessage(queue.NewID(base.Add(time.Duration(i)*time.Millisecond)), base, "a@example.org", "b@example.net")
			assert.NoError(t, s.Add(t.Context(), m, strings.NewReader("x")))
		})
	}
	wg.Wait()
	n, _ := s.Counts()
	assert.Equal(t, int64(400), n)
}
