package main

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
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
// -dkim adds the app signing every message (dkim.go), -pg the app with the
// PostgreSQL store, one instance and two sharing it (pg.go, approw.go).
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
	sinkRead  int64      // bytes the sink read over the measurement (this app's rows)
	db        *dbCost    // the PostgreSQL rows' database costs
	dkim      *dkimCheck // the DKIM rows' proof of signing
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
	return b.startSourceN(ctx, addr, b.n, b.conns)
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
	rows := []appRow{{name: appLabel, short: "this app", e2eResult: app}}
	if b.dkim {
		for _, d := range dkimRows {
			r, err := b.appRun(appSpec{dir: d.dir, dkim: d.signers, profile: "e2e-" + strings.TrimPrefix(d.dir, "caddy-") + "-cpu.pprof"})
			if err != nil {
				return err
			}
			if err := checkSigned(d.name, app, r); err != nil {
				return err
			}
			rows = append(rows, appRow{name: d.name, short: "DKIM " + d.algorithm, e2eResult: r})
		}
	}
	if b.pg {
		pgRows, err := b.pgRows()
		if err != nil {
			return err
		}
		rows = append(rows, pgRows...)
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
	b.printE2E(rows, pf, ceiling)
	return nil
}

// appLabel is the first row's: the app with its embedded store.
const appLabel = "this app (caddy: smtp_submission → queue → delivery)"

// appRow is one row of this app in the table.
type appRow struct {
	name, short string
	e2eResult
}

// appE2E measures the built Caddy, with the embedded store.
func (b *bench) appE2E() (e2eResult, error) {
	return b.appRun(appSpec{dir: "caddy", profile: "e2e-cpu.pprof"})
}

// postfixE2E measures Postfix receiving and relaying at once.
func (b *bench) postfixE2E() (e2eResult, error) {
	var r e2eResult
	s, pf, stop, err := b.startPostfix(false)
	if err != nil {
		return r, err
	}
	defer stop()

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

func (b *bench) printE2E(rows []appRow, pf, src e2eResult) {
	app := rows[0].e2eResult
	fmt.Printf("%d messages of %d bytes (body), %d connections, smtp-source → receiver → smtp-sink on 127.0.0.1; queues in %s; %d CPUs, Linux %s, %s, Postfix %s\n\n",
		b.n, b.size, b.conns, queueFS(filepath.Dir(b.dir)), runtime.NumCPU(), kernelRelease(), runtime.Version(), b.postfixVersion)
	if b.pgServer != nil {
		fmt.Printf("PostgreSQL %s, a private cluster (initdb) on 127.0.0.1 with its data in the run's folder (the same file system), at the server's defaults: %s.\n\n",
			b.pgServer.version, b.pgServer.settings)
	}
	dbCol, dbSep := "", ""
	if b.pg {
		dbCol, dbSep = " PostgreSQL CPU µs/msg |", "--:|"
	}
	fmt.Printf("| receiver | delivered | accept s | accept msg/s | end-to-end s | end-to-end msg/s | × Postfix | of ceiling | CPU s | CPU µs/msg |%s peak memory |\n", dbCol)
	fmt.Printf("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|%s---|\n", dbSep)
	row := func(name string, r e2eResult) {
		db := ""
		if b.pg {
			db = " – |"
			if r.db != nil {
				db = fmt.Sprintf(" %.0f |", perMsg(r.db.cpu, r.delivered))
			}
		}
		fmt.Printf("| %s | %d | %.2f | %.0f | %.2f | %.0f | %.2f× | %.0f%% | %.2f | %.0f |%s %s |\n",
			name, r.delivered, r.accept.Seconds(), r.acceptRate(), r.elapsed.Seconds(), r.rate(), r.rate()/pf.rate(),
			100*r.rate()/src.rate(), r.cpu.Seconds(), perMsg(r.cpu, r.delivered), db, r.mem)
	}
	for _, r := range rows {
		row(r.name, r.e2eResult)
	}
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
	var parts []string
	for _, r := range rows {
		parts = append(parts, fmt.Sprintf("%s %.2f / %.2f / %.2f", r.short, r.clientCPU.Seconds(), r.sinkCPU.Seconds(), r.otherCPU.Seconds()))
	}
	fmt.Printf("CPU seconds over each measurement, smtp-source / the sink / everything else on the machine: %s, Postfix %.2f / %.2f / %.2f, ceiling (smtp-source is the row) – / %.2f / %.2f.\n",
		strings.Join(parts, ", "),
		pf.clientCPU.Seconds(), pf.sinkCPU.Seconds(), pf.otherCPU.Seconds(),
		src.sinkCPU.Seconds(), src.otherCPU.Seconds())
	for _, r := range rows[1:] {
		if r.dkim != nil {
			d := r.dkim
			fmt.Printf("%s: end to end %.2f× the unsigned row's rate (accepting %.2f×), CPU %+.0f µs/msg (%+.0f%%). Every message signed: the check message's %s signature (d=example.org, %d bytes) verified (go-msgauth, with the public key from Caddy's storage); the sink read %.1f bytes more per message than in the unsigned row; %s, no \"message not signed\".\n",
				r.short, r.rate()/app.rate(), r.acceptRate()/app.acceptRate(),
				perMsg(r.cpu, r.delivered)-perMsg(app.cpu, app.delivered), 100*(perMsg(r.cpu, r.delivered)/perMsg(app.cpu, app.delivered)-1),
				d.algorithm, d.sigBytes, d.extra, r.logNote)
		}
		if r.db != nil {
			fmt.Printf("%s: end to end %.2f× the embedded store's rate (accepting %.2f×); CPU per message, Caddy %.0f µs + PostgreSQL %.0f µs = %.0f µs (the embedded store's row: %.0f µs). %s.\n",
				r.short, r.rate()/app.rate(), r.acceptRate()/app.acceptRate(),
				perMsg(r.cpu, r.delivered), perMsg(r.db.cpu, r.delivered), perMsg(r.cpu+r.db.cpu, r.delivered), perMsg(app.cpu, app.delivered), r.logNote)
		}
	}
	all := append(slices.Clone(rows), appRow{short: "Postfix", e2eResult: pf}, appRow{short: "the ceiling", e2eResult: src})
	for _, r := range all {
		if r.otherCPU > r.elapsed/4 {
			fmt.Printf("WARNING: other work used %.1f CPU-s during the %.1f s of %s (more than a quarter of a core): re-run before publishing these figures.\n",
				r.otherCPU.Seconds(), r.elapsed.Seconds(), r.short)
		}
	}
	if b.pg {
		b.printDB(rows)
	}
}

// perMsg is d per message, in µs.
func perMsg(d time.Duration, n int) float64 { return float64(d.Microseconds()) / float64(n) }

// fsType names the file system of dir.
func fsType(dir string) string {
	s := queueFS(dir)
	if i := strings.LastIndexByte(s, '('); i >= 0 {
		return strings.TrimSuffix(s[i+1:], ")")
	}
	return s
}
