package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/seed7b014b84/caddy-smtp/internal/procstat"
)

// This file runs the private PostgreSQL cluster of the -pg rows, as
// internal/peertest/postgres.go does for tests (initdb into the run's
// folder, a fresh loopback port), but with the server's own defaults:
// fsync, synchronous_commit and full_page_writes on, as in production.

// pgBinDir is where Debian puts PostgreSQL's programs (not on PATH).
const pgBinDir = "/usr/lib/postgresql/15/bin"

// pgServer is a running private cluster with a superuser "caddy" trusted
// without a password.
type pgServer struct {
	dir     string
	port    int
	proc    *proc
	version string
	// settings are the server's settings that matter for the figures, as
	// SHOW reports them once it runs.
	settings string
	// relay, with -pg-relay, is between Caddy and the server.
	relay *pgRelay
}

// startPG makes a cluster in dir (initdb) and starts it on a fresh
// 127.0.0.1 port, as the postgres user, in a session of its own.
func startPG(ctx context.Context, dir string) (*pgServer, error) {
	bin := filepath.Join(pgBinDir, "postgres")
	if _, err := os.Stat(bin); err != nil {
		return nil, fmt.Errorf("postgresql: %w (apt-get install postgresql)", err)
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, fmt.Errorf("postgresql: %w", err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	cred := &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
	data, run := filepath.Join(dir, "data"), filepath.Join(dir, "run")
	for _, d := range []string{dir, data, run} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, err
		}
		if err := os.Chown(d, uid, gid); err != nil {
			return nil, err
		}
	}
	ictx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	initdb := exec.CommandContext(ictx, filepath.Join(pgBinDir, "initdb"), "-D", data, "-A", "trust", "-U", "caddy",
		"--no-sync", "-E", "UTF8", "--locale=C")
	initdb.Dir = dir
	initdb.SysProcAttr = &syscall.SysProcAttr{Credential: cred, Setpgid: true}
	if out, err := initdb.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("initdb: %w\n%s", err, tail(out, 2000))
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	p := &pgServer{dir: dir, port: port}
	logFile := filepath.Join(dir, "postgres.log")
	out, err := os.OpenFile(logFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	// Only where it listens is set: every other setting is the server's
	// default (initdb's postgresql.conf).
	cmd := exec.Command(bin, "-D", data, "-k", run, "-h", "127.0.0.1", "-p", strconv.Itoa(port))
	cmd.Dir = dir
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred, Setsid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		_ = out.Close()
		return nil, fmt.Errorf("starting postgres: %w", err)
	}
	p.proc = &proc{name: fmt.Sprintf("postgres 127.0.0.1:%d", port), cmd: cmd, done: make(chan struct{}), out: out}
	go func() {
		p.proc.waitErr = cmd.Wait()
		close(p.proc.done)
	}()
	deadline := time.Now().Add(60 * time.Second)
	for {
		err := p.ping(ctx)
		if err == nil {
			break
		}
		if p.proc.exited() || time.Now().After(deadline) || ctx.Err() != nil {
			p.stop()
			log, _ := os.ReadFile(logFile)
			return nil, fmt.Errorf("postgres not ready: %v\n%s", err, tail(log, 2000))
		}
		time.Sleep(50 * time.Millisecond)
	}
	return p, p.describe(ctx)
}

// url is the connection URL of database db.
func (p *pgServer) url(db string) string {
	return fmt.Sprintf("postgres://caddy@127.0.0.1:%d/%s?sslmode=disable", p.port, db)
}

// clientPort is the port Caddy connects to: the server's, or the relay's.
func (p *pgServer) clientPort() int {
	if p.relay != nil {
		return p.relay.port()
	}
	return p.port
}

// clientURL is the URL of database db that Caddy is given.
func (p *pgServer) clientURL(db string) string {
	return fmt.Sprintf("postgres://caddy@127.0.0.1:%d/%s?sslmode=disable", p.clientPort(), db)
}

