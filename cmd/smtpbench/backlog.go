package main

import (
	"fmt"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"time"
)

// The backlog mode: N messages (default 1,000,000) are submitted through
// the submission port while their destination is down (nothing listens on
// the sink's port: connection refused), so the queue defers them with its
// dead-destination rule. Caddy is then stopped, the sink started on that
// port, and once every message is due again Caddy is started: the time
// from its start to the first delivery, and the drain until the last one.
//
// The same is done first with a small queue (-ref, 20,000): its drain
// rate is the reference, the rate "with an empty queue", for the goal
// (the big queue drains at least 80% as fast).
//
// When are the messages due again? The first message's attempt fails at
// once (connection refused), the destination is suspended until that
// message's next retry (queue.retry, ±10% jitter), and every later message
// is deferred, without a connection, to the end of that suspension, or to
// its own next retry if sooner. So every message is due at most 1.1 ×
// retry after the fill began. queue.retry is set long enough for the
// suspension to outlast the fill (three times the fill time that the reference
// run's rate predicts, at least 2m; -retry sets it): otherwise the
// suspension would end during the fill, a probe would fail, and the whole
// backlog would be deferred once more. The command then waits until
// 1.1 × retry after the fill began (plus 30 s) before the restart.

// backlogResult is one backlog run's figures.
type backlogResult struct {
	n           int
	retry       time.Duration
	fill        time.Duration // smtp-source's time: the last 250
	fillCPU     time.Duration // caddy's CPU from the fill's start until it was idle
	fillPeakKB  int64         // VmHWM over the fill
	queuedRSSKB int64         // VmRSS once idle, the backlog queued
	storeBytes  int64         // du of the queue folder with caddy stopped
	storeApp    int64         // apparent size
	waited      time.Duration // between the stop and the restart
	ready       time.Duration // restart: until the admin endpoint answered
	first       time.Duration // restart: until the sink counted the first message
	drain       time.Duration // first to last message at the sink
	drainCPU    time.Duration // caddy's CPU from the restart to an empty queue
	drainPeakKB int64         // VmHWM from the restart to an empty queue
	restartRSS  int64         // VmRSS just after the first delivery
	slowest     float64       // the slowest tenth of the drain, msg/s
	total       time.Duration // the run's wall time
	logNote     string
	fillNote    string
	fillOther   time.Duration // the rest of the machine's CPU over the fill
	drainOther  time.Duration // and over the restart and drain
}

func (r backlogResult) drainRate() float64 { return float64(r.n-1) / r.drain.Seconds() }

func (b *bench) backlog() error {
	progress("backlog: %d messages (reference run: %d), %d connections, files in %s (%s)", b.n, b.refN, b.conns, b.dir, fsType(b.dir))
	bin, err := caddyBinary(b.ctx, b.caddyFlag, b.dir)
	if err != nil {
		return err
	}
	b.caddyBin = bin
	ref, err := b.backlogRun("ref", b.refN, b.refRetry)
	if err != nil {
		return fmt.Errorf("reference run: %w", err)
	}
	retry := b.retry
	if retry == 0 {
		predicted := time.Duration(float64(b.n) / (float64(ref.n) / ref.fill.Seconds()) * float64(time.Second))
		retry = max(2*time.Minute, (3 * predicted).Round(time.Minute))
	}
	main, err := b.backlogRun("main", b.n, retry)
	if err != nil {
		return err
	}
	b.printBacklog(ref, main)
	return nil
}

