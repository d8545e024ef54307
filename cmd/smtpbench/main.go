// Command smtpbench measures this module's smtp app against a private
// Postfix and against smtp-sink's own ceiling, in one run per mode, and
// prints one markdown table per mode:
//
//	go run ./cmd/smtpbench                  # -mode e2e: smtp-source → receiver (queue on disk) → smtp-sink
//	go run ./cmd/smtpbench -mode transport  # the in-process delivery engine against Postfix's queue drain
//	go run ./cmd/smtpbench -mode backlog    # 1,000,000 queued while the destination is down; restart; drain
//	go run ./cmd/smtpbench -mode large      # peak memory per 50 MiB message through each entry path
//	go run ./cmd/smtpbench -pg              # e2e, plus the PostgreSQL store (one instance, two) and its cost per message
//	go run ./cmd/smtpbench -dkim            # e2e, plus DKIM signing of every message (RSA 2048, Ed25519)
//
// The e2e, backlog and large modes run the Caddy binary built from
// xcaddy.json (as e2e builds it, or -caddy PATH). The command must run as
// root (smtp-sink and Postfix switch users) on a machine with Postfix
// installed (smtp-sink, smtp-source, postfix). Everything it starts listens
// on fresh 127.0.0.1 ports and is stopped before it exits, on Ctrl-C too.
// BENCHMARKS.md explains the method and holds a run's tables.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/caddyserver/caddy/v2"
)

// result is one sender's figures.
type result struct {
	delivered int           // messages the sender reports delivered
	sinkCount int           // messages the sink counted
	elapsed   time.Duration // first message sent (or queue released) to last one received
	cpu       time.Duration // the sender's user+sys CPU over elapsed
	memKB     int64         // the sender's peak memory, as the row says
	sinkCPU   time.Duration // the sink's CPU over the same window as cpu
	otherCPU  time.Duration // the rest of the machine's busy CPU over it
}

func (r result) rate() float64 { return float64(r.delivered) / r.elapsed.Seconds() }

func main() {
	os.Exit(run())
}

// cleanups are run last first, when run returns (after an error or a
// signal as well).
type cleanups []func()

func (c *cleanups) add(f func()) { *c = append(*c, f) }

func (c *cleanups) run() {
	for i := len(*c) - 1; i >= 0; i-- {
		(*c)[i]()
	}
	*c = nil
}

