// Package postfixconf holds the master.cf of a private Postfix instance: the
// internal services every instance needs, non-chrooted so that it runs from
// any directory. The test harness (a receiving Postfix) and the benchmark
// command (a relaying Postfix) both start such instances, each adding its
// own listeners.
package postfixconf

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
