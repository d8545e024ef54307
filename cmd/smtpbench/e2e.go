package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"
)

// The end-to-end mode (the default): smtp-source submits N messages over C
// connections to a receiver that keeps each one durably before its 250 and
// relays it to smtp-sink:
//
//   - this app: the built Caddy binary, its layer4 smtp_submission
//     handler into the queue on disk, delivered by the queue to the sink;
//   - Postfix: a private instance, smtp-source into its smtpd, relayhost
//     the sink, its queue on the same disk;
//   - smtp-source straight into smtp-sink: the ceiling.
//
// Each receiver is timed twice from the first connection: until the last
// 250 (smtp-source exits: the accept rate) and until the sink has counted
// the last message (the end-to-end rate).

// e2eResult is one receiver's figures.
type e2eResult struct {
	result
	accept    time.Duration // until smtp-source exited (its last 250)
	clientCPU time.Duration // smtp-source's CPU
	mem       string        // the peak memory, in words
	logNote   string
}

func (r e2eResult) acceptRate() float64 { return float64(r.delivered) / r.accept.Seconds() }

// source is a running smtp-source.
type source struct {
	cmd   *exec.Cmd
	start time.Time
	out   *strings.Builder
	argv  []string
}

// startSource starts smtp-source sending b.n messages over b.conns
// connections to addr.
func (b *bench) startSource(ctx context.Context, addr string) (*source, error) {
	bin, err := lookPath("smtp-source")
	if err != nil {
		return nil, err
	}
	argv := b.sourceArgs(bin, addr)
	cmd := commandContext(ctx, argv...)
	out := new(strings.Builder)
	cmd.Stdout, cmd.Stderr = out, out
	s := &source{cmd: cmd, out: out, argv: argv}
	s.start = time.Now()
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	return s, nil
}

// wait waits for smtp-source to exit and returns its wall time and CPU.
// It exits 0 only when every message got its 250.
func (s *source) wait() (time.Duration, time.Duration, error) {
	err := s.cmd.Wait()
	elapsed := time.Since(s.start)
	var cpu time.Duration
	if ps := s.cmd.ProcessState; ps != nil {
		cpu = ps.UserTime() + ps.SystemTime()
	}
	if err != nil {
		return elapsed, cpu, fmt.Errorf("%s: %w: %s", strings.Join(s.argv, " "), err, tail([]byte(s.out.String()), 2000))
	}
	return elapsed, cpu, nil
}

func (b *bench) e2e() error {
	progress("end to end: %d messages of %d bytes, %d connections, files (and both queues) in %s (%s)", b.n, b.size, b.conns, b.dir, fsType(b.dir))
	bin, err := caddyBinary(b.ctx, b.caddyFlag, b.dir)
	if err != nil {
		return err
	}
	b.caddyBin = bin
	app, err := b.appE2E()
	if err != nil {
		return err
	}
	pf, err := b.postfixE2E()
	if err != nil {
		return err
	}
	b.waitQuiet()
	src, err := b.sourcePhase()
	if err != nil {
		return err
	}
	ceiling := e2eResult{result: src, accept: src.elapsed, clientCPU: src.cpu, mem: fmt.Sprintf("%s RSS (VmHWM of smtp-source)", mib(src.memKB))}
	b.printE2E(app, pf, ceiling)
	return nil
}