func run() int {
	mode := flag.String("mode", "e2e", "e2e, transport, backlog or large")
	n := flag.Int("n", 0, "messages per sender (default 20000; in backlog mode 1000000)")
	size := flag.Int("size", 1024, "body size in bytes (headers come on top, as with smtp-source -l)")
	conns := flag.Int("conns", 20, "connections: the app's delivering goroutines and remote concurrency, Postfix's destination concurrency, smtp-source -s")
	base := flag.String("dir", "", "directory for the peers' files and the queues (default /var/tmp, a disk; /dev/shm, tmpfs, in transport mode)")
	caddyBin := flag.String("caddy", "", "the Caddy binary to run (default: built from xcaddy.json into the run's directory)")
	profDir := flag.String("profile", "", "write CPU profiles of caddy (pprof, through its admin endpoint) into this directory")
	profSecs := flag.Int("profile-seconds", 30, "length of each CPU profile; the phase waits for it to end")
	quiet := flag.Duration("quiet", 2*time.Second, "before each measurement, wait until the machine was this long nearly idle (under a quarter of a core busy); 0 = do not wait")
	quietMax := flag.Duration("quiet-max", 2*time.Minute, "the longest wait for a quiet machine; then it measures anyway")
	refN := flag.Int("ref", 20000, "backlog mode: messages of the reference run (a nearly empty queue)")
	retry := flag.Duration("retry", 0, "backlog mode: queue.retry of the main run (default: three times the fill time the reference run predicts, at least 2m)")
	refRetry := flag.Duration("ref-retry", 2*time.Minute, "backlog mode: queue.retry of the reference run")
	largeSize := flag.Int64("large", 50<<20, "large mode: message size in bytes")
	timeout := flag.Duration("timeout", 5*time.Minute, "limit for each sender's phase")
	keep := flag.Bool("keep", false, "keep the peers' files (logs, Postfix's maillog) after the run")
	verbose := flag.Bool("v", false, "also print where Postfix's CPU time went, per program")
	pg := flag.Bool("pg", false, "e2e mode: add rows with the PostgreSQL store (one instance, then two sharing one database), a private cluster at its default settings, and a table of what the database costs per message")
	pgRelay := flag.Bool("pg-relay", false, "with -pg: Caddy reaches PostgreSQL through a relay in this command that counts requests and bytes, to check the kernel's counts (slows the PostgreSQL rows)")
	dkim := flag.Bool("dkim", false, "e2e mode: add rows with DKIM signing of every message (rsa-sha256 2048-bit, then ed25519-sha256), checked to be signed")
	flag.Parse()
	switch *mode {
	case "e2e", "transport", "large":
		if *n == 0 {
			*n = 20000
		}
	case "backlog":
		if *n == 0 {
			*n = 1000000
		}
	default:
		fmt.Fprintf(os.Stderr, "smtpbench: -mode %q: not e2e, transport, backlog or large\n", *mode)
		return 2
	}
	if *base == "" {
		*base = "/var/tmp"
		if *mode == "transport" {
			*base = defaultDir()
		}
	}
	*pg = *pg || *pgRelay
	if (*pg || *dkim) && *mode != "e2e" {
		fmt.Fprintln(os.Stderr, "smtpbench: -pg and -dkim add rows to the e2e mode only")
		return 2
	}
	if *n < 1 || *size < 0 || *conns < 1 || *refN < 1 || *largeSize < 1 || *refRetry <= 0 || *retry < 0 {
		fmt.Fprintln(os.Stderr, "smtpbench: -n, -conns, -ref, -large and -ref-retry must be positive, -size and -retry not negative")
		return 2
	}
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "smtpbench: must run as root (smtp-sink and Postfix switch to their users)")
		return 2
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var cl cleanups
	defer cl.run()

	dir, err := os.MkdirTemp(*base, "smtpbench-")
	if err == nil {
		err = os.Chmod(dir, 0o755) // the daemons' users traverse it
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "smtpbench: %v\n", err)
		return 1
	}
	if *keep {
		cl.add(func() { progress("files kept in %s", dir) })
	} else {
		cl.add(func() { _ = os.RemoveAll(dir) })
	}

	if *profDir != "" {
		if err := os.MkdirAll(*profDir, 0o755); err != nil {
			fmt.Fprintf(os.Stderr, "smtpbench: %v\n", err)
			return 1
		}
	}
	b := &bench{ctx: ctx, dir: dir, n: *n, size: *size, conns: *conns, timeout: *timeout, cl: &cl, verbose: *verbose,
		caddyFlag: *caddyBin, profileDir: *profDir, profileSeconds: *profSecs, quiet: *quiet, quietMax: *quietMax,
		refN: *refN, retry: *retry, refRetry: *refRetry, largeSize: *largeSize, pg: *pg, pgRelay: *pgRelay, dkim: *dkim}
	run := map[string]func() error{"e2e": b.e2e, "transport": b.all, "backlog": b.backlog, "large": b.large}[*mode]
	if err := run(); err != nil {
		if ctx.Err() != nil {
			err = fmt.Errorf("interrupted: %w", err)
		}
		fmt.Fprintf(os.Stderr, "smtpbench: %v\n", err)
		return 1
	}
	return 0
}

// defaultDir is /dev/shm when it is there (tmpfs: Postfix's queue files
// then cost no disk I/O), the temporary directory otherwise.
func defaultDir() string {
	if st, err := os.Stat("/dev/shm"); err == nil && st.IsDir() {
		return "/dev/shm"
	}
	return os.TempDir()
}

