package peertest

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"unicode"
)

// saslAuth is a private Dovecot that runs only its auth service, as the
// SASL backend of a private Postfix instance (smtpd_sasl_type = dovecot).
type saslAuth struct {
	// Socket is the absolute path of the auth service's UNIX socket, for
	// smtpd_sasl_path.
	Socket string
	// Log is Dovecot's log file.
	Log string

	proc *proc
}

// saslMechanisms are the mechanisms the auth service offers, as Dovecot
// names them in auth_mechanisms.
var saslMechanisms = []string{"PLAIN", "LOGIN"}

// startSASLAuth starts Dovecot in the foreground with no protocol at all
// (protocols = none), only its auth service, which listens on the UNIX
// socket DIR/sasl/auth and checks passwords against a passwd-file holding
// users. It waits until the socket answers the auth protocol's handshake
// with PLAIN and LOGIN. It is stopped when the test ends; started before
// Postfix's master, it is stopped after it (Cleanup is LIFO).
//
// Gotchas, all seen with Dovecot 2.3 here:
//   - "listen" cannot be empty even with protocols = none; with no
//     protocol no inet listener exists, so 127.0.0.1 binds nothing.
//   - auth_username_format defaults to %Lu, which lowercases the name
//     before the passwd-file lookup: "Alice" would log in as "alice" and
//     fail. %u keeps the name exactly as the client sent it.
//   - auth_username_chars limits names to letters, digits and ".-_@";
//     empty allows any character, so names are checked here instead.
//   - disable_plaintext_auth (default yes) refuses PLAIN and LOGIN unless
//     Postfix says the session is TLS: whether AUTH needs TLS is Postfix's
//     call (smtpd_tls_auth_only, PostfixOptions.AuthOnlyTLS), so it is off.
//   - The auth penalty (through anvil) delays every attempt that follows a
//     failure from the same IP address, and all of ours come from
//     127.0.0.1: measured here, a failure, then 4.5 s for the next one,
//     then 8 s for a correct password. A mode-0 anvil-auth-penalty
//     listener turns it off (the auth process cannot reach anvil for it).
//   - auth_failure_delay (default 2 s) delays every failed login; 0 turns
//     the delay off, but Dovecot 2.3 still sends failures from a 500 ms
//     timer, so a wrong password gets its 535 about 0.5 s late. The
//     "nodelay" passdb field that would avoid it is dropped on a failed
//     password check, so it does not help. Correct passwords are answered
//     at once.
//   - The auth socket is used by smtpd running as user postfix: mode 0666
//     (the directory is 0755), nothing secret is behind it.
//   - A UNIX socket path is at most 107 bytes: instanceDir keeps it short.
//   - The auth process is started on the first connection; the readiness
//     check makes it, so the first AUTH of a test does not wait for it.
func startSASLAuth(t testing.TB, dir string, users map[string]string) *saslAuth {
	t.Helper()
	Need(t, "dovecot")
	names := make([]string, 0, len(users))
	for u := range users {
		names = append(names, u)
	}
	sort.Strings(names)
	var pw strings.Builder
	for _, u := range names {
		p := users[u]
		if u == "" || !saslSafe(u) || !saslSafe(p) {
			t.Fatalf("peertest: bad SASL user %q or its password: want non-empty names and passwords without ':', spaces or control characters", u)
		}
		// user:password (passwd-file; the other fields are not needed
		// for a password check).
		fmt.Fprintf(&pw, "%s:{PLAIN}%s\n", u, p)
	}
	saslDir := filepath.Join(dir, "sasl")
	mkdirs(t, "", saslDir, filepath.Join(saslDir, "run"), filepath.Join(saslDir, "state"))
	usersFile := filepath.Join(saslDir, "users")
	// The auth process runs as user dovecot (default_internal_user) and
	// reads this file itself: 0644, it holds only test passwords.
	writeFile(t, usersFile, []byte(pw.String()))
	a := &saslAuth{
		Socket: filepath.Join(saslDir, "auth"),
		Log:    filepath.Join(saslDir, "dovecot.log"),
	}
	conf := fmt.Sprintf(`# peertest Dovecot: auth service only, for Postfix SASL.
instance_name = %[1]s
base_dir = %[2]s/run
state_dir = %[2]s/state
protocols = none
listen = 127.0.0.1
log_path = %[3]s
info_log_path = %[3]s
ssl = no
default_login_user = dovenull
default_internal_user = dovecot
auth_mechanisms = %[4]s
auth_username_format = %%u
auth_username_chars =
disable_plaintext_auth = no
auth_failure_delay = 0
passdb {
  driver = passwd-file
  args = %[5]s
}
userdb {
  driver = static
  args = uid=nobody gid=nogroup home=/nonexistent
}
service auth {
  unix_listener %[6]s {
    mode = 0666
  }
}
service anvil {
  unix_listener anvil-auth-penalty {
    mode = 0
  }
}
`, "sasl-"+filepath.Base(dir), saslDir, a.Log, strings.ToLower(strings.Join(saslMechanisms, " ")), usersFile, a.Socket)
	confFile := filepath.Join(saslDir, "dovecot.conf")
	writeFile(t, confFile, []byte(conf))

	// Stopped with SIGKILL at once, like StartDovecot's.
	a.proc = startProc(t, "dovecot auth "+a.Socket, filepath.Join(saslDir, "dovecot.out"), 0,
		[]string{a.Log}, nil, bin(t, "dovecot"), "-F", "-c", confFile)
	a.proc.waitReady(t, func(ctx context.Context) error { return dovecotAuthHandshake(ctx, a.Socket) })
	return a
}

