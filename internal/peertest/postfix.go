package peertest

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/seed7b014b84/caddy-smtp/internal/postfixconf"
)

// PostfixOptions configures StartPostfix.
type PostfixOptions struct {
	// CA issues the server certificate; nil makes a new CA.
	CA *CA
	// Addr and Port, if set, are where the plain SMTP listener listens
	// (SMTPAddr), for a Postfix that plays an MX host: port 25 of its own
	// loopback address, such as 127.86.0.10. Default: 127.0.0.1 and a free
	// port. The implicit-TLS listener is on the same address.
	Addr string
	Port int
	// Hostname is myhostname, the name in the greeting and EHLO reply, and
	// is added to the certificate's names. Default "mx.example.test".
	Hostname string
	// Domains are the domains this MX accepts mail for; mail to any other
	// domain is refused at RCPT with 554 5.7.1 (Relay access denied), also
	// from loopback clients. Default {"example.test"}.
	Domains []string
	// NoTLS turns STARTTLS off on the plain listener (SMTPAddr). The
	// implicit-TLS listener (SMTPSAddr) keeps TLS.
	NoTLS bool
	// Mailbox stores delivered mail in a maildir (read with Messages)
	// instead of discarding it.
	Mailbox bool
	// MessageSizeLimit is message_size_limit in bytes; 0 keeps Postfix's
	// default (10240000).
	MessageSizeLimit int
	// Users, when it holds at least one entry, turns SMTP AUTH on: both
	// listeners offer AUTH PLAIN LOGIN and accept exactly these users
	// (user name -> password, compared as given: case matters), checked by
	// a private Dovecot auth service started with the instance. A client
	// that has authenticated may then relay: mail to domains not in
	// Domains is accepted and, like all mail here, never leaves the
	// machine (discarded, or stored in the maildir with Mailbox). Loopback
	// clients get no relay right without AUTH (554 5.7.1). Names and
	// passwords must not hold ':', white space or control characters.
	// Nil or empty: no AUTH, as before.
	Users map[string]string
	// AuthOnlyTLS is smtpd_tls_auth_only: AUTH is offered only after
	// STARTTLS on SMTPAddr (and always on SMTPSAddr, which is TLS from the
	// start). With NoTLS it means that SMTPAddr never offers AUTH. Only
	// meaningful with Users.
	AuthOnlyTLS bool
	// Extra are main.cf settings applied last with "postconf -c DIR -e",
	// so they override everything above.
	Extra map[string]string
	// Nameserver, if set, is the IP address of the DNS resolver that the
	// smtp(8) client (services smtp and relay) asks, on port 53, for a
	// Postfix that sends mail by MX (set default_transport = smtp and
	// smtp_dns_support_level with Extra). Postfix has no setting for a
	// resolver's address: libc reads /etc/resolv.conf, which is shared by
	// the whole machine and names nothing useful here. So the smtp and
	// relay services run chrooted in the queue directory (master.cf chroot
	// "y"), whose etc/resolv.conf names only this server, with "options
	// trust-ad" so that glibc passes on the resolver's AD bit, which
	// DNSSEC and DANE need. A resolv.conf line has no port: start the
	// resolver on port 53 of a loopback address of its own
	// (UnboundOptions.Addr and Port). Default: no resolver, no chroot.
	Nameserver string
}

// Postfix is a running private Postfix instance that receives mail.
type Postfix struct {
	// SMTPAddr is the plain SMTP listener (STARTTLS offered unless NoTLS).
	SMTPAddr string
	// SMTPSAddr is the implicit TLS (wrapper mode, "SMTPS") listener.
	SMTPSAddr string
	// Host is the listeners' IP address, 127.0.0.1.
	Host string
	// SMTPPort and SMTPSPort are the listeners' ports.
	SMTPPort, SMTPSPort int
	// Hostname is the instance's myhostname.
	Hostname string
	// CA is the CA that issued Leaf.
	CA *CA
	// Leaf is the server certificate, for "localhost", "127.0.0.1" and
	// Hostname.
	Leaf *Leaf
	// Dir is the instance directory; ConfigDir holds main.cf and master.cf.
	Dir, ConfigDir string
	// MailDir is the maildir that receives mail when Mailbox is set.
	MailDir string
	// SASLSocket is the UNIX socket of the Dovecot auth service that
	// checks AUTH (smtpd_sasl_path), or "" without Users.
	SASLSocket string

	maillog string
	proc    *proc
	sasl    *saslAuth // nil without Users
}

