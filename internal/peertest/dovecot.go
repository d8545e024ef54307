package peertest

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// DovecotOptions configures StartDovecot.
type DovecotOptions struct {
	// CA issues the server certificate; nil makes a new CA.
	CA *CA
	// Users are the only recipients Dovecot accepts ("local@domain");
	// others are refused at RCPT with 550 5.1.1. Default
	// {"alice@example.test", "bob@example.test"}.
	Users []string
	// Hostname is the name in the LMTP greeting and LHLO reply, and is
	// added to the certificate's names. Default "lmtp.example.test".
	Hostname string
	// NoTLS turns STARTTLS off.
	NoTLS bool
	// Extra is raw dovecot.conf text appended to the configuration.
	Extra string
}

// Dovecot is a running Dovecot that speaks LMTP only.
type Dovecot struct {
	// LMTPAddr is the LMTP listener on 127.0.0.1.
	LMTPAddr string
	// LMTPAddr6 is the same listener on [::1], or "" when ::1 cannot be
	// bound on this machine.
	LMTPAddr6 string
	// Port is the listeners' port.
	Port int
	// Hostname is the name Dovecot gives itself.
	Hostname string
	// CA is the CA that issued Leaf.
	CA *CA
	// Leaf is the server certificate, for "localhost", "127.0.0.1", "::1"
	// and Hostname.
	Leaf *Leaf
	// Dir is the instance directory; ConfigFile is its dovecot.conf.
	Dir, ConfigFile string
	// Users are the accepted recipients.
	Users []string

	log  string
	proc *proc
}

// StartDovecot starts Dovecot in the foreground (dovecot -F) with only the
// LMTP protocol, a passwd-file user database listing Users (so unknown
// recipients are refused at RCPT), mail stored as user nobody in
// DIR/mail/DOMAIN/LOCAL/Maildir, and base_dir, state_dir and logs inside
// the instance directory. It waits until the listener greets. It is stopped
// and its files removed when the test ends.
//
// instance_name keeps it apart from a system Dovecot; default_login_user
// and default_internal_user are Debian's dovenull and dovecot, which need
// to traverse base_dir (0755).
func StartDovecot(t testing.TB, o DovecotOptions) *Dovecot {
	t.Helper()
	Need(t, "dovecot", "/usr/lib/dovecot/lmtp")
	if o.CA == nil {
		o.CA = NewCA(t, "peertest dovecot CA")
	}
	if len(o.Users) == 0 {
		o.Users = []string{"alice@example.test", "bob@example.test"}
	}
	if o.Hostname == "" {
		o.Hostname = "lmtp.example.test"
	}
	dir := instanceDir(t, "dovecot")
	d := &Dovecot{
		Port:       FreePort(t),
		Hostname:   o.Hostname,
		CA:         o.CA,
		Leaf:       o.CA.Issue(t, "localhost", "127.0.0.1", "::1", o.Hostname),
		Dir:        dir,
		ConfigFile: filepath.Join(dir, "dovecot.conf"),
		Users:      o.Users,
		log:        filepath.Join(dir, "dovecot.log"),
	}
	d.LMTPAddr = net.JoinHostPort("127.0.0.1", strconv.Itoa(d.Port))
	listen := "127.0.0.1"
	if haveIPv6Loopback() {
		d.LMTPAddr6 = net.JoinHostPort("::1", strconv.Itoa(d.Port))
		listen += ", ::1"
	}
	mkdirs(t, "", filepath.Join(dir, "run"), filepath.Join(dir, "state"))
	mkdirs(t, "nobody", filepath.Join(dir, "mail"))
	uid, gid := lookupUser(t, "nobody")

	var users strings.Builder
	for _, u := range o.Users {
		local, domain, ok := strings.Cut(strings.ToLower(u), "@")
		if !ok || local == "" || domain == "" || strings.ContainsAny(u, ":/\n") {
			t.Fatalf("peertest: bad Dovecot user %q: want local@domain", u)
		}
		// user:password:uid:gid:gecos:home:shell:extra
		fmt.Fprintf(&users, "%s@%s:{PLAIN}peertest:%d:%d::%s::\n", local, domain, uid, gid,
			filepath.Join(dir, "mail", domain, local))
	}
	usersFile := filepath.Join(dir, "users")
	writeFile(t, usersFile, []byte(users.String()))

	ssl := fmt.Sprintf("ssl = yes\nssl_cert = <%s\nssl_key = <%s\n", d.Leaf.ChainFile, d.Leaf.KeyFile)
	if o.NoTLS {
		ssl = "ssl = no\n"
	}
	conf := fmt.Sprintf(`# peertest Dovecot: LMTP only, loopback only.
instance_name = %[1]s
base_dir = %[2]s/run
state_dir = %[2]s/state
protocols = lmtp
listen = %[3]s
hostname = %[4]s
log_path = %[5]s
info_log_path = %[5]s
%[6]s
default_login_user = dovenull
default_internal_user = dovecot
first_valid_uid = 1
first_valid_gid = 1
mail_location = maildir:~/Maildir
passdb {
  driver = passwd-file
  args = %[7]s
}
userdb {
  driver = passwd-file
  args = %[7]s
}
service lmtp {
  inet_listener lmtp {
    address = %[3]s
    port = %[8]d
  }
}
%[9]s
`, filepath.Base(dir), dir, listen, o.Hostname, d.log, ssl, usersFile, d.Port, o.Extra)
	writeFile(t, d.ConfigFile, []byte(conf))

	// Stopped with SIGKILL at once: on SIGTERM the Dovecot master waits
	// about three seconds for its children, and a test's server has
	// nothing worth a clean shutdown (the log process writes as it goes).
	d.proc = startProc(t, "dovecot "+d.LMTPAddr, filepath.Join(dir, "dovecot.out"), 0,
		[]string{d.log}, nil, bin(t, "dovecot"), "-F", "-c", d.ConfigFile)
	d.proc.waitReady(t, func(ctx context.Context) error {
		if err := readBanner(ctx, "", d.LMTPAddr); err != nil {
			return fmt.Errorf("%s: %w", d.LMTPAddr, err)
		}
		if d.LMTPAddr6 != "" {
			if err := readBanner(ctx, "", d.LMTPAddr6); err != nil {
				return fmt.Errorf("%s: %w", d.LMTPAddr6, err)
			}
		}
		return nil
	})
	return d
}

// Log returns Dovecot's log.
func (d *Dovecot) Log() string { return readFile(d.log) }

// maildir is where Dovecot stores a user's mail.
func (d *Dovecot) maildir(user string) string {
	local, domain, _ := strings.Cut(strings.ToLower(user), "@")
	return filepath.Join(d.Dir, "mail", domain, local, "Maildir")
}

// Messages returns the messages in a user's inbox, oldest first, as
// Dovecot stored them: Return-Path, Delivered-To and Received headers in
// front of the message as received, LF line endings.
func (d *Dovecot) Messages(t testing.TB, user string) [][]byte {
	t.Helper()
	msgs, err := readMaildir(d.maildir(user))
	if err != nil {
		t.Fatalf("peertest: %v", err)
	}
	return msgs
}

// WaitMessages waits until a user's inbox holds at least n messages and
// returns them all; it fails the test with Dovecot's log after timeout.
// LMTP stores the message before its reply to the final dot, so after a
// successful LMTP transaction no waiting is needed; this is for
// deliveries made in the background.
func (d *Dovecot) WaitMessages(t testing.TB, user string, n int, timeout time.Duration) [][]byte {
	t.Helper()
	return waitMaildir(t, d.maildir(user), n, timeout, d.proc)
}
