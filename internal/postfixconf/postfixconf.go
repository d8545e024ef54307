// Package postfixconf holds what a private Postfix instance needs besides
// main.cf: its master.cf (the internal services, non-chrooted so that it
// runs from any directory) and its queue directory tree. The test harness (a receiving Postfix) and the benchmark
// command (a relaying Postfix) both start such instances, each adding its
// own listeners.
package postfixconf

import (
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
)

// Header is master.cf's column header.
const Header = "# service type  private unpriv  chroot  wakeup  maxproc command\n"

// Services are Postfix's internal services, as Debian's master.cf has them
// but with chroot off, plus postlogd for maillog_file.
const Services = `pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
`

// Master returns a whole master.cf: the header, the given listener lines
// (such as "127.0.0.1:2525 inet n - n - - smtpd"), then Services.
func Master(listeners ...string) string {
	s := Header
	for _, l := range listeners {
		s += l + "\n"
	}
	return s + Services
}

// MakeQueueDirs makes a private instance's queue directory tree under
// spool, with the owners and modes of Debian's postfix-files ($mail_owner
// postfix, $setgid_group postdrop), as "postfix check" would (in about
// 2 s, where this takes none).
func MakeQueueDirs(spool string) error {
	pf, err := user.Lookup("postfix")
	if err != nil {
		return fmt.Errorf("user postfix: %w", err)
	}
	uid, _ := strconv.Atoi(pf.Uid)
	g, err := user.LookupGroup("postdrop")
	if err != nil {
		return fmt.Errorf("group postdrop: %w", err)
	}
	postdrop, _ := strconv.Atoi(g.Gid)
	dirs := []struct {
		name     string
		uid, gid int
		mode     os.FileMode
	}{
		{"active", uid, 0, 0o700}, {"bounce", uid, 0, 0o700}, {"corrupt", uid, 0, 0o700},
		{"defer", uid, 0, 0o700}, {"deferred", uid, 0, 0o700}, {"flush", uid, 0, 0o700},
		{"hold", uid, 0, 0o700}, {"incoming", uid, 0, 0o700}, {"private", uid, 0, 0o700},
		{"saved", uid, 0, 0o700}, {"trace", uid, 0, 0o700},
		{"maildrop", uid, postdrop, 0o730}, {"public", uid, postdrop, 0o710},
		{"pid", 0, 0, 0o755},
	}
	for _, d := range dirs {
		p := filepath.Join(spool, d.name)
		if err := os.Mkdir(p, d.mode); err != nil {
			return err
		}
		// Mkdir's mode is filtered by the umask: set it exactly.
		if err := os.Chmod(p, d.mode); err != nil {
			return err
		}
		if err := os.Chown(p, d.uid, d.gid); err != nil {
			return err
		}
	}
	return nil
}
