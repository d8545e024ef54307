package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/caddyserver/caddy/v2"
	_ "github.com/caddyserver/caddy/v2/modules/logging" // the file log writer

	caddysmtp "github.com/seed7b014b84/caddy-smtp"
	"github.com/seed7b014b84/caddy-smtp/transport"
)

// startCaddy loads an otherwise empty Caddy config whose default log is a
// JSON file at INFO, as a production Caddy logs (to a file here rather than
// to a terminal, like Postfix's maillog_file). The smtp app provisioned
// from caddy.ActiveContext() logs through it. Without a running config,
// caddy.Context.Logger is a development logger (DEBUG, console, caller
// lookups) on stderr, which is neither what runs in production nor
// something to print 20,000 lines of.
func startCaddy(logFile string) error {
	cfg := map[string]any{
		"admin": map[string]any{"disabled": true, "config": map[string]any{"persist": false}},
		"logging": map[string]any{"logs": map[string]any{"default": map[string]any{
			"writer":  map[string]any{"output": "file", "filename": logFile, "roll": false},
			"encoder": map[string]any{"format": "json"},
			"level":   "INFO",
		}}},
	}
	b, err := json.Marshal(cfg)
	if err != nil {
		return err
	}
	return caddy.Load(b, true)
}

// appResult is what the app phase measured.
type appResult struct {
	result
	startRSS int64 // kB, VmRSS when the phase began
}

// benchApp provisions the smtp app with one remote, the sink, and delivers
// n messages through app.Deliver from conns goroutines.
func benchApp(ctx context.Context, s *sink, n, size, conns int, timeout time.Duration) (*appResult, error) {
	raw := fmt.Sprintf(`{
		"hostname": "bench.example.org",
		"next_hop": "sink",
		"remotes": {"sink": {"address": "127.0.0.1", "port": %d, "concurrency": %d}}
	}`, s.port, conns)
	app := new(caddysmtp.App)
	if err := json.Unmarshal([]byte(raw), app); err != nil {
		return nil, fmt.Errorf("app config: %w", err)
	}
	cctx, cancel := caddy.NewContext(caddy.ActiveContext())
	defer cancel()
	if err := app.Provision(cctx); err != nil {
		return nil, fmt.Errorf("provision: %w", err)
	}
	defer func() { _ = app.Cleanup() }()
	if err := app.Validate(); err != nil {
		return nil, fmt.Errorf("validate: %w", err)
	}

	body := makeMessage(size)
	to := []transport.Recipient{{Addr: "b@example.test"}}

	runtime.GC()
	// Writing 5 to clear_refs resets the peak RSS (VmHWM) to the current
	// RSS, so VmHWM afterwards is the peak of this phase.
	if err := os.WriteFile("/proc/self/clear_refs", []byte("5"), 0); err != nil {
		return nil, fmt.Errorf("resetting VmHWM: %w", err)
	}
	startRSS, err := statusKB("self", "VmRSS")
	if err != nil {
		return nil, err
	}
	var ru0, ru1 syscall.Rusage
	w := startWindow(s)
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru0)

	dctx, dcancel := context.WithTimeout(ctx, timeout)
	defer dcancel()
	var (
		next                        atomic.Int64
		delivered, deferred, failed atomic.Int64
		errOnce                     sync.Once
		firstErr                    string
		wg                          sync.WaitGroup
	)
	note := func(s string) { errOnce.Do(func() { firstErr = s }) }
	start := time.Now()
	for range conns {
		wg.Go(func() {
			for next.Add(1) <= int64(n) && dctx.Err() == nil {
				msg := &caddysmtp.Message{From: "a@example.org", To: to, Body: bytes.NewReader(body), Size: int64(len(body))}
				rep, err := app.Deliver(dctx, msg)
				if err != nil {
					failed.Add(1)
					note(err.Error())
					continue
				}
				d, df, f := rep.Counts()
				delivered.Add(int64(d))
				deferred.Add(int64(df))
				failed.Add(int64(f))
				if d == 0 {
					rr := rep.Recipients[0]
					if rr.Reply != nil {
						note(rr.Reply.String())
					} else {
						note(rr.Error)
					}
				}
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru1)
	wEnd := windowEnd(s)
	hwm, err := statusKB("self", "VmHWM")
	if err != nil {
		return nil, err
	}

	r := &appResult{startRSS: startRSS}
	r.delivered = int(delivered.Load())
	r.elapsed = elapsed
	r.cpu = rusageCPU(&ru1) - rusageCPU(&ru0)
	r.memKB = hwm
	w.endAt(&r.result, wEnd)
	if r.delivered != n {
		return r, fmt.Errorf("app: %d of %d delivered (%d deferred, %d failed; first problem: %s)",
			r.delivered, n, deferred.Load(), failed.Load(), firstErr)
	}
	return r, nil
}

func selfCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return rusageCPU(&ru)
}

func rusageCPU(ru *syscall.Rusage) time.Duration {
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// makeMessage returns a message of a few headers and a size-byte body in
// lines of at most 78 characters, CRLF-ended: the shape smtp-source -l
// sends (its length, too, counts the body only).
func makeMessage(size int) []byte {
	var b strings.Builder
	b.WriteString("From: <a@example.org>\r\nTo: <b@example.test>\r\n")
	b.WriteString("Date: " + time.Now().Format(time.RFC1123Z) + "\r\n")
	b.WriteString("Message-Id: <smtpbench." + strconv.FormatInt(time.Now().UnixNano(), 36) + "@bench.example.org>\r\n")
	b.WriteString("Subject: smtpbench\r\n\r\n")
	const line = "La de da de da 0123456789 abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVW"
	if size < 3 {
		b.WriteString("xx"[:size])
	}
	for left := size; left >= 3; {
		k := min(left, len(line)+2)
		if r := left - k; r > 0 && r < 3 {
			k -= 3 // leave a last line of at least one character and CRLF
		}
		b.WriteString(line[:k-2])
		b.WriteString("\r\n")
		left -= k
	}
	return []byte(b.String())
}