// appE2E measures the built Caddy.
func (b *bench) appE2E() (e2eResult, error) {
	var r e2eResult
	s, stopSink, err := b.sink("app-sink")
	if err != nil {
		return r, err
	}
	defer stopSink()
	d, err := b.peerDir("caddy")
	if err != nil {
		return r, err
	}
	port, err := freePort()
	if err != nil {
		return r, err
	}
	c, err := startCaddyBin(b.ctx, b.caddyBin, caddyOptions{dir: d, queuePath: filepath.Join(d, "queue"),
		sinkPort: s.port, conns: b.conns, submitPort: port})
	if err != nil {
		return r, err
	}
	stopped := false
	stopCaddy := func() {
		if !stopped {
			stopped = true
			stopProc(c.proc, 15*time.Second)
		}
	}
	b.cl.add(stopCaddy)
	defer stopCaddy()

	b.waitQuiet()
	pid := strconv.Itoa(c.pid())
	if err := os.WriteFile("/proc/"+pid+"/clear_refs", []byte("5"), 0); err != nil {
		return r, fmt.Errorf("resetting caddy's VmHWM: %w", err)
	}
	startRSS, err := statusKB(pid, "VmRSS")
	if err != nil {
		return r, err
	}
	var prof *profile
	if b.profileDir != "" {
		prof = c.startProfile(b.ctx, "/debug/pprof/profile", b.profileSeconds, filepath.Join(b.profileDir, "e2e-cpu.pprof"))
	}
	progress("this app: smtp-source into caddy's smtp_submission %s, queue in %s, delivered to smtp-sink %s", hostPort(port), c.opts.queuePath, s.addr)
	w := startWindow(s)
	snap := snapshotCPU()
	cpu0 := sessionCPU(c.pid())
	src, err := b.startSource(b.ctx, hostPort(port))
	if err != nil {
		return r, err
	}
	accept, clientCPU, err := src.wait()
	if err != nil {
		return r, fmt.Errorf("submitting to caddy: %w", err)
	}
	got, end, err := s.waitMessages(b.ctx, b.n, 5*time.Millisecond, 30*time.Second)
	if err != nil {
		return r, fmt.Errorf("caddy's deliveries: %w", err)
	}
	// The queue removes a message after the sink's reply: count that work
	// too (not its time), as Postfix's removal of its queue files is.
	if err := c.waitQueueEmpty(b.ctx, time.Minute); err != nil {
		return r, err
	}
	cpu1 := sessionCPU(c.pid())
	wEnd := windowEnd(s)
	if b.verbose {
		progress("this app: CPU by process over the measurement: %s", snap.topSince(8))
	}
	hwm, err := statusKB(pid, "VmHWM")
	if err != nil {
		return r, err
	}
	r.delivered, r.sinkCount = got, got
	r.accept, r.elapsed = accept, end.Sub(src.start)
	r.cpu, r.memKB, r.clientCPU = cpu1-cpu0, hwm, clientCPU
	w.endAt(&r.result, wEnd)
	r.otherCPU = max(0, r.otherCPU-clientCPU)
	r.mem = fmt.Sprintf("%s RSS (VmHWM; %s at start)", mib(hwm), mib(startRSS))
	if prof != nil {
		progress("waiting for the %d s CPU profile to end", b.profileSeconds)
		if err := prof.wait(); err != nil {
			progress("profile: %v", err)
		}
	}
	if counts, err := logCount(c.logFile, c.logStart, "queued", "delivered", "deferred", "failed"); err == nil {
		r.logNote = fmt.Sprintf("caddy logged %d queued, %d delivered, %d deferred, %d failed", counts["queued"], counts["delivered"], counts["deferred"], counts["failed"])
	}
	return r, nil
}

// postfixE2E measures Postfix receiving and relaying at once.
func (b *bench) postfixE2E() (e2eResult, error) {
	var r e2eResult
	s, stopSink, err := b.sink("postfix-sink")
	if err != nil {
		return r, err
	}
	defer stopSink()
	d, err := b.peerDir("postfix")
	if err != nil {
		return r, err
	}
	pf, err := startRelay(b.ctx, d, s.port, b.conns, b.n, false)
	if err != nil {
		return r, err
	}
	b.postfixVersion = pf.version
	stopped := false
	stopPF := func() {
		if !stopped {
			stopped = true
			stopProc(pf.proc, 0)
		}
	}
	b.cl.add(stopPF)
	defer stopPF()

	b.waitQuiet()
	sid := pf.proc.pid()
	progress("postfix %s: smtp-source into its smtpd %s, queue in %s, relayed to smtp-sink %s", pf.version, pf.inject, pf.spool, s.addr)
	w := startWindow(s)
	snap := snapshotCPU()
	cpu0 := sessionCPU(sid)
	mem := sampleSession(sid, 500*time.Millisecond, 4)
	src, err := b.startSource(b.ctx, pf.inject)
	if err != nil {
		mem.stop()
		return r, err
	}
	accept, clientCPU, err := src.wait()
	if err != nil {
		mem.stop()
		return r, fmt.Errorf("submitting to postfix: %w", err)
	}
	got, end, err := s.waitMessages(b.ctx, b.n, 20*time.Millisecond, 30*time.Second)
	if err != nil {
		mem.stop()
		return r, fmt.Errorf("postfix's deliveries: %w", err)
	}
	qerr := pf.waitQueue(b.ctx, 30*time.Second, func(in, act, def int) bool { return in+act+def == 0 })
	cpu1 := sessionCPU(sid)
	wEnd := windowEnd(s)
	if b.verbose {
		progress("postfix: CPU by process over the measurement (master holds its reaped children's): %s", snap.topSince(8))
	}
	m := mem.stop()
	if qerr != nil {
		return r, qerr
	}
	r.delivered, r.sinkCount = got, got
	r.accept, r.elapsed = accept, end.Sub(src.start)
	r.cpu, r.memKB, r.clientCPU = cpu1-cpu0, m.peakRSS, clientCPU
	w.endAt(&r.result, wEnd)
	r.otherCPU = max(0, r.otherCPU-clientCPU)
	r.mem = fmt.Sprintf("%s PSS, %s RSS (sums over ≤%d processes)", mib(m.peakPSS), mib(m.peakRSS), m.procs)
	return r, nil
}