type bench struct {
	ctx               context.Context
	dir               string
	n, size, conns    int
	timeout           time.Duration
	cl                *cleanups
	postfixVersion    string
	pfMemPSS, pfProcs int64
	appStartRSS       int64
	appLogLines       int
	verbose           bool

	caddyFlag, caddyBin string // -caddy, and the binary run
	profileDir          string
	profileSeconds      int
	quiet, quietMax     time.Duration
	refN                int           // backlog: the reference run's messages
	retry, refRetry     time.Duration // backlog: queue.retry of the main and the reference runs
	largeSize           int64
	pg, pgRelay, dkim   bool      // e2e: the -pg and -dkim rows, -pg-relay
	pgServer            *pgServer // the -pg rows' server, once started
}

// waitQuiet waits until the machine's busy CPU over the last b.quiet was
// under a quarter of one core, for at most b.quietMax; other work shares
// this machine, and the table's last line says what it took anyway.
func (b *bench) waitQuiet() {
	if b.quiet <= 0 {
		return
	}
	deadline := time.Now().Add(b.quietMax)
	for {
		busy0 := machineBusy()
		select {
		case <-b.ctx.Done():
			return
		case <-time.After(b.quiet):
		}
		used := machineBusy() - busy0
		if used < b.quiet/4 {
			return
		}
		if time.Now().After(deadline) {
			progress("the machine is busy (%.2f CPU-s in the last %v); measuring anyway", used.Seconds(), b.quiet)
			return
		}
	}
}

func progress(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "smtpbench: "+format+"\n", args...)
}

// stopProc stops p now and registers nothing: each phase stops its peers
// when it ends, so that they do not take CPU from the next one.
func stopProc(p *proc, grace time.Duration) {
	if err := p.stop(grace); err != nil {
		progress("%v", err)
	}
}

// peerDir makes a directory for one peer under the run's directory.
func (b *bench) peerDir(name string) (string, error) {
	d := filepath.Join(b.dir, name)
	if err := os.Mkdir(d, 0o755); err != nil {
		return "", err
	}
	return d, os.Chmod(d, 0o755)
}

// sink starts a fresh sink for one phase, stopped when the phase ends (by
// the returned func) or at the latest when the command exits.
func (b *bench) sink(name string) (*sink, func(), error) {
	d, err := b.peerDir(name)
	if err != nil {
		return nil, nil, err
	}
	s, err := startSink(b.ctx, d, b.conns)
	if err != nil {
		return nil, nil, err
	}
	stopped := false
	stop := func() {
		if !stopped {
			stopped = true
			stopProc(s.proc, 2*time.Second)
		}
	}
	b.cl.add(stop)
	return s, stop, nil
}

func (b *bench) all() error {
	progress("%d messages of %d bytes, %d connections, files in %s", b.n, b.size, b.conns, b.dir)

	logFile := filepath.Join(b.dir, "caddy.log")
	if err := startCaddy(logFile); err != nil {
		return fmt.Errorf("caddy: %w", err)
	}
	b.cl.add(func() { _ = caddy.Stop() })

	app, err := b.appPhase(logFile)
	if err != nil {
		return err
	}
	pf, err := b.postfixPhase()
	if err != nil {
		return err
	}
	src, err := b.sourcePhase()
	if err != nil {
		return err
	}
	b.print(app, pf, src)
	return nil
}

func (b *bench) appPhase(logFile string) (result, error) {
	s, stop, err := b.sink("app-sink")
	if err != nil {
		return result{}, err
	}
	defer stop()
	progress("this app: delivering through app.Deliver to smtp-sink %s", s.addr)
	r, err := benchApp(b.ctx, s, b.n, b.size, b.conns, b.timeout)
	if err != nil {
		return result{}, err
	}
	// The sink counts a message when it reads the final dot; make sure it
	// saw every one the app was told was delivered.
	if r.sinkCount, _, err = s.waitMessages(b.ctx, b.n, 5*time.Millisecond, 5*time.Second); err != nil {
		return result{}, fmt.Errorf("app: %w", err)
	}
	b.appStartRSS = r.startRSS
	if log, err := os.ReadFile(logFile); err == nil {
		b.appLogLines = strings.Count(string(log), `"msg":"delivered"`)
	}
	return r.result, nil
}