// StartPostfix starts a private Postfix instance: its own configuration,
// queue, data and log directories, its master process in the foreground,
// and two loopback listeners. It waits until both listeners greet. It is
// stopped and its files removed when the test ends.
//
// How it is run, and why:
//   - The queue directories are made in Go with the owners and modes of
//     postfix-files(5) ("postfix check" does it too, but takes 2 s); then
//     "master -c DIR -d" runs in the foreground so the exec.Cmd owns the
//     whole instance (no "postfix start" daemon, no "postfix stop").
//     Being root, no alternate_config_directories entry in the default
//     main.cf is needed (Postfix checks that only for non-root callers),
//     and /etc/postfix/main.cf need not even exist.
//   - Every service has chroot "n": the instance directory is not a chroot
//     jail and need not be one.
//   - Logs go to a file through postlogd (maillog_file and the postlog
//     service); maillog_file_prefixes must allow the instance directory.
//   - smtpd_relay_restrictions must be set, or smtpd dies and master
//     throttles the service for 60 s.
//   - virtual(8) refuses regexp maps with substitutions for
//     virtual_mailbox_maps, so with Mailbox every recipient goes to one
//     maildir (a static map); tell the copies apart by Delivered-To.
//   - Changes to main.cf are only read by new processes: use Extra rather
//     than editing after the start.
//   - Postfix re-reads main.cf every 300 ms until the file is about two
//     seconds old (a guard against half-written files), so the
//     configuration files are backdated before the start; otherwise every
//     start costs two seconds.
//   - master calls setsid() and dies ("unable to set session id") if that
//     fails while it is not already a session leader, which is why every
//     peer is started with Setsid rather than Setpgid.
//   - It is stopped with SIGKILL to its process group at once; on SIGTERM
//     master takes more than a second.
//   - No DNS: smtpd_peername_lookup = no and smtp_dns_support_level =
//     disabled, since /etc/resolv.conf here points at nothing.
//   - With Users, SMTP AUTH is checked by a second private Dovecot that
//     runs only its auth service (protocols = none) on a UNIX socket in
//     the instance directory (smtpd_sasl_type = dovecot; Cyrus SASL would
//     need sasl2-bin, which is not installed, and reads its smtpd.conf
//     from a system-wide directory). It is started before
//     master and stopped after it. Relaying is then allowed to
//     authenticated clients only: never permit_mynetworks, since every
//     test client is on loopback, which is in mynetworks.
//   - Mail for other domains never leaves the machine: default_transport
//     and relay_transport are discard:, or virtual: (the maildir) with
//     Users and Mailbox, so nothing ever asks DNS or connects out.
func StartPostfix(t testing.TB, o PostfixOptions) *Postfix {
	t.Helper()
	Need(t, "postfix", "postconf")
	if o.CA == nil {
		o.CA = NewCA(t, "peertest postfix CA")
	}
	if o.Hostname == "" {
		o.Hostname = "mx.example.test"
	}
	if len(o.Domains) == 0 {
		o.Domains = []string{"example.test"}
	}
	dir := instanceDir(t, "postfix")
	if o.Addr == "" {
		o.Addr = "127.0.0.1"
	}
	if o.Port == 0 {
		o.Port = FreePort(t)
	}
	p := &Postfix{
		Host:      o.Addr,
		SMTPPort:  o.Port,
		SMTPSPort: FreePort(t),
		Hostname:  o.Hostname,
		CA:        o.CA,
		Leaf:      o.CA.Issue(t, "localhost", "127.0.0.1", o.Addr, o.Hostname),
		Dir:       dir,
		ConfigDir: filepath.Join(dir, "conf"),
		MailDir:   filepath.Join(dir, "mail", "Maildir"),
	}
	p.SMTPAddr = net.JoinHostPort(p.Host, strconv.Itoa(p.SMTPPort))
	p.SMTPSAddr = net.JoinHostPort(p.Host, strconv.Itoa(p.SMTPSPort))
	p.maillog = filepath.Join(dir, "log", "maillog")

	mkdirs(t, "", p.ConfigDir, filepath.Join(dir, "spool"), filepath.Join(dir, "log"))
	mkdirs(t, "postfix", filepath.Join(dir, "data"))
	mkdirs(t, "nobody", filepath.Join(dir, "mail"))
	nobodyUID, nobodyGID := lookupUser(t, "nobody")

	tlsLevel := "may"
	if o.NoTLS {
		tlsLevel = "none"
	}
	domains := strings.Join(o.Domains, ", ")
	// Loopback clients are in mynetworks but get no relay right: only our
	// domains are accepted, like a real MX. With Users, an authenticated
	// client may relay; permit_mynetworks must stay out, or every test
	// client (all on loopback) could relay without AUTH.
	relayRestrictions := "reject_unauth_destination"
	// Mail to other domains never leaves the machine: discarded, or, for
	// a relaying client with Mailbox, stored like the rest. virtual(8)
	// with the static map delivers any recipient into the one maildir,
	// whatever its domain.
	otherTransport := "discard:"
	if len(o.Users) > 0 {
		relayRestrictions = "permit_sasl_authenticated, reject_unauth_destination"
		if o.Mailbox {
			otherTransport = "virtual:"
		}
	}
	mainCF := []string{
		"compatibility_level = 3.6",
		"queue_directory = " + filepath.Join(dir, "spool"),
		"data_directory = " + filepath.Join(dir, "data"),
		"maillog_file = " + p.maillog,
		"maillog_file_prefixes = " + dir,
		"inet_interfaces = loopback-only",
		"inet_protocols = all",
		"myhostname = " + o.Hostname,
		"mydomain = " + o.Domains[0],
		"myorigin = $myhostname",
		"mynetworks = 127.0.0.0/8 [::1]/128",
		"alias_maps =",
		"alias_database =",
		"local_recipient_maps =",
		"local_transport = discard:",
		"default_transport = " + otherTransport,
		"relay_transport = " + otherTransport,
		"smtpd_relay_restrictions = " + relayRestrictions,
		"smtpd_tls_chain_files = " + p.Leaf.KeyFile + ", " + p.Leaf.ChainFile,
		"smtpd_tls_security_level = " + tlsLevel,
		"smtpd_tls_received_header = yes",
		"smtputf8_enable = yes",
		"in_flow_delay = 0",
		"biff = no",
		// No lookups of the client's name in DNS: /etc/resolv.conf here
		// points at a resolver that answers nothing, and each lookup would
		// wait for its timeout.
		"smtpd_peername_lookup = no",
		"smtp_dns_support_level = disabled",
		// Postfix refuses to start when a mailbox limit is below
		// message_size_limit: no mailbox limits, whatever that is.
		"virtual_mailbox_limit = 0",
		"mailbox_size_limit = 0",
	}
	if o.Mailbox {
		mainCF = append(mainCF,
			"mydestination =",
			"virtual_mailbox_domains = "+domains,
			"virtual_mailbox_base = "+filepath.Join(dir, "mail"),
			"virtual_mailbox_maps = static:Maildir/",
			fmt.Sprintf("virtual_uid_maps = static:%d", nobodyUID),
			fmt.Sprintf("virtual_gid_maps = static:%d", nobodyGID),
			"virtual_minimum_uid = 1",
		)
	} else {
		mainCF = append(mainCF, "mydestination = "+domains)
	}
	if o.MessageSizeLimit > 0 {
		mainCF = append(mainCF, "message_size_limit = "+strconv.Itoa(o.MessageSizeLimit))
	}
	var sasl *saslAuth
	if len(o.Users) > 0 {
		sasl = startSASLAuth(t, dir, o.Users)
		p.sasl = sasl
		p.SASLSocket = sasl.Socket
		mainCF = append(mainCF, saslMainCF(sasl.Socket, o)...)
	}
	writeFile(t, filepath.Join(p.ConfigDir, "main.cf"), []byte(strings.Join(mainCF, "\n")+"\n"))

	masterCF := postfixconf.Master(
		p.SMTPAddr+" inet n - n - - smtpd",
		p.SMTPSAddr+" inet n - n - - smtpd -o smtpd_tls_wrappermode=yes -o smtpd_tls_security_level=encrypt")
	if o.Nameserver != "" {
		masterCF = chrootSMTPClient(masterCF)
	}
	writeFile(t, filepath.Join(p.ConfigDir, "master.cf"), []byte(masterCF))

	// Postfix programs (master, postconf too) wait, in steps of 300 ms,
	// until main.cf is about two seconds old before they trust it not to
	// be half written: backdate the configuration files after each write,
	// or every start costs two seconds.
	backdate(t, p.ConfigDir)
	postconf := bin(t, "postconf")
	if len(o.Extra) > 0 {
		keys := make([]string, 0, len(o.Extra))
		for k := range o.Extra {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		args := []string{postconf, "-c", p.ConfigDir, "-e"}
		for _, k := range keys {
			args = append(args, k+"="+o.Extra[k])
		}
		run(t, 10*time.Second, nil, args...)
		backdate(t, p.ConfigDir)
	}
	// master is not on PATH: ask Postfix where its daemons are (and do not
	// pick some other program called "master" from PATH).
	daemonDir := strings.TrimSpace(string(run(t, 10*time.Second, nil, postconf, "-c", p.ConfigDir, "-h", "daemon_directory")))
	master := filepath.Join(daemonDir, "master")
	Need(t, master)

	// The queue directories, made here as postfix-files(5) lists them.
	// "postfix check" would do the same, but its post-install script
	// spawns a few hundred processes and takes about 2 s per instance.
	if err := postfixconf.MakeQueueDirs(filepath.Join(dir, "spool")); err != nil {
		t.Fatalf("peertest: postfix queue: %v", err)
	}
	if o.Nameserver != "" {
		// The chrooted smtp(8) finds this file as /etc/resolv.conf.
		etc := filepath.Join(dir, "spool", "etc")
		mkdirs(t, "", etc)
		writeFile(t, filepath.Join(etc, "resolv.conf"),
			[]byte("nameserver "+o.Nameserver+"\noptions trust-ad attempts:1 timeout:2\n"))
	}

	// Stopped with SIGKILL at once: on SIGTERM master signals its group
	// and takes more than a second to exit, and a test's receiver has
	// nothing worth a clean shutdown.
	p.proc = startProc(t, "postfix "+p.SMTPAddr, filepath.Join(dir, "log", "master.out"), 0,
		[]string{p.maillog}, []string{"MAIL_CONFIG=" + p.ConfigDir},
		master, "-c", p.ConfigDir, "-d")
	if sasl != nil {
		// A failed AUTH is explained in the auth service's log: show it
		// with Postfix's in failure messages.
		p.proc.logs = append(p.proc.logs, sasl.Log)
	}

	p.proc.waitReady(t, func(ctx context.Context) error {
		if err := readBanner(ctx, "", p.SMTPAddr); err != nil {
			return fmt.Errorf("%s: %w", p.SMTPAddr, err)
		}
		return p.checkSMTPS(ctx)
	})
	return p
}

// chrootSMTPClient turns chroot on for the smtp and relay services of a
// master.cf: they then run in the queue directory and read its
// etc/resolv.conf.
func chrootSMTPClient(masterCF string) string {
	lines := strings.Split(masterCF, "\n")
	for i, l := range lines {
		f := strings.Fields(l)
		if len(f) >= 8 && (f[0] == "smtp" || f[0] == "relay") && f[1] == "unix" {
			f[4] = "y"
			lines[i] = strings.Join(f, " ")
		}
	}
	return strings.Join(lines, "\n")
}

// backdate sets the modification time of every file in dir one minute back.
func backdate(t testing.TB, dir string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatalf("peertest: %v", err)
	}
	old := time.Now().Add(-time.Minute)
	for _, e := range ents {
		if err := os.Chtimes(filepath.Join(dir, e.Name()), old, old); err != nil {
			t.Fatalf("peertest: %v", err)
		}
	}
}