// backlogRun fills a fresh queue with n messages while the destination is
// down, restarts Caddy with it up, and drains.
func (b *bench) backlogRun(name string, n int, retry time.Duration) (backlogResult, error) {
	r := backlogResult{n: n, retry: retry}
	runStart := time.Now()
	d, err := b.peerDir("backlog-" + name)
	if err != nil {
		return r, err
	}
	sinkPort, err := freePort()
	if err != nil {
		return r, err
	}
	submitPort, err := freePort()
	if err != nil {
		return r, err
	}
	opts := caddyOptions{dir: d, queuePath: filepath.Join(d, "queue"), sinkPort: sinkPort, conns: b.conns,
		submitPort: submitPort, retry: retry.String()}
	c, err := startCaddyBin(b.ctx, b.caddyBin, opts)
	if err != nil {
		return r, err
	}
	stopped := false
	stopCaddy := func() {
		if !stopped {
			stopped = true
			stopProc(c.proc, 30*time.Second)
		}
	}
	b.cl.add(stopCaddy)

	// Fill, the destination down.
	b.waitQuiet()
	pid := strconv.Itoa(c.pid())
	if err := os.WriteFile("/proc/"+pid+"/clear_refs", []byte("5"), 0); err != nil {
		return r, err
	}
	progress("backlog %s: submitting %d messages to %s while the destination %s is down (queue.retry %v)", name, n, hostPort(submitPort), hostPort(sinkPort), retry)
	saved := b.n
	b.n = n
	cpu0 := sessionCPU(c.pid())
	busy0 := machineBusy()
	fillStart := time.Now()
	src, err := b.startSource(b.ctx, hostPort(submitPort))
	b.n = saved
	if err != nil {
		return r, err
	}
	stopTicker := b.tick(fmt.Sprintf("backlog %s: filling", name), func() string {
		rss, _ := statusKB(pid, "VmRSS")
		blocks, _, _ := dirUsage(opts.queuePath)
		return fmt.Sprintf("caddy RSS %s, queue folder %s, %.0f s", mib(rss), mib(blocks/1024), time.Since(fillStart).Seconds())
	})
	var clientCPU time.Duration
	r.fill, clientCPU, err = src.wait()
	if err != nil {
		stopTicker()
		return r, fmt.Errorf("filling: %w", err)
	}
	// The deferrals follow the 250s: wait until caddy is idle.
	if err := waitIdle(c.pid(), 2*time.Second, 30*time.Minute); err != nil {
		stopTicker()
		return r, err
	}
	stopTicker()
	r.fillCPU = sessionCPU(c.pid()) - cpu0
	r.fillOther = max(0, machineBusy()-busy0-r.fillCPU-clientCPU)
	if counts, err := logCount(c.logFile, c.logStart, "queued", "deferred", "delivered", "failed"); err == nil {
		r.fillNote = fmt.Sprintf("%d queued, %d deferred, %d delivered, %d failed while filling", counts["queued"], counts["deferred"], counts["delivered"], counts["failed"])
	}
	r.fillPeakKB, _ = statusKB(pid, "VmHWM")
	r.queuedRSSKB, _ = statusKB(pid, "VmRSS")
	if time.Since(fillStart) > retry*9/10 {
		progress("backlog %s: WARNING: the fill took %v, longer than 0.9 × queue.retry (%v): the destination was probed again during it", name, time.Since(fillStart).Round(time.Second), retry)
	}
	progress("backlog %s: %d messages queued in %.1f s; caddy idle with RSS %s; stopping it", name, n, r.fill.Seconds(), mib(r.queuedRSSKB))
	stopCaddy()
	stopAt := time.Now()
	r.storeBytes, r.storeApp, err = dirUsage(opts.queuePath)
	if err != nil {
		return r, err
	}

	// The destination comes up; every message is due by dueAt.
	s, err := startSinkOn(b.ctx, filepath.Join(d), sinkPort, b.conns)
	if err != nil {
		return r, err
	}
	b.cl.add(func() { stopProc(s.proc, 2*time.Second) })
	defer stopProc(s.proc, 2*time.Second)
	dueAt := fillStart.Add(retry * 11 / 10).Add(30 * time.Second)
	if wait := time.Until(dueAt); wait > 0 {
		progress("backlog %s: waiting %v, until every message is due again (%s)", name, wait.Round(time.Second), dueAt.Format("15:04:05"))
		select {
		case <-b.ctx.Done():
			return r, b.ctx.Err()
		case <-time.After(wait):
		}
	}
	b.waitQuiet()

	// Restart, the destination up: time to the first delivery, the drain.
	progress("backlog %s: restarting caddy with the destination up", name)
	busy1, sink1 := machineBusy(), sessionCPU(s.proc.pid())
	c2, err := startCaddyBin(b.ctx, b.caddyBin, opts)
	if err != nil {
		return r, err
	}
	r.waited = c2.started.Sub(stopAt)
	r.ready = time.Since(c2.started)
	stopped2 := false
	stopCaddy2 := func() {
		if !stopped2 {
			stopped2 = true
			stopProc(c2.proc, 30*time.Second)
		}
	}
	b.cl.add(stopCaddy2)
	defer stopCaddy2()
	pid2 := strconv.Itoa(c2.pid())
	_, firstAt, err := s.waitMessages(b.ctx, 1, time.Millisecond, 5*time.Minute)
	if err != nil {
		return r, fmt.Errorf("the first delivery after the restart: %w", err)
	}
	r.first = firstAt.Sub(c2.started)
	r.ready = min(r.ready, r.first)
	r.restartRSS, _ = statusKB(pid2, "VmRSS")
	progress("backlog %s: first delivery %.2f s after caddy's start; draining", name, r.first.Seconds())
	var prof *profile
	if b.profileDir != "" {
		prof = c2.startProfile(b.ctx, "/debug/pprof/profile", b.profileSeconds, filepath.Join(b.profileDir, "backlog-"+name+"-drain-cpu.pprof"))
	}
	// The sink's count, every 100 ms, for the slowest tenth.
	type point struct {
		at time.Time
		n  int
	}
	var points []point
	idleSince, last := time.Now(), 0
	nextLog := time.Now().Add(30 * time.Second)
	for {
		got, err := s.messages()
		now := time.Now()
		if err != nil {
			return r, err
		}
		points = append(points, point{now, got})
		if got >= n {
			break
		}
		if got != last {
			last, idleSince = got, now
		} else if now.Sub(idleSince) > time.Minute {
			return r, fmt.Errorf("drain stalled at %d of %d messages", got, n)
		}
		if now.After(nextLog) {
			rss, _ := statusKB(pid2, "VmRSS")
			progress("backlog %s: %d of %d delivered, caddy RSS %s", name, got, n, mib(rss))
			nextLog = now.Add(30 * time.Second)
		}
		select {
		case <-b.ctx.Done():
			return r, b.ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	r.drain = points[len(points)-1].at.Sub(firstAt)
	// The slowest tenth: the longest time any tenth of the messages took.
	tenth := max(1, n/10)
	r.slowest = math.Inf(1)
	j := 0
	for i := range points {
		for j < len(points) && points[j].n < points[i].n+tenth {
			j++
		}
		if j == len(points) {
			break
		}
		if d := points[j].at.Sub(points[i].at).Seconds(); d > 0 {
			r.slowest = min(r.slowest, float64(points[j].n-points[i].n)/d)
		}
	}
	if err := c2.waitQueueEmpty(b.ctx, 5*time.Minute); err != nil {
		return r, err
	}
	r.drainCPU = sessionCPU(c2.pid())
	r.drainOther = max(0, machineBusy()-busy1-r.drainCPU-(sessionCPU(s.proc.pid())-sink1))
	r.drainPeakKB, _ = statusKB(pid2, "VmHWM")
	if prof != nil {
		if err := prof.wait(); err != nil {
			progress("profile: %v", err)
		}
	}
	stopCaddy2()
	if counts, err := logCount(c2.logFile, c2.logStart, "delivered", "deferred", "failed"); err == nil {
		r.logNote = fmt.Sprintf("%d delivered, %d deferred, %d failed after the restart", counts["delivered"], counts["deferred"], counts["failed"])
	}
	r.total = time.Since(runStart)
	progress("backlog %s: drained %d in %.1f s (%.0f msg/s); run took %v", name, n, r.drain.Seconds(), r.drainRate(), r.total.Round(time.Second))
	return r, nil
}

// tick prints what status says every 30 s until the returned func is
// called.
func (b *bench) tick(what string, status func() string) func() {
	stop, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(30 * time.Second)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				progress("%s: %s", what, status())
			}
		}
	}()
	return func() { close(stop); <-done }
}

