package pgstore

import (
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/seed7b014b84/caddy-smtp/internal/peertest"
	"github.com/seed7b014b84/caddy-smtp/queue"
	"github.com/seed7b014b84/caddy-smtp/queue/storetest"
)

// BenchmarkAdd stores 1 KiB messages from 20 writers at once, with
// PostgreSQL's fsync on, as a queue accepting from many clients does:
// what group commit is for.
func BenchmarkAdd(b *testing.B) {
	pg := peertest.StartPostgres(b, peertest.PostgresOptions{Fsync: true})
	url := pg.CreateDatabase(b, "bench")
	s, err := Open(b.Context(), url, "bench", nil)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = s.Close() })
	body := "Subject: bench\r\n\r\n" + strings.Repeat("x", 1000) + "\r\n"
	base := time.Now()
	var n atomic.Int64
	b.SetParallelism(20)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			i := n.Add(1)
			m := storetest.NewMessage(queue.NewID(base.Add(time.Duration(i))), base, "a@example.org", "b@example.net")
			if err := s.Add(b.Context(), m, strings.NewReader(body)); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
}
