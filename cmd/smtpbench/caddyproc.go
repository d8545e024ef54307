package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// This file runs the built Caddy binary (xcaddy.json's build, as users
// run it): its config, its start and stop, and what the command asks its
// admin endpoint (the queue's listing, pprof).

// caddyBinary returns the Caddy binary to run: the -caddy flag's, or one
// built into dir from the repository's xcaddy.json the way e2e builds it
// (go run ./cmd/caddybuild -recipe xcaddy.json -o PATH).
func caddyBinary(ctx context.Context, flagPath, dir string) (string, error) {
	if flagPath != "" {
		if _, err := os.Stat(flagPath); err != nil {
			return "", fmt.Errorf("-caddy: %w", err)
		}
		return filepath.Abs(flagPath)
	}
	root, err := repoRoot()
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "caddy")
	progress("building caddy from %s/xcaddy.json (go run ./cmd/caddybuild; -caddy PATH skips this)", root)
	start := time.Now()
	cmd := exec.CommandContext(ctx, "go", "run", "./cmd/caddybuild", "-recipe", "xcaddy.json", "-o", bin)
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("building caddy: %w\n%s", err, tail(out, 3000))
	}
	progress("built %s in %.0f s", bin, time.Since(start).Seconds())
	return bin, nil
}

// repoRoot is the folder holding xcaddy.json, looked for from the working
// directory up (go run ./cmd/smtpbench runs in the repository).
func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "xcaddy.json")); err == nil {
			return dir, nil
		}
		up := filepath.Dir(dir)
		if up == dir {
			return "", fmt.Errorf("no xcaddy.json in the working directory or above it: run in the repository, or give -caddy PATH")
		}
		dir = up
	}
}

// caddyOptions are what a benchmark's Caddy config says.
type caddyOptions struct {
	dir        string // the instance's folder: config, log, data
	queuePath  string // queue.path
	sinkPort   int    // the one remote, next_hop
	conns      int    // the remote's concurrency and queue.destination_concurrency
	retry      string // queue.retry, one duration ("" = the default)
	submitPort int    // the layer4 smtp_submission listener (0 = none)
	httpPort   int    // an HTTP server with smtp_send (0 = none)
	maxSize    int64  // max_message_size / max_size of the entry paths (0 = their defaults)
	// store is queue.store (a module's JSON) instead of queue.path.
	store map[string]any
	// dkim are the smtp app's DKIM signers; resolver its resolver config.
	dkim     []map[string]any
	resolver map[string]any
}

// caddyInstance is a running Caddy.
type caddyInstance struct {
	proc      *proc
	adminAddr string
	logFile   string
	opts      caddyOptions
	started   time.Time // when the process was started
	logStart  int64     // the log file's size then: where this run's lines begin
	stopped   bool      // stopped by its row (the cleanups skip it)
}

// config is the JSON config: the smtp app with its queue, the submission
// handler and smtp_send as asked, the admin endpoint on a fresh port
// (nothing persisted), and the default log as JSON at INFO in a file, as a
// production Caddy logs (one "queued" and one "delivered" line per
// message, and the submission handler's line per message).
func (o caddyOptions) config(adminAddr, logFile string) ([]byte, error) {
	queue := map[string]any{"destination_concurrency": o.conns}
	if o.store != nil {
		queue["store"] = o.store
	} else {
		queue["path"] = o.queuePath
	}
	if o.retry != "" {
		queue["retry"] = []string{o.retry}
	}
	smtp := map[string]any{
		"hostname": "bench.example.org",
		"next_hop": "sink",
		"remotes":  map[string]any{"sink": map[string]any{"address": "127.0.0.1", "port": o.sinkPort, "concurrency": o.conns}},
		"queue":    queue,
	}
	if len(o.dkim) > 0 {
		smtp["dkim"] = o.dkim
	}
	if o.resolver != nil {
		smtp["resolver"] = o.resolver
	}
	apps := map[string]any{"smtp": smtp}
	if o.submitPort != 0 {
		h := map[string]any{"handler": "smtp_submission", "relay_networks": []string{"127.0.0.1/32"}}
		if o.maxSize > 0 {
			h["max_message_size"] = o.maxSize
		}
		apps["layer4"] = map[string]any{"servers": map[string]any{"submission": map[string]any{
			"listen": []string{fmt.Sprintf("127.0.0.1:%d", o.submitPort)},
			"routes": []any{map[string]any{"handle": []any{h}}},
		}}}
	}
	if o.httpPort != 0 {
		h := map[string]any{"handler": "smtp_send"}
		if o.maxSize > 0 {
			h["max_size"] = o.maxSize
		}
		apps["http"] = map[string]any{"servers": map[string]any{"send": map[string]any{
			"listen":          []string{fmt.Sprintf("127.0.0.1:%d", o.httpPort)},
			"automatic_https": map[string]any{"disable": true},
			"routes":          []any{map[string]any{"handle": []any{h}}},
		}}}
	}
	cfg := map[string]any{
		"admin": map[string]any{"listen": adminAddr, "config": map[string]any{"persist": false}},
		"logging": map[string]any{"logs": map[string]any{"default": map[string]any{
			"writer":  map[string]any{"output": "file", "filename": logFile, "roll": false},
			"encoder": map[string]any{"format": "json"},
			"level":   "INFO",
		}}},
		"storage": map[string]any{"module": "file_system", "root": filepath.Join(o.dir, "data")},
		"apps":    apps,
	}
	return json.MarshalIndent(cfg, "", "\t")
}

