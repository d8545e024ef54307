package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/textproto"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/seed7b014b84/caddy-smtp/internal/peertest"
)

// caddyProc is the binary running on one config, in a folder of its own
// (HOME, XDG_DATA_HOME and XDG_CONFIG_HOME point there, so that the queue's
// default path is in it), that the test may kill and start again on the
// same config and data. Its output, over every run, is in logs.
type caddyProc struct {
	t    *testing.T
	dir  string
	path string
	logs *lockedBuffer

	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{}
	runs   int
}

// startCaddy writes config to a file named name in a fresh folder
// ("Caddyfile", or "caddy.json" for JSON), runs the binary on it and waits
// until it serves the config. It is stopped (SIGINT, then SIGKILL after
// 15 s) when the test ends.
func startCaddy(t *testing.T, name, config string) *caddyProc {
	t.Helper()
	p := newCaddy(t, name, config)
	p.start()
	return p
}

// newCaddy prepares the process without starting it.
func newCaddy(t *testing.T, name, config string) *caddyProc {
	t.Helper()
	dir := t.TempDir()
	path := filepath.Join(dir, name)
	require.NoError(t, os.WriteFile(path, []byte(config), 0o644))
	p := &caddyProc{t: t, dir: dir, path: path, logs: new(lockedBuffer)}
	t.Cleanup(func() {
		p.stop(15 * time.Second)
		if t.Failed() {
			t.Logf("caddy output (tail):\n%s", tail(p.logs.String(), 20000))
			// E2E_LOGDIR keeps the whole output of a failed test.
			if d := os.Getenv("E2E_LOGDIR"); d != "" {
				name := strings.NewReplacer("/", "_", " ", "_").Replace(t.Name()) + ".log"
				_ = os.WriteFile(filepath.Join(d, name), []byte(p.logs.String()), 0o644)
			}
		}
	})
	return p
}

// start runs the binary and waits until it serves its config.
func (p *caddyProc) start() {
	p.t.Helper()
	cmd := exec.Command(caddyBin, "run", "--config", p.path)
	cmd.Dir = p.dir
	cmd.Env = append(os.Environ(), "HOME="+p.dir, "XDG_DATA_HOME="+p.dir, "XDG_CONFIG_HOME="+p.dir)
	cmd.Stdout, cmd.Stderr = p.logs, p.logs
	require.NoError(p.t, cmd.Start())
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	p.mu.Lock()
	p.cmd, p.exited = cmd, exited
	p.runs++
	runs := p.runs
	p.mu.Unlock()
	deadline := time.Now().Add(30 * time.Second)
	for strings.Count(p.logs.String(), "serving initial configuration") < runs {
		select {
		case <-exited:
			p.t.Fatalf("caddy exited before serving its config:\n%s", tail(p.logs.String(), 8000))
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("caddy did not serve its config within 30s:\n%s", tail(p.logs.String(), 8000))
		}
	}
}

// kill ends the process with SIGKILL, as a crash would, and waits for it.
func (p *caddyProc) kill() {
	p.t.Helper()
	p.mu.Lock()
	cmd, exited := p.cmd, p.exited
	p.mu.Unlock()
	require.NotNil(p.t, cmd)
	_ = cmd.Process.Signal(syscall.SIGKILL)
	select {
	case <-exited:
	case <-time.After(10 * time.Second):
		p.t.Fatal("caddy did not die within 10s of SIGKILL")
	}
}

// stop ends the process with SIGINT (a graceful stop), and with SIGKILL
// if it has not exited after grace. It does nothing when it is not
// running.
func (p *caddyProc) stop(grace time.Duration) {
	p.mu.Lock()
	cmd, exited := p.cmd, p.exited
	p.mu.Unlock()
	if cmd == nil {
		return
	}
	select {
	case <-exited:
		return
	default:
	}
	_ = cmd.Process.Signal(os.Interrupt)
	select {
	case <-exited:
	case <-time.After(grace):
		_ = cmd.Process.Kill()
		<-exited
	}
}

// pid is the running process's id.
func (p *caddyProc) pid() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cmd.Process.Pid
}

// entries returns the JSON log entries written so far, over every run.
func (p *caddyProc) entries() []logEntry { return parseLog(p.logs.String()) }

// queueLog returns the entries of the queue's logger ("smtp.queue") with
// the given message ("queued", "delivered", "deferred", "failed",
// "expired"), or all of them for "".
func (p *caddyProc) queueLog(msg string) []logEntry {
	var out []logEntry
	for _, e := range p.entries() {
		if e.Logger == "smtp.queue" && (msg == "" || e.Msg == msg) {
			out = append(out, e)
		}
	}
	return out
}