// startPostfix starts a sink and a private Postfix relaying to it (hold:
// with its deliveries held); stop stops both, and runs at a Ctrl-C too.
func (b *bench) startPostfix(hold bool) (s *sink, pf *relay, stop func(), err error) {
	s, stopSink, err := b.sink("postfix-sink")
	if err != nil {
		return nil, nil, nil, err
	}
	d, err := b.peerDir("postfix")
	if err == nil {
		pf, err = startRelay(b.ctx, d, s.port, b.conns, b.n, hold)
	}
	if err != nil {
		stopSink()
		return nil, nil, nil, err
	}
	b.postfixVersion = pf.version
	stopped := false
	stopPF := func() {
		if !stopped {
			stopped = true
			// SIGKILL at once: on SIGTERM master takes more than a second,
			// and a scratch instance needs no clean shutdown.
			stopProc(pf.proc, 0)
		}
	}
	b.cl.add(stopPF)
	return s, pf, func() { stopPF(); stopSink() }, nil
}

func (b *bench) postfixPhase() (result, error) {
	var r result
	s, pf, stop, err := b.startPostfix(true)
	if err != nil {
		return r, err
	}
	defer stop()

	source, err := lookPath("smtp-source")
	if err != nil {
		return r, err
	}
	progress("postfix %s: filling its queue through %s (deliveries deferred)", pf.version, pf.inject)
	fillStart := time.Now()
	if _, _, err := runCmd(b.ctx, b.timeout, b.sourceArgs(source, pf.inject)...); err != nil {
		return r, fmt.Errorf("filling postfix: %w", err)
	}
	if err := pf.waitQueue(b.ctx, 30*time.Second, func(in, act, def int) bool {
		return in == 0 && act == 0 && def >= b.n
	}); err != nil {
		return r, err
	}
	if got, _ := s.messages(); got != 0 {
		return r, fmt.Errorf("postfix delivered %d messages while deliveries were deferred", got)
	}

	progress("postfix: %d messages queued in %.1f s; releasing the queue to smtp-sink %s", b.n, time.Since(fillStart).Seconds(), s.addr)
	postconf, _ := lookPath("postconf")
	postqueue, err := lookPath("postqueue")
	if err != nil {
		return r, err
	}
	sid := pf.proc.pid()
	w := startWindow(s)
	self0 := selfCPU()
	cpu0 := sessionCPU(sid)
	var byName0 map[string]time.Duration
	if b.verbose {
		byName0 = cpuByName(sid)
	}
	start := time.Now()
	var cmdCPU time.Duration
	release := func() error {
		_, cpu, err := runCmd(b.ctx, 30*time.Second, postconf, "-c", pf.conf, "-e", "defer_transports=")
		cmdCPU += cpu
		if err != nil {
			return err
		}
		// postconf -e just rewrote main.cf: without this, every daemon
		// started after the reload waits until it is 2 s old.
		if err := backdate(pf.conf); err != nil {
			return err
		}
		// "postfix reload" is postfix-script's "kill -HUP" of master,
		// after which it starts "postsuper &", a structure check of the
		// whole queue that would run beside the drain, outside master's
		// processes (so uncounted) and taking CPU from it: maintenance,
		// not delivery. The signal alone is the reload.
		oldQmgr := pf.qmgr()
		if err := syscall.Kill(sid, syscall.SIGHUP); err != nil {
			return fmt.Errorf("postfix reload (SIGHUP to master): %w", err)
		}
		// The flush request must reach the new qmgr: the old one, on its
		// way out, would take it and deliver one window's worth, and the
		// new one scans the deferred queue only after queue_run_delay.
		if err := pf.waitQmgr(b.ctx, oldQmgr, 10*time.Second); err != nil {
			return err
		}
		_, cpu, err = runCmd(b.ctx, 30*time.Second, postqueue, "-c", pf.conf, "-f")
		cmdCPU += cpu
		return err
	}
	if err := release(); err != nil {
		return r, err
	}
	// Memory is sampled from here: the reload has told the daemons left
	// idle by the filling (smtpd, cleanup, error) to exit, and they are
	// not part of the drain.
	mem := sampleSession(sid, 500*time.Millisecond, 4)
	got, end, err := s.waitMessages(b.ctx, b.n, 20*time.Millisecond, 30*time.Second)
	if err != nil {
		mem.stop()
		return r, fmt.Errorf("postfix drain: %w", err)
	}
	// The queue files are removed after the sink's reply: count that work
	// too, but not the time it takes (the others' clocks stop at the last
	// reply as well).
	qerr := pf.waitQueue(b.ctx, 30*time.Second, func(in, act, def int) bool { return in+act+def == 0 })
	cpu1 := sessionCPU(sid)
	m := mem.stop()
	if b.verbose {
		byName1 := cpuByName(sid)
		for name, d := range byName1 {
			progress("postfix CPU, %s: %v (own time, and reaped children's for master)", name, d-byName0[name])
		}
		progress("postfix CPU, commands (postconf -e, postqueue -f): %v", cmdCPU)
		progress("this command's own CPU meanwhile (sampling, polling): %v", selfCPU()-self0)
	}
	if qerr != nil {
		return r, qerr
	}
	r = result{delivered: got, sinkCount: got, elapsed: end.Sub(start), cpu: cpu1 - cpu0 + cmdCPU, memKB: m.peakRSS}
	w.end(&r)
	b.pfMemPSS, b.pfProcs = m.peakPSS, int64(m.procs)
	return r, nil
}

