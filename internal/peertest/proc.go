package peertest

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/seed7b014b84/caddy-smtp/internal/procstat"
)

// ReadyTimeout bounds how long a Start function waits for its peer to
// answer before it fails the test with the peer's log.
const ReadyTimeout = 10 * time.Second

// logTailBytes is how much of each log a failing test shows.
const logTailBytes = 6000

var (
	portsMu   sync.Mutex
	portsUsed = map[int]bool{}
)

// FreePort returns a port that is free on 127.0.0.1 and ::1, for both TCP
// and UDP, and that this process has not handed out before.
//
// Postfix, smtp-sink and Knot bind with SO_REUSEPORT: a leftover daemon on
// the same port would bind silently and take half of the connections. Our
// probe binds without SO_REUSEPORT, so a port held by such a leftover fails
// the probe and is not chosen; remembering the ports handed out keeps two
// peers of one test binary apart between the probe and the daemon's bind.
func FreePort(t testing.TB) int {
	t.Helper()
	for range 200 {
		p, err := probePort()
		if err != nil {
			continue
		}
		portsMu.Lock()
		if portsUsed[p] {
			portsMu.Unlock()
			continue
		}
		portsUsed[p] = true
		portsMu.Unlock()
		return p
	}
	t.Fatalf("peertest: no free loopback port after 200 tries")
	return 0
}

// probePort asks the kernel for a free TCP port on 127.0.0.1 and checks that
// the same number is also free for UDP on 127.0.0.1 and, where IPv6 works,
// for TCP and UDP on ::1.
func probePort() (int, error) {
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	port := l.Addr().(*net.TCPAddr).Port
	var closers = []func() error{l.Close}
	defer func() {
		for _, c := range closers {
			_ = c()
		}
	}()
	u, err := net.ListenPacket("udp4", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		return 0, err
	}
	closers = append(closers, u.Close)
	if haveIPv6Loopback() {
		l6, err := net.Listen("tcp6", fmt.Sprintf("[::1]:%d", port))
		if err != nil {
			return 0, err
		}
		closers = append(closers, l6.Close)
		u6, err := net.ListenPacket("udp6", fmt.Sprintf("[::1]:%d", port))
		if err != nil {
			return 0, err
		}
		closers = append(closers, u6.Close)
	}
	return port, nil
}

var ipv6Once = sync.OnceValue(func() bool {
	l, err := net.Listen("tcp6", "[::1]:0")
	if err != nil {
		return false
	}
	_ = l.Close()
	return true
})

// haveIPv6Loopback tells whether ::1 can be bound on this machine.
func haveIPv6Loopback() bool { return ipv6Once() }

// instanceDir makes a fresh directory for one peer instance under the system
// temporary directory, readable and traversable by every user (0755), and
// removes it when the test ends.
//
// It is not t.TempDir(): the daemons drop privileges to users such as
// postfix, nobody or dovecot, and Go makes the parent directories of
// t.TempDir() 0700 root; their paths also carry the test name, which makes
// UNIX socket paths (limited to 107 bytes) too long for subtests.
func instanceDir(t testing.TB, kind string) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "pt-"+kind+"-")
	if err != nil {
		t.Fatalf("peertest: %v", err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatalf("peertest: %v", err)
	}
	t.Cleanup(func() {
		if err := os.RemoveAll(dir); err != nil {
			t.Logf("peertest: removing %s: %v", dir, err)
		}
	})
	return dir
}

// mkdirs makes directories with mode 0755, owned by owner ("" = root).
func mkdirs(t testing.TB, owner string, dirs ...string) {
	t.Helper()
	for _, d := range dirs {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatalf("peertest: %v", err)
		}
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatalf("peertest: %v", err)
		}
		if owner != "" {
			uid, gid := lookupUser(t, owner)
			if err := os.Chown(d, uid, gid); err != nil {
				t.Fatalf("peertest: chown %s %s: %v", owner, d, err)
			}
		}
	}
}

// writeFile writes a file with mode 0644, failing the test on error.
func writeFile(t testing.TB, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatalf("peertest: %v", err)
	}
}

// proc is one peer process, run in the foreground in its own session and
// process group.
type proc struct {
	name    string
	cmd     *exec.Cmd
	done    chan struct{}
	waitErr error
	logs    []string // files whose tails are shown when the test fails
	out     *os.File
	// readyTimeout bounds waitReady; ReadyTimeout unless a test of this
	// package shortens it.
	readyTimeout time.Duration
}