// waitQueueLog waits until the queue has logged n lines with msg (or the
// test's deadline passes) and returns them.
func (p *caddyProc) waitQueueLog(msg string, n int, timeout time.Duration) []logEntry {
	p.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		got := p.queueLog(msg)
		if len(got) >= n {
			return got
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("%d of %d %q lines of the queue after %v", len(got), n, msg, timeout)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// logEntry is one line of Caddy's JSON log.
type logEntry struct {
	Level  string
	TS     time.Time
	Logger string
	Msg    string
	F      map[string]any
}

// parseLog parses Caddy's JSON log lines; other lines are skipped.
func parseLog(s string) []logEntry {
	var out []logEntry
	sc := bufio.NewScanner(strings.NewReader(s))
	sc.Buffer(make([]byte, 0, 64<<10), 4<<20)
	for sc.Scan() {
		line := sc.Bytes()
		if len(line) == 0 || line[0] != '{' {
			continue
		}
		var f map[string]any
		if json.Unmarshal(line, &f) != nil {
			continue
		}
		e := logEntry{F: f}
		e.Level, _ = f["level"].(string)
		e.Logger, _ = f["logger"].(string)
		e.Msg, _ = f["msg"].(string)
		e.TS = e.time("ts")
		out = append(out, e)
	}
	return out
}

// str returns a field as a string ("" when absent).
func (e logEntry) str(key string) string {
	switch v := e.F[key].(type) {
	case string:
		return v
	case nil:
		return ""
	default:
		return fmt.Sprint(v)
	}
}

// int returns a numeric field (0 when absent).
func (e logEntry) int(key string) int {
	if v, ok := e.F[key].(float64); ok {
		return int(v)
	}
	return 0
}

// time returns a time field: Unix seconds as a number (Caddy's default
// JSON encoder), or an RFC 3339 string.
func (e logEntry) time(key string) time.Time {
	switch v := e.F[key].(type) {
	case float64:
		sec, frac := math.Modf(v)
		return time.Unix(int64(sec), int64(frac*1e9))
	case string:
		if t, err := time.Parse(time.RFC3339Nano, v); err == nil {
			return t
		}
	}
	return time.Time{}
}

// tail returns the end of s, at most n bytes.
func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "...\n" + s[len(s)-n:]
}

// adaptJSON adapts a Caddyfile to Caddy JSON with the binary, and lets
// edit change the config (add an app, a log) before it is written.
func adaptJSON(t *testing.T, caddyfile string, edit func(cfg map[string]any)) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "Caddyfile")
	require.NoError(t, os.WriteFile(path, []byte(caddyfile), 0o644))
	out, stderr, err := caddy(t, "adapt", "--config", path)
	require.NoError(t, err, stderr)
	var cfg map[string]any
	require.NoError(t, json.Unmarshal([]byte(out), &cfg))
	if edit != nil {
		edit(cfg)
	}
	b, err := json.Marshal(cfg)
	require.NoError(t, err)
	return string(b)
}

// submitter is a plain SMTP client for the submission port that returns
// every reply as it came (net/smtp hides the text of a 250, which carries
// the queue ID).
type submitter struct {
	conn net.Conn
	tp   *textproto.Conn
}

// dialSubmitter connects and says EHLO.
func dialSubmitter(addr string) (*submitter, error) {
	conn, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return nil, err
	}
	s := &submitter{conn: conn, tp: textproto.NewConn(conn)}
	if code, msg, err := s.read(); err != nil || code != 220 {
		conn.Close()
		return nil, fmt.Errorf("greeting: %d %s %v", code, msg, err)
	}
	if code, msg, err := s.cmd("EHLO client.example.org"); err != nil || code != 250 {
		conn.Close()
		return nil, fmt.Errorf("EHLO: %d %s %v", code, msg, err)
	}
	return s, nil
}

func (s *submitter) read() (int, string, error) {
	_ = s.conn.SetDeadline(time.Now().Add(60 * time.Second))
	return s.tp.ReadResponse(0)
}

func (s *submitter) cmd(format string, args ...any) (int, string, error) {
	_ = s.conn.SetDeadline(time.Now().Add(60 * time.Second))
	if err := s.tp.PrintfLine(format, args...); err != nil {
		return 0, "", err
	}
	return s.read()
}

// send runs one transaction and returns the reply that ended it: the
// first refusal of MAIL, RCPT or DATA (after which the transaction is
// reset), or the reply to the end of data.
func (s *submitter) send(from string, to []string, msg string) (int, string, error) {
	code, text, err := s.cmd("MAIL FROM:<%s>", from)
	if err != nil || code != 250 {
		return code, text, err
	}
	for _, r := range to {
		code, text, err = s.cmd("RCPT TO:<%s>", r)
		if err != nil {
			return code, text, err
		}
		if code != 250 {
			_, _, _ = s.cmd("RSET")
			return code, text, nil
		}
	}
	code, text, err = s.cmd("DATA")
	if err != nil || code != 354 {
		return code, text, err
	}
	w := s.tp.DotWriter()
	if _, err := io.WriteString(w, msg); err != nil {
		return 0, "", err
	}
	if err := w.Close(); err != nil {
		return 0, "", err
	}
	return s.read()
}