// sourceArgs is smtp-source sending n messages of size bytes over conns
// reused connections (-d) to addr.
func (b *bench) sourceArgs(bin, addr string) []string {
	return sourceArgsN(bin, addr, b.n, b.size, b.conns)
}

// sourceArgsN is smtp-source sending n messages over conns connections.
// Its messages are From: <a@example.org> (the sender, -f), which the
// DKIM rows' signers sign for.
func sourceArgsN(bin, addr string, n, size, conns int) []string {
	return []string{bin, "-d", "-s", fmt.Sprint(conns), "-m", fmt.Sprint(n), "-l", fmt.Sprint(size),
		"-f", "a@example.org", "-t", "b@example.test", "-M", "source.bench.example.org", addr}
}

func (b *bench) sourcePhase() (result, error) {
	var r result
	s, stop, err := b.sink("source-sink")
	if err != nil {
		return r, err
	}
	defer stop()
	bin, err := lookPath("smtp-source")
	if err != nil {
		return r, err
	}
	progress("smtp-source: sending straight to smtp-sink %s", s.addr)
	ctx, cancel := context.WithTimeout(b.ctx, b.timeout)
	defer cancel()
	argv := b.sourceArgs(bin, s.addr)
	cmd := commandContext(ctx, argv...)
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	w := startWindow(s)
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return r, err
	}
	// Its rusage's ru_maxrss is no use: Go starts children with
	// CLONE_VM|CLONE_VFORK, and at exec Linux folds the peak RSS of the
	// old address space, this process's, into the child's. So VmHWM is
	// read from /proc while it runs; it only grows, and smtp-source
	// allocates what it needs when it starts.
	hwm := pollHWM(cmd.Process.Pid, 5*time.Millisecond)
	err = cmd.Wait()
	elapsed := time.Since(start)
	peak := hwm()
	wEnd := windowEnd(s)
	if err != nil {
		return r, fmt.Errorf("%s: %w: %s", strings.Join(argv, " "), err, out.String())
	}
	got, _, err := s.waitMessages(b.ctx, b.n, 5*time.Millisecond, 10*time.Second)
	if err != nil {
		return r, err
	}
	ps := cmd.ProcessState
	r = result{delivered: b.n, sinkCount: got, elapsed: elapsed, cpu: ps.UserTime() + ps.SystemTime(), memKB: peak}
	w.endAt(&r, wEnd)
	return r, nil
}

