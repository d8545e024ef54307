package resolver

import (
	"fmt"
	"math/rand/v2"
	"sync/atomic"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"
)

// BenchmarkLookupMXCached is a lookup answered from the cache.
func BenchmarkLookupMXCached(b *testing.B) {
	l := startLab(b)
	r := l.resolver(b, Config{})
	ctx := b.Context()
	_, err := r.LookupMX(ctx, "example.test")
	require.NoError(b, err)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := r.LookupMX(ctx, "example.test"); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkLookupMXCold is a lookup of a name nobody asked before, so that
// neither our cache nor unbound's has it (unbound asks Knot), from 8
// goroutines per core.
func BenchmarkLookupMXCold(b *testing.B) {
	l := startLab(b)
	r := l.resolver(b, Config{})
	ctx := b.Context()
	var n atomic.Int64
	b.ReportAllocs()
	b.SetParallelism(8)
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			name := fmt.Sprintf("c%d.mix.unsigned.test", n.Add(1))
			if _, err := r.LookupMX(ctx, name); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "lookups/s")
}

// BenchmarkHitRatio replays a delivery-like mix: per message, the MX of the
// recipient's domain (domains drawn from a Zipf distribution over 2000
// domains, as a real sender's recipients are) and the addresses of its MX
// host (shared by all of them, as big providers' are), with a cache of
// 1000 answers. It reports the share of questions the cache answered.
func BenchmarkHitRatio(b *testing.B) {
	l := startLab(b)
	r := l.resolver(b, Config{Cache: &CacheConfig{Size: 1000}})
	ctx := b.Context()
	zipf := rand.NewZipf(rand.New(rand.NewPCG(1, 2)), 1.1, 1, 1999)
	hits0 := testutil.ToFloat64(cacheHits)
	asked := 0
	for b.Loop() {
		domain := fmt.Sprintf("d%d.mix.unsigned.test", zipf.Uint64())
		mx, err := r.LookupMX(ctx, domain)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := r.LookupA(ctx, mx.Hosts[0].Host); err != nil {
			b.Fatal(err)
		}
		asked += 2
	}
	b.ReportMetric(100*(testutil.ToFloat64(cacheHits)-hits0)/float64(asked), "hit%")
}