// conn opens a connection to database db, for the command's own queries
// (made outside the CPU measurements).
func (p *pgServer) conn(ctx context.Context, db string) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig(p.url(db))
	if err != nil {
		return nil, err
	}
	cfg.ConnectTimeout = 5 * time.Second
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	return pgx.ConnectConfig(ctx, cfg)
}

// query runs f on a fresh connection to db, with a time limit.
func (p *pgServer) query(ctx context.Context, db string, f func(ctx context.Context, c *pgx.Conn) error) error {
	c, err := p.conn(ctx, db)
	if err != nil {
		return fmt.Errorf("postgres: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	defer c.Close(context.Background())
	if err := f(ctx, c); err != nil {
		return fmt.Errorf("postgres: %w", err)
	}
	return nil
}

func (p *pgServer) ping(ctx context.Context) error {
	return p.query(ctx, "postgres", func(ctx context.Context, c *pgx.Conn) error { return c.Ping(ctx) })
}

// describe reads the server's version and the settings the table's header
// names.
func (p *pgServer) describe(ctx context.Context) error {
	names := []string{"fsync", "synchronous_commit", "full_page_writes", "wal_sync_method", "wal_level", "shared_buffers", "checkpoint_timeout", "max_wal_size"}
	return p.query(ctx, "postgres", func(ctx context.Context, c *pgx.Conn) error {
		if err := c.QueryRow(ctx, "SHOW server_version").Scan(&p.version); err != nil {
			return err
		}
		var parts []string
		for _, n := range names {
			var v string
			if err := c.QueryRow(ctx, "SHOW "+n).Scan(&v); err != nil {
				return err
			}
			parts = append(parts, n+" = "+v)
		}
		p.settings = strings.Join(parts, ", ")
		return nil
	})
}

// createDB makes a fresh database for one row.
func (p *pgServer) createDB(ctx context.Context, name string) error {
	return p.query(ctx, "postgres", func(ctx context.Context, c *pgx.Conn) error {
		_, err := c.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize())
		return err
	})
}

// procs lists the server's processes: the postmaster and its children.
// Each child calls setsid() as it starts (InitPostmasterChild), so they
// are not in the postmaster's session; all are its children.
func (p *pgServer) procs() []procstat.Proc {
	pm := p.proc.pid()
	var out []procstat.Proc
	for _, q := range procstat.All() {
		if q.PID == pm || q.PPID == pm {
			out = append(out, q)
		}
	}
	return out
}

// cpu is the server's CPU so far: its processes' utime+stime, and the
// postmaster's cutime+cstime, which holds the time of the children it has
// reaped (backends that ended).
func (p *pgServer) cpu() time.Duration {
	var d time.Duration
	for _, q := range p.procs() {
		d += q.CPU
	}
	return d
}

// stop stops the server: a fast shutdown (SIGINT to the postmaster: what
// is in progress is rolled back), SIGKILL to its group after 20 s.
func (p *pgServer) stop() {
	if p.proc.exited() {
		_ = p.proc.out.Close()
		return
	}
	_ = syscall.Kill(p.proc.pid(), syscall.SIGINT)
	select {
	case <-p.proc.done:
	case <-time.After(20 * time.Second):
		progress("postgres did not stop in 20 s after SIGINT; killing it")
	}
	stopProc(p.proc, 0)
}

// pgCounters are the server's cumulative counters that one row reads
// before and after.
type pgCounters struct {
	lsn                                     uint64 // pg_current_wal_lsn()
	commits, rollbacks                      int64  // pg_stat_database of the row's database
	walRecords, walFPI, walSyncs, walWrites int64  // pg_stat_wal
}

// walPosition reads pg_current_wal_lsn().
func (p *pgServer) walPosition(ctx context.Context) (uint64, error) {
	var lsn uint64
	err := p.query(ctx, "postgres", func(ctx context.Context, c *pgx.Conn) error {
		var s string
		if err := c.QueryRow(ctx, "SELECT pg_current_wal_lsn()::text").Scan(&s); err != nil {
			return err
		}
		var err error
		lsn, err = parseLSN(s)
		return err
	})
	return lsn, err
}

// stats reads the transaction counts of database db and the WAL
// statistics. The cumulative statistics reach these views when a backend
// ends a transaction (at most once a second) or exits: read them after
// Caddy's connections have closed.
func (p *pgServer) stats(ctx context.Context, db string) (pgCounters, error) {
	var s pgCounters
	err := p.query(ctx, "postgres", func(ctx context.Context, c *pgx.Conn) error {
		if err := c.QueryRow(ctx, "SELECT xact_commit, xact_rollback FROM pg_stat_database WHERE datname = $1", db).Scan(&s.commits, &s.rollbacks); err != nil {
			return fmt.Errorf("pg_stat_database: %w", err)
		}
		if err := c.QueryRow(ctx, "SELECT wal_records, wal_fpi, wal_write, wal_sync FROM pg_stat_wal").Scan(&s.walRecords, &s.walFPI, &s.walWrites, &s.walSyncs); err != nil {
			return fmt.Errorf("pg_stat_wal: %w", err)
		}
		return nil
	})
	return s, err
}

// backends counts the server's connections to database db.
func (p *pgServer) backends(ctx context.Context, db string) (int, error) {
	var n int
	err := p.query(ctx, "postgres", func(ctx context.Context, c *pgx.Conn) error {
		return c.QueryRow(ctx, "SELECT count(*) FROM pg_stat_activity WHERE datname = $1", db).Scan(&n)
	})
	return n, err
}

// waitNoBackends waits until no connection to db is left (Caddy stopped:
// its backends exit, and write their statistics as they do), for at most
// limit.
func (p *pgServer) waitNoBackends(ctx context.Context, db string, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		n, err := p.backends(ctx, db)
		if err == nil && n == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			if err == nil {
				err = fmt.Errorf("postgres: %d connections to %s still open %v after Caddy stopped", n, db, limit)
			}
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// parseLSN reads a WAL position written as two hexadecimal halves, X/Y.
func parseLSN(s string) (uint64, error) {
	hi, lo, ok := strings.Cut(s, "/")
	if !ok {
		return 0, fmt.Errorf("WAL position %q: not X/Y", s)
	}
	h, err1 := strconv.ParseUint(hi, 16, 32)
	l, err2 := strconv.ParseUint(lo, 16, 32)
	if err := errors.Join(err1, err2); err != nil {
		return 0, fmt.Errorf("WAL position %q: %w", s, err)
	}
	return h<<32 | l, nil
}

// pgRows measures the app with the PostgreSQL store: one instance, then
// two sharing one database (each its own fresh database).
func (b *bench) pgRows() ([]appRow, error) {
	d, err := b.peerDir("postgres")
	if err != nil {
		return nil, err
	}
	progress("postgres: initdb and start in %s", d)
	pg, err := startPG(b.ctx, d)
	if err != nil {
		return nil, err
	}
	stopped := false
	stop := func() {
		if !stopped {
			stopped = true
			pg.stop()
		}
	}
	b.cl.add(stop)
	defer stop()
	b.pgServer = pg
	progress("postgres %s on 127.0.0.1:%d: %s", pg.version, pg.port, pg.settings)
	if b.pgRelay {
		if pg.relay, err = startPGRelay(hostPort(pg.port)); err != nil {
			return nil, err
		}
		closed := false
		closeRelay := func() {
			if !closed {
				closed = true
				pg.relay.close()
			}
		}
		b.cl.add(closeRelay)
		defer closeRelay()
		progress("postgres: Caddy connects through a counting relay on 127.0.0.1:%d (-pg-relay)", pg.relay.port())
	}
	var rows []appRow
	for _, r := range []struct {
		name, short, dir, db string
		instances            int
	}{
		{"this app, PostgreSQL store, one instance", "PostgreSQL ×1", "caddy-pg1", "queue1", 1},
		{"this app, PostgreSQL store, two instances (one database; N/2 and C/2 to each)", "PostgreSQL ×2", "caddy-pg2", "queue2", 2},
	} {
		if err := pg.createDB(b.ctx, r.db); err != nil {
			return nil, err
		}
		res, err := b.appRun(appSpec{dir: r.dir, instances: r.instances, pg: pg, db: r.db, profile: "e2e-" + strings.TrimPrefix(r.dir, "caddy-") + "-cpu.pprof"})
		if err != nil {
			return nil, err
		}
		rows = append(rows, appRow{name: r.name, short: r.short, e2eResult: res})
	}
	return rows, nil
}

// printDB prints what the database cost per message in the PostgreSQL
// rows.
func (b *bench) printDB(rows []appRow) {
	fmt.Println()
	fmt.Println("| PostgreSQL per message | server CPU µs | round trips | bytes to it | bytes from it | segments from it | WAL bytes | WAL fsyncs | commits | rollbacks | Caddy's connections |")
	fmt.Println("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
	for _, r := range rows {
		if r.db == nil {
			continue
		}
		n := float64(r.delivered)
		d := r.db
		fmt.Printf("| %s | %.0f | %.2f | %.0f | %.0f | %.2f | %.0f | %.3f | %.2f | %.3f | %d |\n",
			r.short, perMsg(d.cpu, r.delivered), float64(d.wire.segsSent)/n, float64(d.wire.bytesSent)/n,
			float64(d.wire.bytesReceived)/n, float64(d.wire.segsReceived)/n, float64(d.walBytes)/n,
			float64(d.counters.walSyncs)/n, float64(d.counters.commits)/n, float64(d.counters.rollbacks)/n, d.conns)
	}
	fmt.Println()
	fmt.Println("Server CPU: utime+stime of the postmaster and every child of it (backends, WAL writer, checkpointer, background writer, autovacuum), and of the children it reaped (the postmaster's cutime+cstime), from smtp-source's start until the queue is empty.")
	fmt.Println("Round trips, bytes and segments: the kernel's counters of each of Caddy's TCP connections to the server (tcp_info through sock_diag, as `ss -ti` reads them: tcpi_data_segs_out, tcpi_bytes_sent, tcpi_bytes_received, tcpi_data_segs_in), from Caddy's side, over the same window; payload bytes, without TCP/IP headers.")
	fmt.Println("A round trip is a data segment Caddy sent: pgx writes each request (a query, or a batch or pipeline of them) with one write and waits for its answer, and on loopback one write is one segment; segments from the server include LISTEN/NOTIFY wake-ups, which answer nothing.")
	fmt.Println("WAL bytes: the difference of pg_current_wal_lsn() over the window. WAL fsyncs (pg_stat_wal.wal_sync), commits and rollbacks (pg_stat_database of the row's database): read once Caddy has stopped and its backends have written their statistics.")
	if b.pgRelay {
		fmt.Println()
		fmt.Println("Through the counting relay (-pg-relay: every row above with PostgreSQL was measured through it, so its rates are lower), per message:")
		fmt.Println()
		fmt.Println("| PostgreSQL per message | requests (Caddy's bursts) | the server's bursts | bytes to it | bytes from it | the kernel's round trips (segments Caddy sent) | connections through the relay |")
		fmt.Println("|---|--:|--:|--:|--:|--:|--:|")
		for _, r := range rows {
			if r.db == nil {
				continue
			}
			n := float64(r.delivered)
			c := r.db.relay
			fmt.Printf("| %s | %.2f | %.2f | %.0f | %.0f | %.2f | %d |\n", r.short, float64(c.clientBursts)/n, float64(c.serverBursts)/n,
				float64(c.toServer)/n, float64(c.fromServer)/n, float64(r.db.wire.segsSent)/n, c.connections)
		}
	}
	for _, r := range rows {
		if r.db != nil && r.db.closed > 0 {
			fmt.Printf("WARNING: %s: %d of Caddy's connections to PostgreSQL closed during the measurement; what they carried is not counted.\n", r.short, r.db.closed)
		}
	}
}
