package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// appSpec is one row of this app in the end-to-end table: the built Caddy
// with its store and signers, as one instance or two sharing a store.
type appSpec struct {
	dir       string // the instances' folder under the run's ("caddy", "caddy-pg2", ...)
	instances int    // Caddy processes (default 1); two share the PostgreSQL store
	// pg is the PostgreSQL server of a row with the postgres store, db its
	// fresh database; nil: the embedded store.
	pg *pgServer
	db string
	// dkim are the smtp app's signers (dkim.Config as JSON); none: no
	// signing.
	dkim []map[string]any
	// profile is the CPU profile's file name under -profile ("" none), of
	// the first instance.
	profile string
}

// dbCost is what the PostgreSQL server and the wire to it took over a
// row's measurement.
type dbCost struct {
	cpu           time.Duration // the server's CPU (every process of its session)
	wire          connStats     // Caddy's connections to it, from Caddy's side
	conns, closed int           // connections open at the end; closed meanwhile (their counts lost)
	walBytes      uint64        // pg_current_wal_lsn() difference
	counters      pgCounters    // differences of pg_stat_database and pg_stat_wal
	memPSS        int64         // the server's summed PSS, kB (peak of samples)
	memProcs      int
	relay         relayCounts // with -pg-relay, what the relay counted
}