// startProc starts argv[0] with its stdout and stderr appended to outFile.
// logs are extra files (the daemon's own logs) whose tails are shown, with
// outFile's, when the test fails. The process is stopped in t.Cleanup:
// SIGTERM to the process group, SIGKILL after grace, then SIGKILL to any
// member of the group still alive, all bounded in time.
//
// Setsid, not Setpgid: Postfix's master calls setsid() itself and dies with
// "unable to set session id" when that fails while it is not already a
// session leader; as the leader of its own session it is content. A new
// session is also a new process group with the leader's pid as its id.
func startProc(t testing.TB, name, outFile string, grace time.Duration, logs []string, env []string, argv ...string) *proc {
	t.Helper()
	out, err := os.OpenFile(outFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatalf("peertest: %v", err)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout = out
	cmd.Stderr = out
	cmd.Stdin = nil
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	p := &proc{name: name, cmd: cmd, done: make(chan struct{}), logs: append([]string{outFile}, logs...), out: out,
		readyTimeout: ReadyTimeout}
	if err := cmd.Start(); err != nil {
		_ = out.Close()
		t.Fatalf("peertest: starting %s: %v", name, err)
	}
	go func() {
		p.waitErr = cmd.Wait()
		close(p.done)
	}()
	// Registered before the stop, so it runs after it (Cleanup is LIFO):
	// the logs are complete when shown.
	t.Cleanup(func() {
		if t.Failed() {
			p.showLogs(t)
		}
	})
	t.Cleanup(func() { p.stop(t, grace) })
	return p
}

// exited tells whether the process has ended.
func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop ends the process group (procstat.StopGroup), reporting what it
// could not stop as a test error.
func (p *proc) stop(t testing.TB, grace time.Duration) {
	defer p.out.Close()
	if err := procstat.StopGroup(p.cmd.Process.Pid, p.done, grace); err != nil {
		t.Errorf("peertest: stopping %s: %v", p.name, err)
	}
}

// showLogs writes the tail of each of the process's logs to the test log.
func (p *proc) showLogs(t testing.TB) {
	for _, f := range p.logs {
		t.Logf("peertest: --- %s: tail of %s ---\n%s", p.name, f, tailFile(f, logTailBytes))
	}
}

// logText returns the tails of all the process's logs, for failure messages.
func (p *proc) logText() string {
	var b strings.Builder
	for _, f := range p.logs {
		fmt.Fprintf(&b, "--- %s ---\n%s\n", filepath.Base(f), tailFile(f, logTailBytes))
	}
	return b.String()
}

// waitReady polls check every 50 ms until it succeeds, the process exits,
// or ReadyTimeout passes; in the last two cases it fails the test with the
// last error and the peer's logs.
func (p *proc) waitReady(t testing.TB, check func(ctx context.Context) error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), p.readyTimeout)
	defer cancel()
	var err error
	for {
		if p.exited() {
			t.Fatalf("peertest: %s exited before it was ready (%v); last check: %v\n%s", p.name, p.waitErr, err, p.logText())
		}
		cctx, ccancel := context.WithTimeout(ctx, 2*time.Second)
		err = check(cctx)
		ccancel()
		if err == nil {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("peertest: %s not ready after %v: %v\n%s", p.name, p.readyTimeout, err, p.logText())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// tailFile returns the last max bytes of a file, or a note why it cannot.
func tailFile(path string, max int64) string {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Sprintf("(%v)", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return fmt.Sprintf("(%v)", err)
	}
	off := st.Size() - max
	if off < 0 {
		off = 0
	}
	buf := make([]byte, st.Size()-off)
	n, _ := f.ReadAt(buf, off)
	return string(buf[:n])
}

// readFile returns a file's contents, or "" if it cannot be read.
func readFile(path string) string {
	b, _ := os.ReadFile(path)
	return string(b)
}

// run runs a short command (postconf, knotc, keymgr, ip) with a time limit
// and returns its combined output, failing the test when it fails.
func run(t testing.TB, timeout time.Duration, env []string, argv ...string) []byte {
	t.Helper()
	out, err := runErr(timeout, env, argv...)
	if err != nil {
		t.Fatalf("peertest: %s: %v\n%s", strings.Join(argv, " "), err, out)
	}
	return out
}

// runErr is run without the test: it returns the error instead.
func runErr(timeout time.Duration, env []string, argv ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), env...)
	var b bytes.Buffer
	cmd.Stdout = &b
	cmd.Stderr = &b
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 2 * time.Second
	err := cmd.Run()
	return b.Bytes(), err
}