func (b *bench) print(app, pf, src result) {
	fmt.Printf("%d messages of %d bytes (body) per sender, %d connections, to smtp-sink on 127.0.0.1; %d CPUs, Linux %s, %s, Postfix %s; Postfix queue in %s\n\n",
		b.n, b.size, b.conns, runtime.NumCPU(), kernelRelease(), runtime.Version(), b.postfixVersion, queueFS(filepath.Dir(b.dir)))
	fmt.Println("| sender | delivered | seconds | msg/s | × Postfix | of ceiling | CPU s | CPU µs/msg | peak memory |")
	fmt.Println("|---|--:|--:|--:|--:|--:|--:|--:|---|")
	row := func(name string, r result, mem string) {
		fmt.Printf("| %s | %d | %.2f | %.0f | %.2f× | %.0f%% | %.2f | %.0f | %s |\n",
			name, r.delivered, r.elapsed.Seconds(), r.rate(), r.rate()/pf.rate(), 100*r.rate()/src.rate(),
			r.cpu.Seconds(), float64(r.cpu.Microseconds())/float64(r.delivered), mem)
	}
	row("this app (`app.Deliver`, in-process)", app,
		fmt.Sprintf("%s RSS (VmHWM; %s at start)", mib(app.memKB), mib(b.appStartRSS)))
	row("Postfix relay (queue drain)", pf,
		fmt.Sprintf("%s PSS, %s RSS (sums over ≤%d processes)", mib(b.pfMemPSS), mib(pf.memKB), b.pfProcs))
	row("smtp-source -d (ceiling)", src, fmt.Sprintf("%s RSS (VmHWM)", mib(src.memKB)))
	ratio := app.rate() / pf.rate()
	verdict := "met"
	if ratio < 5 {
		verdict = "NOT met"
	}
	fmt.Printf("\nGoal, at least 5× Postfix's message rate: %s (%.2f×). CPU per message: this app %.2f× Postfix's. The app logged %d deliveries to its log file.\n",
		verdict, ratio, (app.cpu.Seconds()/float64(app.delivered))/(pf.cpu.Seconds()/float64(pf.delivered)), b.appLogLines)
	fmt.Printf("CPU seconds of the sink / of everything else on the machine, over each measurement: this app %.2f / %.2f, Postfix %.2f / %.2f, smtp-source %.2f / %.2f.\n",
		app.sinkCPU.Seconds(), app.otherCPU.Seconds(), pf.sinkCPU.Seconds(), pf.otherCPU.Seconds(), src.sinkCPU.Seconds(), src.otherCPU.Seconds())
}

func mib(kb int64) string { return fmt.Sprintf("%.1f MiB", float64(kb)/1024) }

func kernelRelease() string {
	b, err := os.ReadFile("/proc/sys/kernel/osrelease")
	if err != nil {
		return "?"
	}
	return strings.TrimSpace(string(b))
}

// queueFS names the file system type of dir (tmpfs or a disk's).
func queueFS(dir string) string {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return dir
	}
	kind := fmt.Sprintf("fs 0x%x", st.Type)
	switch st.Type {
	case 0x01021994:
		kind = "tmpfs"
	case 0xEF53:
		kind = "ext4"
	case 0x58465342:
		kind = "xfs"
	case 0x9123683E:
		kind = "btrfs"
	case 0x794c7630:
		kind = "overlayfs"
	}
	return fmt.Sprintf("%s (%s)", dir, kind)
}