func (s *submitter) close() {
	_, _, _ = s.cmd("QUIT")
	_ = s.conn.Close()
}

// queuedID returns the queue ID of a "250 2.0.0 queued as ID" reply.
func queuedID(code int, text string) (string, bool) {
	id, ok := strings.CutPrefix(text, "2.0.0 queued as ")
	return id, ok && code == 250 && len(id) == 20
}

// markedMessage is a small message whose Subject is its marker.
func markedMessage(marker string) string {
	return fmt.Sprintf("From: load@example.org\r\nTo: sink@relay.test\r\nSubject: %s\r\n\r\nbody of %s\r\n", marker, marker)
}

// submitMany submits clients*perClient marked messages ("prefix-cC-mI")
// through the submission port, each client on its own connection, and
// returns the queue ID of each marker. Any reply but "250 queued as" is a
// test error.
func submitMany(t *testing.T, addr, prefix string, clients, perClient int) map[string]string {
	t.Helper()
	var mu sync.Mutex
	ids := map[string]string{}
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	for c := range clients {
		wg.Go(func() {
			s, err := dialSubmitter(addr)
			if err != nil {
				errs <- err
				return
			}
			defer s.close()
			for i := range perClient {
				marker := fmt.Sprintf("%s-c%d-m%d", prefix, c, i)
				code, text, err := s.send("load@example.org", []string{"sink@relay.test"}, markedMessage(marker))
				id, ok := queuedID(code, text)
				if err != nil || !ok {
					errs <- fmt.Errorf("%s: %d %s %v", marker, code, text, err)
					return
				}
				mu.Lock()
				ids[marker] = id
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("submission: %v", err)
	}
	return ids
}

// subjectOf returns the Subject of a message the sink received.
func subjectOf(m peertest.SinkMessage) string {
	for _, line := range strings.Split(string(m.Header), "\n") {
		if v, ok := strings.CutPrefix(line, "Subject: "); ok {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// dumpCount is how many files a sink has in its dump folder, cheaply
// (messages in progress included).
func dumpCount(s *peertest.Sink) int {
	ents, _ := os.ReadDir(s.DumpDir)
	return len(ents)
}

// waitSinks waits until the sinks hold at least n finished messages in
// all, polling cheaply, and returns them.
func waitSinks(t *testing.T, n int, timeout time.Duration, sinks ...*peertest.Sink) []peertest.SinkMessage {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		total := 0
		for _, s := range sinks {
			total += dumpCount(s)
		}
		if total >= n {
			var msgs []peertest.SinkMessage
			for _, s := range sinks {
				msgs = append(msgs, s.Messages(t)...)
			}
			if len(msgs) >= n {
				return msgs
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("the sinks hold %d of %d messages after %v", total, n, timeout)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// countSubjects counts the messages by Subject.
func countSubjects(msgs []peertest.SinkMessage) map[string]int {
	seen := map[string]int{}
	for _, m := range msgs {
		seen[subjectOf(m)]++
	}
	return seen
}

// patchConfig changes the running config through the admin API.
func patchConfig(t *testing.T, admin int, path, value string) {
	t.Helper()
	client := &http.Client{Timeout: 30 * time.Second}
	req, err := http.NewRequest(http.MethodPatch, fmt.Sprintf("http://127.0.0.1:%d/config/%s", admin, path), strings.NewReader(value))
	require.NoError(t, err)
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	require.NoError(t, err)
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode, "PATCH %s: %s", path, b)
}

// establishedTo counts the TCP connections in state ESTABLISHED from
// process pid to the local port (the transactions it can have in
// flight there), from /proc/PID/net/tcp and the process's sockets.
func establishedTo(pid, port int) int {
	inodes := map[string]bool{}
	fds, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	for _, fd := range fds {
		link, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name()))
		if err == nil && strings.HasPrefix(link, "socket:[") {
			inodes[strings.TrimSuffix(strings.TrimPrefix(link, "socket:["), "]")] = true
		}
	}
	n := 0
	for _, file := range []string{"tcp", "tcp6"} {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/%s", pid, file))
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n")[1:] {
			f := strings.Fields(line)
			if len(f) < 10 || f[3] != "01" { // 01: ESTABLISHED
				continue
			}
			_, rport, ok := strings.Cut(f[2], ":")
			if !ok {
				continue
			}
			if p, err := strconv.ParseUint(rport, 16, 16); err == nil && int(p) == port && inodes[f[9]] {
				n++
			}
		}
	}
	return n
}
