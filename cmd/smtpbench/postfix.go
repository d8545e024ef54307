package main

import (
	"context"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/seed7b014b84/caddy-smtp/internal/postfixconf"
)

// relay is a private Postfix instance that relays everything it receives
// to a sink: relayhost = [127.0.0.1]:SINKPORT.
type relay struct {
	dir, conf, spool string
	inject           string // the smtpd listener smtp-source fills the queue through
	version          string
	proc             *proc
}

// startRelay starts the instance in dir. With hold, deliveries are
// deferred (defer_transports = smtp) so that its queue can be filled first
// (the transport mode); without, it relays what it receives at once (the
// end-to-end mode).
//
// It is run as internal/peertest runs its Postfix (see StartPostfix's
// comment for each reason): queue directories made here, "master -d" in
// the foreground in its own session, chroot off, logs through postlogd to
// a file, configuration files backdated (Postfix waits until main.cf is
// about two seconds old), no DNS.
//
// Settings that matter for the comparison:
//   - in_flow_delay = 0: smtpd does not slow the filling down.
//   - smtp_destination_concurrency_limit = conns and
//     initial_destination_concurrency = conns: Postfix uses as many
//     connections to the sink as the app, from the start (Postfix would
//     otherwise start at 5 and grow).
//   - qmgr_message_active_limit at least n: the whole queue can be active;
//     default_process_limit above conns, for smtpd and smtp processes.
//   - Connection caching is Postfix's default (on demand, when a
//     destination has a backlog, which it has).
func startRelay(ctx context.Context, dir string, sinkPort, conns, n int, hold bool) (*relay, error) {
	postconf, err := lookPath("postconf")
	if err != nil {
		return nil, err
	}
	injectPort, err := freePort()
	if err != nil {
		return nil, err
	}
	r := &relay{dir: dir, conf: filepath.Join(dir, "conf"), spool: filepath.Join(dir, "spool"),
		inject: net.JoinHostPort("127.0.0.1", strconv.Itoa(injectPort))}
	for _, d := range []string{r.conf, r.spool, filepath.Join(dir, "log")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
	}
	if err := mkdirOwned(filepath.Join(dir, "data"), "postfix"); err != nil {
		return nil, err
	}
	mainCF := []string{
		"compatibility_level = 3.6",
		"queue_directory = " + r.spool,
		"data_directory = " + filepath.Join(dir, "data"),
		"maillog_file = " + filepath.Join(dir, "log", "maillog"),
		"maillog_file_prefixes = " + dir,
		"inet_interfaces = loopback-only",
		"inet_protocols = ipv4",
		"myhostname = postfix.bench.example.org",
		"mydomain = bench.example.org",
		"myorigin = $myhostname",
		"mydestination =",
		"mynetworks = 127.0.0.0/8",
		"alias_maps =",
		"alias_database =",
		"local_recipient_maps =",
		"local_transport = discard:",
		fmt.Sprintf("relayhost = [127.0.0.1]:%d", sinkPort),
		"smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination",
		"smtpd_tls_security_level = none",
		"smtp_tls_security_level = none",
		"in_flow_delay = 0",
		"biff = no",
		"smtpd_peername_lookup = no",
		"smtp_dns_support_level = disabled",
		fmt.Sprintf("smtp_destination_concurrency_limit = %d", conns),
		fmt.Sprintf("initial_destination_concurrency = %d", conns),
		fmt.Sprintf("default_process_limit = %d", max(100, 2*conns+20)),
		fmt.Sprintf("qmgr_message_active_limit = %d", max(n, 20000)),
		fmt.Sprintf("qmgr_message_recipient_limit = %d", max(n, 20000)),
	}
	if hold {
		mainCF = append(mainCF, "defer_transports = smtp")
	}
	if err := os.WriteFile(filepath.Join(r.conf, "main.cf"), []byte(strings.Join(mainCF, "\n")+"\n"), 0o644); err != nil {
		return nil, err
	}
	masterCF := postfixconf.Master(r.inject + " inet n - n - - smtpd")
	if err := os.WriteFile(filepath.Join(r.conf, "master.cf"), []byte(masterCF), 0o644); err != nil {
		return nil, err
	}
	if err := backdate(r.conf); err != nil {
		return nil, err
	}
	out, _, err := runCmd(ctx, 10*time.Second, postconf, "-c", r.conf, "-h", "daemon_directory", "mail_version")
	if err != nil {
		return nil, err
	}
	lines := strings.Fields(string(out))
	if len(lines) != 2 {
		return nil, fmt.Errorf("postconf: unexpected output %q", out)
	}
	daemonDir := lines[0]
	r.version = lines[1]
	if err := postfixconf.MakeQueueDirs(r.spool); err != nil {
		return nil, err
	}
	r.proc, err = startProc("postfix master", filepath.Join(dir, "log", "master.out"),
		[]string{"MAIL_CONFIG=" + r.conf}, filepath.Join(daemonDir, "master"), "-c", r.conf, "-d")
	if err != nil {
		return nil, err
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := greets(ctx, r.inject)
		if err == nil {
			return r, nil
		}
		if r.proc.exited() || time.Now().After(deadline) || ctx.Err() != nil {
			log, _ := os.ReadFile(filepath.Join(dir, "log", "maillog"))
			_ = r.proc.stop(0)
			return nil, fmt.Errorf("postfix %s not ready: %v\n%s", r.inject, err, tail(log, 3000))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}

// queueCount counts the queue files under the named queue directories.
func (r *relay) queueCount(queues ...string) int {
	n := 0
	for _, q := range queues {
		_ = filepath.WalkDir(filepath.Join(r.spool, q), func(_ string, d fs.DirEntry, err error) error {
			if err == nil && d.Type().IsRegular() {
				n++
			}
			return nil
		})
	}
	return n
}

// waitQueue polls the queue until done says so; it gives up when the
// counts stop changing for idle, or when ctx ends.
func (r *relay) waitQueue(ctx context.Context, idle time.Duration, done func(incoming, active, deferred int) bool) error {
	last, lastChange := "", time.Now()
	for {
		in, act, def := r.queueCount("incoming", "maildrop"), r.queueCount("active"), r.queueCount("deferred")
		if done(in, act, def) {
			return nil
		}
		state := fmt.Sprintf("incoming %d, active %d, deferred %d", in, act, def)
		if state != last {
			last, lastChange = state, time.Now()
		} else if time.Since(lastChange) > idle {
			return fmt.Errorf("postfix queue stuck at %s for %v", state, idle)
		}
		if r.proc.exited() {
			return fmt.Errorf("postfix master exited: %v", r.proc.waitErr)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// qmgr returns the pid of the running queue manager, or 0.
func (r *relay) qmgr() int {
	for _, p := range sessionProcs(r.proc.pid()) {
		if p.Comm == "qmgr" && !p.Zombie() {
			return p.PID
		}
	}
	return 0
}

// waitQmgr waits until a queue manager other than old runs (and old does
// not): after a reload, master stops the old one and starts a new one.
func (r *relay) waitQmgr(ctx context.Context, old int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		if q := r.qmgr(); q != 0 && q != old {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("postfix: no new qmgr %v after the reload", timeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// backdate sets the modification time of every file in dir one minute
// back: Postfix programs re-read main.cf every 300 ms until it is about two
// seconds old, a guard against half-written files.
func backdate(dir string) error {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	old := time.Now().Add(-time.Minute)
	for _, e := range ents {
		if err := os.Chtimes(filepath.Join(dir, e.Name()), old, old); err != nil {
			return err
		}
	}
	return nil
}

func lookupIDs(name string) (uid, gid int, err error) {
	u, err := user.Lookup(name)
	if err != nil {
		return 0, 0, err
	}
	uid, _ = strconv.Atoi(u.Uid)
	gid, _ = strconv.Atoi(u.Gid)
	return uid, gid, nil
}

func mkdirOwned(dir, owner string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	uid, gid, err := lookupIDs(owner)
	if err != nil {
		return err
	}
	return os.Chown(dir, uid, gid)
}