// waitIdle waits until the process pid (its session) used under 5% of a
// core over period, for at most limit.
func waitIdle(pid int, period, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		c0 := sessionCPU(pid)
		time.Sleep(period)
		if sessionCPU(pid)-c0 < period/20 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("caddy still busy after %v", limit)
		}
	}
}

func (b *bench) printBacklog(ref, main backlogResult) {
	fmt.Printf("Backlog: messages of %d bytes (body) submitted over %d connections to caddy's smtp_submission while the destination was down, then caddy restarted with it up; queue in %s; %d CPUs, Linux %s, %s\n\n",
		b.size, b.conns, queueFS(filepath.Dir(b.dir)), runtime.NumCPU(), kernelRelease(), runtime.Version())
	fmt.Println("| queue | fill s | fill msg/s | caddy RSS, backlog queued | peak RSS, fill | store bytes/msg | start → first delivery | drain s | drain msg/s | slowest tenth msg/s | peak RSS, drain | drain CPU µs/msg |")
	fmt.Println("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
	row := func(r backlogResult) {
		fmt.Printf("| %d messages | %.1f | %.0f | %s | %s | %.0f (%.0f apparent) | %.2f s | %.1f | %.0f | %.0f | %s | %.0f |\n",
			r.n, r.fill.Seconds(), float64(r.n)/r.fill.Seconds(), mib(r.queuedRSSKB), mib(r.fillPeakKB),
			float64(r.storeBytes)/float64(r.n), float64(r.storeApp)/float64(r.n), r.first.Seconds(),
			r.drain.Seconds(), r.drainRate(), r.slowest, mib(r.drainPeakKB), float64(r.drainCPU.Microseconds())/float64(r.n))
	}
	row(ref)
	row(main)
	verdict := func(ok bool) string {
		if ok {
			return "met"
		}
		return "NOT met"
	}
	peak := max(main.queuedRSSKB, main.drainPeakKB, main.restartRSS)
	fmt.Printf("\nGoals with %d messages queued: resident memory ≤ 256 MiB: %s (%s at most, RSS idle with the backlog, or peak of the restart and drain; %s peak while filling). Start to first delivery ≤ 10 s: %s (%.2f s; admin endpoint up after %.2f s). Drain ≥ 80%% of the small queue's rate: %s (%.0f%%: %.0f against %.0f msg/s).\n",
		main.n, verdict(peak <= 256*1024), mib(peak), mib(main.fillPeakKB),
		verdict(main.first <= 10*time.Second), main.first.Seconds(), main.ready.Seconds(),
		verdict(main.drainRate() >= 0.8*ref.drainRate()), 100*main.drainRate()/ref.drainRate(), main.drainRate(), ref.drainRate())
	fmt.Printf("CPU seconds of everything else on the machine (not caddy, smtp-source, the sink): filling %.1f and %.1f, restart and drain %.1f and %.1f.\n",
		ref.fillOther.Seconds(), main.fillOther.Seconds(), ref.drainOther.Seconds(), main.drainOther.Seconds())
	for _, r := range []backlogResult{ref, main} {
		if r.fillOther > r.fill/4 || r.drainOther > r.drain/4 {
			fmt.Printf("WARNING: other work used more than a quarter of a core during the run of %d messages: re-run before publishing its figures.\n", r.n)
		}
	}
	fmt.Printf("queue.retry %v and %v; caddy's CPU while filling (submission and deferral): %.0f and %.0f µs/msg; %s; %s. Wall time: %v and %v.\n",
		ref.retry, main.retry, float64(ref.fillCPU.Microseconds())/float64(ref.n), float64(main.fillCPU.Microseconds())/float64(main.n),
		ref.fillNote+"; "+ref.logNote, main.fillNote+"; "+main.logNote, ref.total.Round(time.Second), main.total.Round(time.Second))
}