// startCaddyBin starts bin with o's config and waits until the admin
// endpoint answers and the submission listener (if any) greets. The
// process runs in its own session with HOME and the XDG folders in o.dir,
// so it touches nothing of the machine's own Caddy.
func startCaddyBin(ctx context.Context, bin string, o caddyOptions) (*caddyInstance, error) {
	adminPort, err := freePort()
	if err != nil {
		return nil, err
	}
	c := &caddyInstance{adminAddr: fmt.Sprintf("127.0.0.1:%d", adminPort), logFile: filepath.Join(o.dir, "caddy.log"), opts: o}
	cfg, err := o.config(c.adminAddr, c.logFile)
	if err != nil {
		return nil, err
	}
	cfgFile := filepath.Join(o.dir, "caddy.json")
	if err := os.WriteFile(cfgFile, cfg, 0o644); err != nil {
		return nil, err
	}
	env := []string{"HOME=" + o.dir, "XDG_DATA_HOME=" + filepath.Join(o.dir, "data"), "XDG_CONFIG_HOME=" + filepath.Join(o.dir, "config")}
	if st, err := os.Stat(c.logFile); err == nil {
		c.logStart = st.Size()
	}
	c.started = time.Now()
	c.proc, err = startProc("caddy", filepath.Join(o.dir, "caddy.out"), env, bin, "run", "--config", cfgFile)
	if err != nil {
		return nil, err
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		err := c.ready(ctx)
		if err == nil {
			return c, nil
		}
		if c.proc.exited() || time.Now().After(deadline) || ctx.Err() != nil {
			out, _ := os.ReadFile(filepath.Join(o.dir, "caddy.out"))
			_ = c.proc.stop(0)
			return nil, fmt.Errorf("caddy not ready: %v\n%s", err, tail(out, 3000))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// ready reports whether the admin endpoint answers and the submission
// listener greets.
func (c *caddyInstance) ready(ctx context.Context) error {
	if _, err := c.adminGet(ctx, "/config/"); err != nil {
		return err
	}
	if c.opts.submitPort != 0 {
		return greets(ctx, fmt.Sprintf("127.0.0.1:%d", c.opts.submitPort))
	}
	return nil
}

func (c *caddyInstance) pid() int { return c.proc.pid() }

// stop stops Caddy as a service manager does (SIGTERM, then SIGKILL after
// grace).
func (c *caddyInstance) stop(grace time.Duration) error { return c.proc.stop(grace) }

var adminClient = &http.Client{Timeout: 5 * time.Minute}

// adminGet GETs path from the admin endpoint and returns the body of a 200.
func (c *caddyInstance) adminGet(ctx context.Context, path string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+c.adminAddr+path, nil)
	if err != nil {
		return nil, err
	}
	resp, err := adminClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return b, fmt.Errorf("GET %s: %s: %s", path, resp.Status, bytes.TrimSpace(b))
	}
	return b, nil
}

// queueEmpty reports whether the queue holds no message (GET /smtp/queue
// lists none).
func (c *caddyInstance) queueEmpty(ctx context.Context) (bool, error) {
	b, err := c.adminGet(ctx, "/smtp/queue")
	if err != nil {
		return false, err
	}
	var page struct {
		Messages []json.RawMessage `json:"messages"`
	}
	if err := json.Unmarshal(b, &page); err != nil {
		return false, fmt.Errorf("GET /smtp/queue: %w", err)
	}
	return len(page.Messages) == 0, nil
}

// waitQueueEmpty polls the queue's listing until it is empty, for at most
// limit.
func (c *caddyInstance) waitQueueEmpty(ctx context.Context, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		empty, err := c.queueEmpty(ctx)
		if err == nil && empty {
			return nil
		}
		if time.Now().After(deadline) {
			if err == nil {
				err = fmt.Errorf("the queue still holds messages after %v", limit)
			}
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// gc makes Caddy collect garbage (the pprof heap endpoint's gc=1), so that
// a baseline taken next is not inflated by garbage of earlier work.
func (c *caddyInstance) gc(ctx context.Context) error {
	_, err := c.adminGet(ctx, "/debug/pprof/heap?gc=1")
	return err
}

// totalAlloc is the Go heap's bytes allocated so far (expvar's
// memstats.TotalAlloc, /debug/vars).
func (c *caddyInstance) totalAlloc(ctx context.Context) (int64, error) {
	b, err := c.adminGet(ctx, "/debug/vars")
	if err != nil {
		return 0, err
	}
	var v struct {
		Memstats struct{ TotalAlloc int64 } `json:"memstats"`
	}
	if err := json.Unmarshal(b, &v); err != nil {
		return 0, fmt.Errorf("/debug/vars: %w", err)
	}
	return v.Memstats.TotalAlloc, nil
}

// profile is a CPU (or allocation) profile of Caddy being taken through
// its admin endpoint's pprof.
type profile struct {
	done chan struct{}
	err  error
}

// startProfile asks for a profile of seconds (path is
// /debug/pprof/profile or /debug/pprof/allocs) and writes it to file when
// it ends.
func (c *caddyInstance) startProfile(ctx context.Context, path string, seconds int, file string) *profile {
	p := &profile{done: make(chan struct{})}
	go func() {
		defer close(p.done)
		b, err := c.adminGet(ctx, path+"?seconds="+strconv.Itoa(seconds))
		if err == nil {
			err = os.WriteFile(file, b, 0o644)
		}
		p.err = err
	}()
	return p
}

// wait waits for the profile (its seconds must have run out).
func (p *profile) wait() error {
	<-p.done
	return p.err
}

// logCount counts the lines of Caddy's log, from offset on, whose "msg" is
// one of msgs, reading the file as a stream (a backlog run's log has
// millions of lines).
func logCount(file string, offset int64, msgs ...string) (map[string]int, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if _, err := f.Seek(offset, io.SeekStart); err != nil {
		return nil, err
	}
	keys := make([][]byte, len(msgs))
	for i, m := range msgs {
		keys[i] = []byte(`"msg":"` + m + `"`)
	}
	counts := map[string]int{}
	buf := make([]byte, 1<<20)
	var carry []byte
	for {
		n, err := f.Read(buf)
		chunk := append(carry, buf[:n]...)
		last := bytes.LastIndexByte(chunk, '\n')
		var whole []byte
		if last >= 0 {
			whole, carry = chunk[:last+1], append([]byte(nil), chunk[last+1:]...)
		} else {
			carry = chunk
		}
		for i, k := range keys {
			counts[msgs[i]] += bytes.Count(whole, k)
		}
		if err == io.EOF {
			for i, k := range keys {
				counts[msgs[i]] += bytes.Count(carry, k)
			}
			return counts, nil
		}
		if err != nil {
			return counts, err
		}
	}
}

// dirUsage is the disk space the files under dir take (allocated blocks,
// as du counts) and their apparent size.
func dirUsage(dir string) (blocks, apparent int64, err error) {
	err = filepath.Walk(dir, func(_ string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			blocks += st.Blocks * 512
		}
		if fi.Mode().IsRegular() {
			apparent += fi.Size()
		}
		return nil
	})
	return blocks, apparent, err
}

// hostPort is 127.0.0.1:port.
func hostPort(port int) string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(port)) }

// firstLine is s up to its first line end.
func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return line
}