// checkSMTPS does a verified TLS handshake with the implicit TLS listener
// and reads the greeting.
func (p *Postfix) checkSMTPS(ctx context.Context) error {
	d := tls.Dialer{Config: &tls.Config{RootCAs: p.CA.Pool(), ServerName: "localhost"}}
	c, err := d.DialContext(ctx, "tcp", p.SMTPSAddr)
	if err != nil {
		return fmt.Errorf("%s: %w", p.SMTPSAddr, err)
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
	}
	buf := make([]byte, 512)
	n, err := c.Read(buf)
	if err != nil {
		return fmt.Errorf("%s: %w", p.SMTPSAddr, err)
	}
	if !strings.HasPrefix(string(buf[:n]), "220") {
		return fmt.Errorf("%s: banner %q", p.SMTPSAddr, buf[:n])
	}
	_, _ = c.Write([]byte("QUIT\r\n"))
	return nil
}

// Log returns the instance's maillog.
func (p *Postfix) Log() string { return readFile(p.maillog) }

// Messages returns the messages stored in the maildir so far (only with
// Mailbox), oldest first. Each is the file as virtual(8) wrote it:
// Return-Path, X-Original-To, Delivered-To and Received headers added in
// front of the message as received, with LF line endings. One copy is
// stored per recipient.
func (p *Postfix) Messages(t testing.TB) [][]byte {
	t.Helper()
	msgs, err := readMaildir(p.MailDir)
	if err != nil {
		t.Fatalf("peertest: %v", err)
	}
	return msgs
}

