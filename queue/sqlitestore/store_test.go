package sqlitestore

import (
	"context"
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

// TestLeaseHandsSmallBodies: bodies of up to 8 KiB come with the lease,
// read by the same query; larger ones are read when the attempt asks.
func TestLeaseHandsSmallBodies(t *testing.T) {
	s := open(t, t.TempDir())
	small := storetest.NewMessage(queue.NewID(base), base, "a@example.org", "b@example.net")
	large := storetest.NewMessage(queue.NewID(base.Add(time.Millisecond)), base, "a@example.org", "b@example.net")
	require.NoError(t, s.Add(t.Context(), small, strings.NewReader(strings.Repeat("s", 8<<10))))
	require.NoError(t, s.Add(t.Context(), large, strings.NewReader(strings.Repeat("l", 8<<10+1))))
	leases, err := s.Lease(t.Context(), base, 10, time.Minute, func(*queue.Message) {})
	require.NoError(t, err)
	require.Len(t, leases, 2)
	assert.Equal(t, strings.Repeat("s", 8<<10), string(leases[0].Body))
	assert.Nil(t, leases[1].Body)
}

// BenchmarkMessage is the store's work for one message delivered at its
// first attempt, as the scheduler does it: Add, Lease, Release (which
// removes it), with b.N messages in flight through 20 goroutines, on the
// test's temporary folder (fsync on).
func BenchmarkMessage(b *testing.B) {
	s, err := Open(b.TempDir(), Options{MinFree: 1})
	require.NoError(b, err)
	defer s.Close()
	body := strings.Repeat("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde\r\n", 16) // 1 KiB
	var mu sync.Mutex
	n := 0
	b.ReportAllocs()
	b.ResetTimer()
	var wg sync.WaitGroup
	for range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				mu.Lock()
				if n >= b.N {
					mu.Unlock()
					return
				}
				n++
				mu.Unlock()
				now := time.Now()
				m := storetest.NewMessage(queue.NewID(now), now, "a@example.org", "b@example.net")
				if err := s.Add(context.Background(), m, strings.NewReader(body)); err != nil {
					b.Error(err)
					return
				}
				leases, err := s.Lease(context.Background(), time.Now(), 1, time.Minute, func(m *queue.Message) {
					for i := range m.Recipients {
						m.Recipients[i].Attempts++
						m.Recipients[i].NextAttempt = now.Add(time.Hour)
					}
					m.NextAttempt = now.Add(time.Hour)
				})
				if err != nil {
					b.Error(err)
					return
				}
				for _, l := range leases {
					if l.Body == nil {
						rb, err := s.Body(context.Background(), l.Message.ID)
						if err != nil {
							b.Error(err)
							return
						}
						_ = rb.Close()
					}
					for i := range l.Message.Recipients {
						l.Message.Recipients[i].State = queue.Delivered
					}
					if err := s.Release(context.Background(), l, nil); err != nil {
						b.Error(err)
						return
					}
				}
			}
		}()
	}
	wg.Wait()
}