// appRun measures one row of this app: smtp-source into the instances'
// smtp_submission ports (split evenly between two), the queue, and
// deliveries to one smtp-sink.
func (b *bench) appRun(spec appSpec) (e2eResult, error) {
	var r e2eResult
	if spec.instances < 1 {
		spec.instances = 1
	}
	s, stopSink, err := b.sink(spec.dir + "-sink")
	if err != nil {
		return r, err
	}
	defer stopSink()
	var cs []*caddyInstance
	stopAll := func() {
		for _, c := range cs {
			if !c.stopped {
				c.stopped = true
				stopProc(c.proc, 15*time.Second)
			}
		}
	}
	b.cl.add(stopAll)
	defer stopAll()
	for i := range spec.instances {
		d := spec.dir
		if spec.instances > 1 {
			d = fmt.Sprintf("%s-%c", spec.dir, 'a'+i)
		}
		d, err := b.peerDir(d)
		if err != nil {
			return r, err
		}
		port, err := freePort()
		if err != nil {
			return r, err
		}
		o := caddyOptions{dir: d, sinkPort: s.port, conns: b.conns, submitPort: port, dkim: spec.dkim}
		if spec.pg != nil {
			o.store = map[string]any{"module": "postgres", "url": spec.pg.clientURL(spec.db), "instance": filepath.Base(d)}
		} else {
			o.queuePath = filepath.Join(d, "queue")
		}
		if len(spec.dkim) > 0 {
			// The signers look their key records up (at start, then every
			// minute): at a loopback port where nothing answers, so that
			// nothing leaves the machine. The first key signs without its
			// record; Caddy logs a warning once.
			dnsPort, err := freePort()
			if err != nil {
				return r, err
			}
			o.resolver = map[string]any{"servers": []string{fmt.Sprintf("udp://127.0.0.1:%d", dnsPort)}, "timeout": "1s", "attempts": 1}
		}
		c, err := startCaddyBin(b.ctx, b.caddyBin, o)
		if err != nil {
			return r, err
		}
		cs = append(cs, c)
		if len(spec.dkim) > 0 {
			if err := dkimKeyMade(c, dkimRowOf(spec.dir)); err != nil {
				return r, err
			}
		}
	}

	b.waitQuiet()
	var startRSS []int64
	var pids []int
	for _, c := range cs {
		pid := strconv.Itoa(c.pid())
		if err := os.WriteFile("/proc/"+pid+"/clear_refs", []byte("5"), 0); err != nil {
			return r, fmt.Errorf("resetting caddy's VmHWM: %w", err)
		}
		rss, err := statusKB(pid, "VmRSS")
		if err != nil {
			return r, err
		}
		startRSS = append(startRSS, rss)
		pids = append(pids, c.pid())
	}
	var prof *profile
	if b.profileDir != "" && spec.profile != "" {
		prof = cs[0].startProfile(b.ctx, "/debug/pprof/profile", b.profileSeconds, filepath.Join(b.profileDir, spec.profile))
	}
	var db *dbCost
	var pg0 pgCounters
	var wire0 map[uint32]connStats
	var relay0 relayCounts
	var mem *memSampler
	if spec.pg != nil {
		db = new(dbCost)
		if pg0, err = spec.pg.stats(b.ctx, spec.db); err != nil {
			return r, err
		}
		if pg0.lsn, err = spec.pg.walPosition(b.ctx); err != nil {
			return r, err
		}
	}
	addrs := make([]string, len(cs))
	for i, c := range cs {
		addrs[i] = hostPort(c.opts.submitPort)
	}
	store := "queue in " + cs[0].opts.queuePath
	if spec.pg != nil {
		store = fmt.Sprintf("queue in PostgreSQL %s (database %s)", spec.pg.version, spec.db)
	}
	progress("%s: smtp-source into caddy's smtp_submission %s, %s, delivered to smtp-sink %s",
		spec.dir, strings.Join(addrs, " and "), store, s.addr)

	w := startWindow(s)
	snap := snapshotCPU()
	sinkRead0 := readChars(s.proc.pid())
	var dbCPU0 time.Duration
	if spec.pg != nil {
		// The server's counters first, Caddy's last: nothing of this
		// command's own queries falls inside Caddy's window.
		if wire0, err = tcpConns(spec.pg.clientPort(), pids); err != nil {
			return r, err
		}
		if spec.pg.relay != nil {
			relay0 = spec.pg.relay.counts()
		}
		mem = sampleProcs(spec.pg.procs, 500*time.Millisecond, 4)
		defer func() {
			if mem != nil {
				mem.stop()
			}
		}()
		dbCPU0 = spec.pg.cpu()
	}
	cpu0 := caddyCPU(cs)
	// The messages split evenly between the instances, and so do the
	// connections: smtp-source sends N over C connections in every row.
	type srcEnd struct {
		end       time.Time
		clientCPU time.Duration
		err       error
	}
	ends := make(chan srcEnd, len(cs))
	var first time.Time
	sctx, cancel := context.WithTimeout(b.ctx, b.timeout)
	defer cancel()
	for i, addr := range addrs {
		n := b.n / len(cs)
		if i == 0 {
			n += b.n % len(cs)
		}
		conns := max(1, b.conns/len(cs))
		src, err := b.startSourceN(sctx, addr, n, conns)
		if err != nil {
			return r, err
		}
		if i == 0 {
			first = src.start
		}
		go func() {
			_, cpu, err := src.wait()
			ends <- srcEnd{time.Now(), cpu, err}
		}()
	}
	var last time.Time
	for range cs {
		e := <-ends
		if e.err != nil {
			return r, fmt.Errorf("submitting to caddy: %w", e.err)
		}
		r.clientCPU += e.clientCPU
		if e.end.After(last) {
			last = e.end
		}
	}
	got, end, err := s.waitMessages(b.ctx, b.n, 5*time.Millisecond, 30*time.Second)
	if err != nil {
		return r, fmt.Errorf("caddy's deliveries: %w", err)
	}
	// The queue removes a message after the sink's reply: count that work
	// too (not its time), as Postfix's removal of its queue files is. Any
	// instance lists the whole shared queue.
	if err := cs[0].waitQueueEmpty(b.ctx, time.Minute); err != nil {
		return r, err
	}
	cpu1 := caddyCPU(cs)
	var wire1 map[uint32]connStats
	if spec.pg != nil {
		db.cpu = spec.pg.cpu() - dbCPU0
		if wire1, err = tcpConns(spec.pg.clientPort(), pids); err != nil {
			return r, err
		}
		if spec.pg.relay != nil {
			db.relay = spec.pg.relay.counts().sub(relay0)
		}
	}
	sinkRead1 := readChars(s.proc.pid())
	wEnd := windowEnd(s)
	if b.verbose {
		progress("%s: CPU by process over the measurement: %s", spec.dir, snap.topSince(8))
	}
	var hwm []int64
	for _, c := range cs {
		v, err := statusKB(strconv.Itoa(c.pid()), "VmHWM")
		if err != nil {
			return r, err
		}
		hwm = append(hwm, v)
		r.memKB += v
	}
	r.delivered, r.sinkCount = got, got
	r.accept, r.elapsed = last.Sub(first), end.Sub(first)
	r.cpu = cpu1 - cpu0
	r.sinkRead = sinkRead1 - sinkRead0
	w.endAt(&r.result, wEnd)
	r.otherCPU = max(0, r.otherCPU-r.clientCPU)
	if len(cs) == 1 {
		r.mem = fmt.Sprintf("%s RSS (VmHWM; %s at start)", mib(hwm[0]), mib(startRSS[0]))
	} else {
		var h, st []string
		for i := range hwm {
			h, st = append(h, mib(hwm[i])), append(st, mib(startRSS[i]))
		}
		r.mem = fmt.Sprintf("%s RSS (VmHWM of each; %s at start)", strings.Join(h, " + "), strings.Join(st, " + "))
	}
	if prof != nil {
		progress("waiting for the %d s CPU profile to end", b.profileSeconds)
		if err := prof.wait(); err != nil {
			progress("profile: %v", err)
		}
	}
	counts := map[string]int{}
	for _, c := range cs {
		cc, err := logCount(c.logFile, c.logStart, "queued", "delivered", "deferred", "failed")
		if err != nil {
			return r, err
		}
		for k, v := range cc {
			counts[k] += v
		}
	}
	r.logNote = fmt.Sprintf("caddy logged %d queued, %d delivered, %d deferred, %d failed", counts["queued"], counts["delivered"], counts["deferred"], counts["failed"])
	if len(spec.dkim) > 0 {
		if r.dkim, err = b.checkDKIM(cs[0], spec); err != nil {
			return r, err
		}
		cc, err := logCount(cs[0].logFile, cs[0].logStart, "message not signed")
		if err != nil {
			return r, err
		}
		if r.dkim.notSigned = cc["message not signed"]; r.dkim.notSigned > 0 {
			return r, fmt.Errorf("%s: caddy logged %d \"message not signed\"", spec.dir, r.dkim.notSigned)
		}
	}
	if spec.pg != nil {
		m := mem.stop()
		mem = nil
		db.memPSS, db.memProcs = m.peakPSS, m.procs
		db.wire, db.conns, db.closed = connDelta(wire0, wire1)
		r.otherCPU = max(0, r.otherCPU-db.cpu)
		var lsn uint64
		if lsn, err = spec.pg.walPosition(b.ctx); err != nil {
			return r, err
		}
		db.walBytes = lsn - pg0.lsn
		// The statistics views are written by the backends as they exit.
		stopAll()
		if err := spec.pg.waitNoBackends(b.ctx, spec.db, 20*time.Second); err != nil {
			return r, err
		}
		pg1, err := spec.pg.stats(b.ctx, spec.db)
		if err != nil {
			return r, err
		}
		db.counters = pgCounters{commits: pg1.commits - pg0.commits, rollbacks: pg1.rollbacks - pg0.rollbacks,
			walRecords: pg1.walRecords - pg0.walRecords, walFPI: pg1.walFPI - pg0.walFPI,
			walSyncs: pg1.walSyncs - pg0.walSyncs, walWrites: pg1.walWrites - pg0.walWrites}
		r.db = db
		r.mem += fmt.Sprintf("; PostgreSQL %s PSS (sum over ≤%d processes)", mib(db.memPSS), db.memProcs)
	}
	return r, nil
}

// caddyCPU is the CPU the instances have used so far.
func caddyCPU(cs []*caddyInstance) time.Duration {
	var d time.Duration
	for _, c := range cs {
		d += sessionCPU(c.pid())
	}
	return d
}

// readChars is the bytes process pid has read so far through read(2)
// and its kin, sockets included (rchar of /proc/PID/io): for smtp-sink,
// what its clients sent it.
func readChars(pid int) int64 {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/io")
	if err != nil {
		return 0
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "rchar:"); ok {
			v, _ := strconv.ParseInt(strings.TrimSpace(rest), 10, 64)
			return v
		}
	}
	return 0
}

// startSourceN starts smtp-source sending n messages over conns
// connections to addr.
func (b *bench) startSourceN(ctx context.Context, addr string, n, conns int) (*source, error) {
	bin, err := lookPath("smtp-source")
	if err != nil {
		return nil, err
	}
	argv := sourceArgsN(bin, addr, n, b.size, conns)
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
