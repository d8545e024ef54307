package peertest

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/seed7b014b84/caddy-smtp/internal/procstat"
)

// pgBin is where Debian puts PostgreSQL's programs (not on PATH).
const pgBin = "/usr/lib/postgresql/15/bin"

// PostgresOptions set up a private PostgreSQL cluster.
type PostgresOptions struct {
	// Fsync keeps PostgreSQL's fsync on (for measurements); tests of
	// logic turn it off to run faster. Default: off.
	Fsync bool
	// Settings are more "name=value" server settings.
	Settings []string
}

// Postgres is a private PostgreSQL cluster on a loopback port, with a
// superuser "caddy" trusted without a password.
type Postgres struct {
	// Port is the port on 127.0.0.1.
	Port int
	// URL is the connection URL of the database "postgres".
	URL  string
	dir  string
	opts PostgresOptions
	proc *proc
	t    testing.TB
}

// StartPostgres makes a cluster (initdb) in a folder of its own and starts
// it; it is stopped when the test ends. As root, PostgreSQL runs as the
// postgres user (runuser), which owns the folder.
func StartPostgres(t testing.TB, o PostgresOptions) *Postgres {
	t.Helper()
	Need(t, filepath.Join(pgBin, "postgres"), filepath.Join(pgBin, "initdb"), "runuser")
	dir := instanceDir(t, "pg")
	mkdirs(t, "postgres", filepath.Join(dir, "data"), filepath.Join(dir, "run"))
	p := &Postgres{Port: FreePort(t), dir: dir, opts: o, t: t}
	p.URL = fmt.Sprintf("postgres://caddy@127.0.0.1:%d/postgres?sslmode=disable", p.Port)
	cmd := exec.Command("runuser", "-u", "postgres", "--", filepath.Join(pgBin, "initdb"),
		"-D", filepath.Join(dir, "data"), "-A", "trust", "-U", "caddy", "--no-sync", "-E", "UTF8", "--locale=C")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("peertest: initdb: %v\n%s", err, out)
	}
	p.Start()
	return p
}

// Start starts the server (again, after Stop) and waits until it answers.
func (p *Postgres) Start() {
	t := p.t
	t.Helper()
	args := []string{"-u", "postgres", "--", filepath.Join(pgBin, "postgres"),
		"-D", filepath.Join(p.dir, "data"), "-k", filepath.Join(p.dir, "run"), "-h", "127.0.0.1", "-p", strconv.Itoa(p.Port),
		"-c", "max_connections=200", "-c", "shared_buffers=64MB", "-c", "listen_addresses=127.0.0.1"}
	if !p.opts.Fsync {
		args = append(args, "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off")
	}
	for _, s := range p.opts.Settings {
		args = append(args, "-c", s)
	}
	p.proc = startProc(t, fmt.Sprintf("postgres 127.0.0.1:%d", p.Port), filepath.Join(p.dir, "postgres.log"), 5*time.Second, nil, nil,
		append([]string{"runuser"}, args...)...)
	p.proc.waitReady(t, func(ctx context.Context) error {
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp", fmt.Sprintf("127.0.0.1:%d", p.Port))
		if err != nil {
			return err
		}
		_ = c.Close()
		out, err := exec.CommandContext(ctx, filepath.Join(pgBin, "pg_isready"), "-h", "127.0.0.1", "-p", strconv.Itoa(p.Port)).CombinedOutput()
		if err != nil {
			return fmt.Errorf("pg_isready: %v: %s", err, out)
		}
		return nil
	})
}

// Stop stops the server: at once, as a crash would (immediate), or after
// rolling back what is in progress (fast).
func (p *Postgres) Stop(immediate bool) {
	sig := syscall.SIGINT // fast shutdown
	if immediate {
		sig = syscall.SIGQUIT
	}
	// runuser passes SIGTERM on, but neither SIGINT nor SIGQUIT: the
	// postmaster itself is signalled (postmaster.pid's first line).
	if pid := p.postmasterPID(); pid > 0 {
		_ = syscall.Kill(pid, sig)
	} else {
		_ = p.proc.cmd.Process.Signal(sig)
	}
	select {
	case <-p.proc.done:
	case <-time.After(20 * time.Second):
		_ = procstat.StopGroup(p.proc.cmd.Process.Pid, p.proc.done, time.Second)
	}
}

// postmasterPID is the running postmaster's process ID, from its
// postmaster.pid file (0 when there is none).
func (p *Postgres) postmasterPID() int {
	b, err := os.ReadFile(filepath.Join(p.dir, "data", "postmaster.pid"))
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	pid, err := strconv.Atoi(strings.TrimSpace(line))
	if err != nil {
		return 0
	}
	return pid
}

// Log returns the server's log.
func (p *Postgres) Log() string { return readFile(filepath.Join(p.dir, "postgres.log")) }

// CreateDatabase makes a new database and returns its URL.
func (p *Postgres) CreateDatabase(t testing.TB, name string) string {
	t.Helper()
	cmd := exec.Command(filepath.Join(pgBin, "createdb"), "-h", "127.0.0.1", "-p", strconv.Itoa(p.Port), "-U", "caddy", name)
	cmd.Env = append(os.Environ(), "PGCONNECT_TIMEOUT=10")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("peertest: createdb %s: %v\n%s", name, err, out)
	}
	return fmt.Sprintf("postgres://caddy@127.0.0.1:%d/%s?sslmode=disable", p.Port, name)
}
