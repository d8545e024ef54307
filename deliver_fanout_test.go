package caddysmtp

import (
	"fmt"
	"net"
	"runtime"
	"runtime/metrics"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/seed7b014b84/caddy-smtp/transport"
)

// BenchmarkDeliverFanout delivers one message to 100,000 recipients in
// 100,000 domains, with a DNS server that never answers (a socket nobody
// reads, on loopback): every route waits its lookup's timeout. It reports
// the peak of the Go heap and goroutine stacks (issue 10, item 16: a
// goroutine per domain took 1.5 GB).
//
//	go test -run x -bench DeliverFanout -benchtime 1x . 2>&1 | grep Benchmark
func BenchmarkDeliverFanout(b *testing.B) {
	silent, err := net.ListenPacket("udp", "127.0.0.1:0")
	require.NoError(b, err)
	defer silent.Close()
	app := provisioned(b, fmt.Sprintf(`{"hostname": "out.example.org",
		"resolver": {"servers": ["udp://%s"], "timeout": "20ms", "attempts": 1, "try_tcp_on_error": false}}`, silent.LocalAddr()))
	const n = 100000
	msg := &Message{From: "a@example.org", Body: strings.NewReader("Subject: x\r\n\r\ny\r\n"), Size: 17}
	for i := range n {
		msg.To = append(msg.To, transport.Recipient{Addr: fmt.Sprintf("u@d%d.example", i)})
	}
	runtime.GC()
	base := heapAndStacks()
	var peak atomic.Uint64
	stop := make(chan struct{})
	go func() {
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
				if v := heapAndStacks(); v > peak.Load() {
					peak.Store(v)
				}
			}
		}
	}()
	b.ResetTimer()
	for range b.N {
		report, err := app.Deliver(b.Context(), msg)
		require.NoError(b, err)
		require.Len(b, report.Recipients, n)
	}
	b.StopTimer()
	close(stop)
	b.ReportMetric(float64(peak.Load()-min(base, peak.Load()))/(1<<20), "peak-MB")
	b.ReportMetric(float64(runtime.NumGoroutine()), "goroutines-after")
}

// heapAndStacks is the memory the Go runtime holds in heap objects and
// goroutine stacks.
func heapAndStacks() uint64 {
	s := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}, {Name: "/memory/classes/heap/stacks:bytes"}}
	metrics.Read(s)
	return s[0].Value.Uint64() + s[1].Value.Uint64()
}
