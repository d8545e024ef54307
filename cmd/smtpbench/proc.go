package main

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/seed7b014b84/caddy-smtp/internal/procstat"
)

// This file is the command's small process runner: what internal/peertest
// does for tests (fresh ports, one session per peer, a bounded stop of the
// whole group), without testing.TB.

// sbinDirs are searched after PATH: Postfix's programs live in sbin.
var sbinDirs = []string{"/usr/sbin", "/sbin", "/usr/local/sbin"}

// lookPath finds a program on PATH or in the sbin directories, with the
// Debian package to install when it is missing.
func lookPath(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, d := range sbinDirs {
		p := filepath.Join(d, name)
		if st, err := os.Stat(p); err == nil && !st.IsDir() && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s not found (apt-get install postfix)", name)
}

var (
	portsMu   sync.Mutex
	portsUsed = map[int]bool{}
)

// freePort returns a TCP port free on 127.0.0.1 that this process has not
// handed out before. smtp-sink and Postfix bind with SO_REUSEPORT, so a
// leftover daemon on a reused port would silently take half the
// connections; this probe binds without it, so such a port fails the probe.
func freePort() (int, error) {
	for range 200 {
		l, err := net.Listen("tcp4", "127.0.0.1:0")
		if err != nil {
			return 0, err
		}
		p := l.Addr().(*net.TCPAddr).Port
		_ = l.Close()
		portsMu.Lock()
		used := portsUsed[p]
		portsUsed[p] = true
		portsMu.Unlock()
		if !used {
			return p, nil
		}
	}
	return 0, fmt.Errorf("no free loopback port after 200 tries")
}

// proc is one peer process, leader of its own session (and so of its own
// process group, which holds every process it forks).
type proc struct {
	name    string
	cmd     *exec.Cmd
	done    chan struct{}
	waitErr error
	out     *os.File
}

// startProc starts argv with stdout and stderr appended to outFile.
//
// Setsid, not Setpgid: Postfix's master calls setsid() itself and dies when
// that fails while it is not already a session leader. The session also
// keeps the peers out of the terminal's process group, so a Ctrl-C reaches
// only this command, which then stops them itself. Pdeathsig is a backstop
// for the case where this command is killed outright.
func startProc(name, outFile string, env []string, argv ...string) (*proc, error) {
	out, err := os.OpenFile(outFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = out, out
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		_ = out.Close()
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, done: make(chan struct{}), out: out}
	go func() {
		p.waitErr = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop ends the process group (procstat.StopGroup), and reports what it
// could not stop.
func (p *proc) stop(grace time.Duration) error {
	defer p.out.Close()
	if err := procstat.StopGroup(p.pid(), p.done, grace); err != nil {
		return fmt.Errorf("stopping %s: %w", p.name, err)
	}
	return nil
}

// runCmd runs a command (postconf, postqueue, smtp-source filling Postfix)
// with a time limit and returns its output and its CPU time.
func runCmd(ctx context.Context, timeout time.Duration, argv ...string) ([]byte, time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := commandContext(ctx, argv...)
	var b bytes.Buffer
	cmd.Stdout, cmd.Stderr = &b, &b
	err := cmd.Run()
	var cpu time.Duration
	if cmd.ProcessState != nil {
		cpu = cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
	}
	if err != nil {
		return b.Bytes(), cpu, fmt.Errorf("%s: %w: %s", strings.Join(argv, " "), err, strings.TrimSpace(b.String()))
	}
	return b.Bytes(), cpu, nil
}

// commandContext is a command in its own process group, killed with the
// group when ctx ends.
func commandContext(ctx context.Context, argv ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 2 * time.Second
	return cmd
}

// sessionProcs lists the processes of session sid (zombies included, since
// their CPU time is not yet their parent's).
func sessionProcs(sid int) []procstat.Proc {
	var out []procstat.Proc
	for _, p := range procstat.All() {
		if p.Session == sid {
			out = append(out, p)
		}
	}
	return out
}

// sessionCPU is the CPU time used so far by session sid: each process's own
// time plus what it has reaped. A daemon that exits is reaped by master and
// its time moves into master's cutime/cstime, so the sum only grows.
func sessionCPU(sid int) time.Duration {
	var d time.Duration
	for _, p := range sessionProcs(sid) {
		d += p.CPU
	}
	return d
}

// cpuByName is sessionCPU per program name (the CPU of exited processes
// is master's, which reaped them).
func cpuByName(sid int) map[string]time.Duration {
	m := map[string]time.Duration{}
	for _, p := range sessionProcs(sid) {
		m[p.Comm] += p.CPU
	}
	return m
}

// statusKB reads a "Name:   N kB" line of /proc/PID/status.
func statusKB(pid, name string) (int64, error) {
	b, err := os.ReadFile("/proc/" + pid + "/status")
	if err != nil {
		return 0, err
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, name+":"); ok {
			return strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
		}
	}
	return 0, fmt.Errorf("no %s in /proc/%s/status", name, pid)
}

// smapsPSS reads the Pss line of /proc/PID/smaps_rollup, in kB.
func smapsPSS(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	if err != nil {
		return 0
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "Pss:"); ok {
			v, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return v
		}
	}
	return 0
}

// memSampler samples the summed RSS (VmRSS, cheap to read) of the live
// processes of a session every period from one period on, and their
// summed PSS every pssEvery-th sample and at the end, and keeps the largest sums seen.
// PSS divides shared pages (libc, Postfix's shared libraries) among the
// processes that map them, so its sum is the memory the processes really
// take; summed RSS counts those pages once per process. Reading PSS
// (smaps_rollup) walks each process's page tables: every 100 ms over some
// 50 Postfix processes it took a fifth of a core from the Postfix it
// measured; every 2 s it is about 1%.
type memSampler struct {
	stopc            chan struct{}
	done             chan struct{}
	peakRSS, peakPSS int64 // kB
	procs            int   // most processes seen at once
}

func sampleSession(sid int, period time.Duration, pssEvery int) *memSampler {
	return sampleProcs(func() []procstat.Proc { return sessionProcs(sid) }, period, pssEvery)
}

// sampleProcs samples the processes list returns, as sampleSession does.
func sampleProcs(list func() []procstat.Proc, period time.Duration, pssEvery int) *memSampler {
	m := &memSampler{stopc: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(m.done)
		t := time.NewTicker(period)
		defer t.Stop()
		sample := func(withPSS bool) {
			var rss, pss int64
			n := 0
			for _, p := range list() {
				if p.Zombie() {
					continue
				}
				n++
				if v, err := statusKB(strconv.Itoa(p.PID), "VmRSS"); err == nil {
					rss += v
				}
				if withPSS {
					pss += smapsPSS(p.PID)
				}
			}
			m.peakRSS, m.peakPSS, m.procs = max(m.peakRSS, rss), max(m.peakPSS, pss), max(m.procs, n)
		}
		for i := 1; ; i++ {
			select {
			case <-m.stopc:
				sample(true)
				return
			case <-t.C:
				sample(i%pssEvery == 0)
			}
		}
	}()
	return m
}

// stop ends the sampling (after one last sample) and returns the peaks.
func (m *memSampler) stop() *memSampler {
	close(m.stopc)
	<-m.done
	return m
}

// pollHWM reads the VmHWM of pid every period until it exits; the func it
// returns stops the polling and gives the last value read, in kB.
func pollHWM(pid int, period time.Duration) func() int64 {
	stopc, done := make(chan struct{}), make(chan struct{})
	var peak int64
	p := strconv.Itoa(pid)
	go func() {
		defer close(done)
		for {
			if v, err := statusKB(p, "VmHWM"); err == nil {
				peak = max(peak, v)
			}
			select {
			case <-stopc:
				return
			case <-time.After(period):
			}
		}
	}()
	return func() int64 {
		close(stopc)
		<-done
		return peak
	}
}

// machineBusy is the busy CPU time of the whole machine so far, from the
// first line of /proc/stat: user, nice, system, irq, softirq and steal.
func machineBusy() time.Duration {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 9 || f[0] != "cpu" {
		return 0
	}
	var ticks int64
	for _, k := range []int{1, 2, 3, 6, 7, 8} {
		v, _ := strconv.ParseInt(f[k], 10, 64)
		ticks += v
	}
	return time.Duration(ticks) * time.Second / procstat.ClockTicks
}

// window is a measurement's span, to tell how much CPU the sink and the
// rest of the machine (other than the sender) used meanwhile.
type window struct {
	s          *sink
	busy, sink time.Duration
}

type windowMark struct{ busy, sink time.Duration }

func startWindow(s *sink) window {
	return window{s: s, busy: machineBusy(), sink: sessionCPU(s.proc.pid())}
}

func windowEnd(s *sink) windowMark {
	return windowMark{busy: machineBusy(), sink: sessionCPU(s.proc.pid())}
}

// endAt fills r's sinkCPU and otherCPU, given r.cpu.
func (w window) endAt(r *result, m windowMark) {
	r.sinkCPU = m.sink - w.sink
	r.otherCPU = max(0, m.busy-w.busy-r.sinkCPU-r.cpu)
}

func (w window) end(r *result) { w.endAt(r, windowEnd(w.s)) }

// cpuSnapshot is every process's CPU so far, by pid.
type cpuSnapshot map[int]procstatProc

type procstatProc struct {
	comm string
	cpu  time.Duration
}

func snapshotCPU() cpuSnapshot {
	m := cpuSnapshot{}
	for _, p := range procstat.All() {
		m[p.PID] = procstatProc{comm: p.Comm, cpu: p.CPU}
	}
	return m
}

// topSince lists the processes that used the most CPU since s (at most n,
// those over 10 ms), as "comm(pid) seconds".
func (s cpuSnapshot) topSince(n int) string {
	type use struct {
		name string
		d    time.Duration
	}
	var uses []use
	for pid, p := range snapshotCPU() {
		d := p.cpu - s[pid].cpu
		if d > 10*time.Millisecond {
			uses = append(uses, use{fmt.Sprintf("%s(%d)", p.comm, pid), d})
		}
	}
	sort.Slice(uses, func(i, j int) bool { return uses[i].d > uses[j].d })
	var parts []string
	for i, u := range uses {
		if i == n {
			break
		}
		parts = append(parts, fmt.Sprintf("%s %.2f", u.name, u.d.Seconds()))
	}
	return strings.Join(parts, ", ")
}
