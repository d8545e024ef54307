package transport

import (
	"bytes"
	"fmt"
	"net"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/seed7b014b84/caddy-smtp/internal/peertest"
)

func benchBody(size int) []byte {
	var b bytes.Buffer
	b.WriteString("From: sender@example.org\r\nTo: rcpt@example.test\r\nSubject: bench\r\n\r\n")
	line := strings.Repeat("0123456789", 7) + "\r\n"
	for b.Len() < size {
		b.WriteString(line)
	}
	return b.Bytes()[:size]
}

// BenchmarkSink delivers messages to smtp-sink over reused sessions: one
// session, and 20 sessions in parallel, with 1 KB and 100 KB bodies. It
// reports messages per second; allocs/op is per message. Postfix's
// smtp-source does the same beside it, as the yardstick.
func BenchmarkSink(b *testing.B) {
	sink := peertest.StartSink(b, peertest.SinkOptions{Backlog: 256, NoDump: true})
	for _, size := range []int{1024, 100 * 1024} {
		body := benchBody(size)
		for _, conns := range []int{1, 20} {
			b.Run(fmt.Sprintf("smtp-source/%dKB/%dconn", size/1024, conns), func(b *testing.B) {
				peertest.Need(b, "smtp-source")
				start := time.Now()
				out, err := exec.CommandContext(b.Context(), "smtp-source", "-d", "-s", fmt.Sprint(conns), "-m", fmt.Sprint(b.N),
					"-l", fmt.Sprint(size), "-f", "sender@example.org", "-t", "rcpt@example.test", sink.Addr).CombinedOutput()
				require.NoError(b, err, "%s", out)
				b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "msgs/s")
			})
			b.Run(fmt.Sprintf("transport/%dKB/%dconn", size/1024, conns), func(b *testing.B) {
				clients := make(chan *Client, conns)
				for range conns {
					conn, err := net.Dial("tcp", sink.Addr)
					require.NoError(b, err)
					c, err := Dial(b.Context(), conn, Options{Hostname: "bench.example.org"})
					require.NoError(b, err)
					clients <- c
				}
				env := envelope("rcpt@example.test")
				env.Size = int64(size)
				b.ReportAllocs()
				b.SetBytes(int64(size))
				start := time.Now()
				var wg sync.WaitGroup
				var failed error
				var mu sync.Mutex
				b.SetParallelism(1)
				work := make(chan struct{}, 1024)
				go func() {
					for range b.N {
						work <- struct{}{}
					}
					close(work)
				}()
				for range conns {
					c := <-clients
					wg.Go(func() {
						defer func() { _ = c.Quit() }()
						for range work {
							res, err := c.Deliver(b.Context(), env, bytes.NewReader(body))
							if err == nil && res[0].Status != Delivered {
								err = fmt.Errorf("%s", res[0].Reply)
							}
							if err != nil {
								mu.Lock()
								failed = err
								mu.Unlock()
								return
							}
						}
					})
				}
				wg.Wait()
				require.NoError(b, failed)
				b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "msgs/s")
			})
		}
	}
}