func (b *bench) printE2E(app, pf, src e2eResult) {
	fmt.Printf("%d messages of %d bytes (body), %d connections, smtp-source → receiver → smtp-sink on 127.0.0.1; queues in %s; %d CPUs, Linux %s, %s, Postfix %s\n\n",
		b.n, b.size, b.conns, queueFS(filepath.Dir(b.dir)), runtime.NumCPU(), kernelRelease(), runtime.Version(), b.postfixVersion)
	fmt.Println("| receiver | delivered | accept s | accept msg/s | end-to-end s | end-to-end msg/s | × Postfix | of ceiling | CPU s | CPU µs/msg | peak memory |")
	fmt.Println("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|")
	row := func(name string, r e2eResult) {
		fmt.Printf("| %s | %d | %.2f | %.0f | %.2f | %.0f | %.2f× | %.0f%% | %.2f | %.0f | %s |\n",
			name, r.delivered, r.accept.Seconds(), r.acceptRate(), r.elapsed.Seconds(), r.rate(), r.rate()/pf.rate(),
			100*r.rate()/src.rate(), r.cpu.Seconds(), float64(r.cpu.Microseconds())/float64(r.delivered), r.mem)
	}
	row("this app (caddy: smtp_submission → queue → delivery)", app)
	row("Postfix (smtpd → queue → smtp)", pf)
	row("smtp-source → smtp-sink (ceiling)", src)
	ratio := app.rate() / pf.rate()
	verdict := "met"
	if ratio < 5 {
		verdict = "NOT met"
	}
	fmt.Printf("\nGoal, end to end at least 5× Postfix: %s (%.2f×; accepting %.2f×). CPU per message: this app %.2f× Postfix's. %s.\n",
		verdict, ratio, app.acceptRate()/pf.acceptRate(),
		(app.cpu.Seconds()/float64(app.delivered))/(pf.cpu.Seconds()/float64(pf.delivered)), app.logNote)
	fmt.Printf("CPU seconds over each measurement, smtp-source / the sink / everything else on the machine: this app %.2f / %.2f / %.2f, Postfix %.2f / %.2f / %.2f, ceiling (smtp-source is the row) – / %.2f / %.2f.\n",
		app.clientCPU.Seconds(), app.sinkCPU.Seconds(), app.otherCPU.Seconds(),
		pf.clientCPU.Seconds(), pf.sinkCPU.Seconds(), pf.otherCPU.Seconds(),
		src.sinkCPU.Seconds(), src.otherCPU.Seconds())
	for _, r := range []struct {
		name string
		e2eResult
	}{{"this app", app}, {"Postfix", pf}, {"the ceiling", src}} {
		if r.otherCPU > r.elapsed/4 {
			fmt.Printf("WARNING: other work used %.1f CPU-s during the %.1f s of %s (more than a quarter of a core): re-run before publishing these figures.\n",
				r.otherCPU.Seconds(), r.elapsed.Seconds(), r.name)
		}
	}
}

// fsType names the file system of dir.
func fsType(dir string) string {
	s := queueFS(dir)
	if i := strings.LastIndexByte(s, '('); i >= 0 {
		return strings.TrimSuffix(s[i+1:], ")")
	}
	return s
}