// saslSafe tells whether s can stand in a passwd-file field and in an AUTH
// exchange unquoted: no ':', no white space, no control characters.
func saslSafe(s string) bool {
	if s == "" {
		return false
	}
	for _, r := range s {
		if r == ':' || unicode.IsSpace(r) || unicode.IsControl(r) {
			return false
		}
	}
	return true
}

// dovecotAuthHandshake connects to a Dovecot auth client socket, speaks the
// start of the auth protocol (VERSION and CPID) and reads the server's
// handshake up to DONE. It fails unless every mechanism in saslMechanisms
// is offered.
func dovecotAuthHandshake(ctx context.Context, socket string) error {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", socket)
	if err != nil {
		return err
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
	}
	if _, err := fmt.Fprintf(c, "VERSION\t1\t2\nCPID\t%d\n", os.Getpid()); err != nil {
		return err
	}
	mechs := map[string]bool{}
	r := bufio.NewReader(c)
	for range 100 {
		line, err := r.ReadString('\n')
		if err != nil {
			return fmt.Errorf("auth handshake: %w", err)
		}
		f := strings.Split(strings.TrimRight(line, "\n"), "\t")
		switch f[0] {
		case "MECH":
			if len(f) > 1 {
				mechs[f[1]] = true
			}
		case "DONE":
			for _, m := range saslMechanisms {
				if !mechs[m] {
					return fmt.Errorf("auth handshake: mechanism %s not offered", m)
				}
			}
			return nil
		}
	}
	return fmt.Errorf("auth handshake: no DONE after 100 lines")
}

// saslMainCF returns the main.cf lines that make smtpd offer AUTH through
// the Dovecot auth service at socket. smtpd_relay_restrictions and the
// transports for relayed mail are set by StartPostfix.
//
// smtpd_sasl_path is taken relative to queue_directory unless it is
// absolute; ours is absolute. smtpd_sasl_authenticated_header puts the
// user name in the Received header of stored mail, so a test can see that
// a message came in authenticated.
func saslMainCF(socket string, o PostfixOptions) []string {
	authOnly := "no"
	if o.AuthOnlyTLS {
		authOnly = "yes"
	}
	return []string{
		"smtpd_sasl_auth_enable = yes",
		"smtpd_sasl_type = dovecot",
		"smtpd_sasl_path = " + socket,
		"smtpd_sasl_security_options = noanonymous",
		"smtpd_sasl_tls_security_options = noanonymous",
		"smtpd_sasl_authenticated_header = yes",
		"smtpd_tls_auth_only = " + authOnly,
		"broken_sasl_auth_clients = no",
	}
}