// WaitMessages waits until the maildir holds at least n messages and
// returns them all. Delivery is asynchronous (queue manager, then
// virtual(8)), so a test must wait after the client's final 250. It fails
// the test with the maillog after timeout.
func (p *Postfix) WaitMessages(t testing.TB, n int, timeout time.Duration) [][]byte {
	t.Helper()
	return waitMaildir(t, p.MailDir, n, timeout, p.proc)
}

// readMaildir reads the messages in a maildir's new and cur folders, oldest
// first (by modification time, then name). A missing maildir has none.
func readMaildir(md string) ([][]byte, error) {
	type entry struct {
		path string
		mod  time.Time
	}
	var files []entry
	for _, sub := range []string{"new", "cur"} {
		ents, err := os.ReadDir(filepath.Join(md, sub))
		if os.IsNotExist(err) {
			continue
		}
		if err != nil {
			return nil, err
		}
		for _, e := range ents {
			info, err := e.Info()
			if err != nil || !info.Mode().IsRegular() {
				continue
			}
			files = append(files, entry{filepath.Join(md, sub, e.Name()), info.ModTime()})
		}
	}
	sort.Slice(files, func(i, j int) bool {
		if !files[i].mod.Equal(files[j].mod) {
			return files[i].mod.Before(files[j].mod)
		}
		return files[i].path < files[j].path
	})
	msgs := make([][]byte, 0, len(files))
	for _, f := range files {
		b, err := os.ReadFile(f.path)
		if err != nil {
			return nil, err
		}
		msgs = append(msgs, b)
	}
	return msgs, nil
}

// waitMaildir polls a maildir until it holds at least n messages. Maildir
// delivery writes into tmp and renames into new, so what is in new is whole.
func waitMaildir(t testing.TB, md string, n int, timeout time.Duration, p *proc) [][]byte {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		msgs, err := readMaildir(md)
		if err != nil {
			t.Fatalf("peertest: %v", err)
		}
		if len(msgs) >= n {
			return msgs
		}
		if time.Now().After(deadline) {
			t.Fatalf("peertest: %s: %d of %d messages after %v\n%s", md, len(msgs), n, timeout, p.logText())
		}
		time.Sleep(20 * time.Millisecond)
	}
}
