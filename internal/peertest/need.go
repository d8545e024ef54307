package peertest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

// sbinDirs are searched after PATH: the daemons live in sbin directories
// that a non-login shell or a CI runner may not have on PATH.
var sbinDirs = []string{"/usr/sbin", "/sbin", "/usr/local/sbin"}

// packageOf maps a binary's base name to the Debian package that ships it,
// for the message that tells how to install a missing peer.
var packageOf = map[string]string{
	"smtp-sink":        "postfix",
	"smtp-source":      "postfix",
	"postfix":          "postfix",
	"postconf":         "postfix",
	"postmap":          "postfix",
	"master":           "postfix",
	"swaks":            "swaks libnet-ssleay-perl libio-socket-ssl-perl libio-socket-inet6-perl",
	"dovecot":          "dovecot-core",
	"doveadm":          "dovecot-core",
	"lmtp":             "dovecot-lmtpd",
	"knotd":            "knot",
	"knotc":            "knot",
	"keymgr":           "knot",
	"kdig":             "knot-dnsutils",
	"unbound":          "unbound",
	"ip":               "iproute2",
	"nft":              "nftables",
	"nsd":              "nsd",
	"ldns-signzone":    "ldnsutils",
	"ldns-keygen":      "ldnsutils",
	"ldns-key2ds":      "ldnsutils",
	"nsd-checkconf":    "nsd",
	"openssl":          "openssl",
	"postgres":         "postgresql",
	"initdb":           "postgresql",
	"pg_isready":       "postgresql",
	"runuser":          "util-linux",
	"chromium":         "chromium fonts-dejavu-core",
	"dkimverify":       "python3-dkim",
	"opendkim-testmsg": "opendkim-tools",
}

// Need makes sure every named binary is installed. A name may be a bare
// program name, looked up on PATH and then in the sbin directories, or an
// absolute path. When something is missing, Need skips the test with a
// message that says what to install, except when the environment variable
// CI is "true": then it fails the test, so that CI cannot pass by skipping
// the real peers.
func Need(t testing.TB, binaries ...string) {
	t.Helper()
	var missing []string
	for _, b := range binaries {
		if _, err := lookPath(b); err != nil {
			missing = append(missing, b)
		}
	}
	skip, fatal, msg := decide(os.Getenv("CI"), missing)
	switch {
	case fatal:
		t.Fatal(msg)
	case skip:
		t.Skip(msg)
	}
}

// decide is the pure part of Need: given the value of CI and the missing
// binaries, it tells whether to skip or to fail and with which message.
// It is separate so that the failing path can be tested without failing.
func decide(ci string, missing []string) (skip, fatal bool, msg string) {
	if len(missing) == 0 {
		return false, false, ""
	}
	pkgSet := map[string]bool{}
	for _, m := range missing {
		p, ok := packageOf[filepath.Base(m)]
		if !ok {
			p = filepath.Base(m)
		}
		for _, f := range strings.Fields(p) {
			pkgSet[f] = true
		}
	}
	pkgs := make([]string, 0, len(pkgSet))
	for p := range pkgSet {
		pkgs = append(pkgs, p)
	}
	sort.Strings(pkgs)
	noun := "peer"
	if len(missing) > 1 {
		noun = "peers"
	}
	msg = fmt.Sprintf("%s %s not installed: apt-get install %s",
		noun, strings.Join(missing, ", "), strings.Join(pkgs, " "))
	if ci == "true" {
		return false, true, msg + " (CI=true: a missing peer is a failure, not a skip)"
	}
	return true, false, msg
}

// lookPath finds a binary on PATH, then in the sbin directories. A name
// that contains a slash is taken as a path and only checked for existence.
func lookPath(name string) (string, error) {
	if strings.Contains(name, "/") {
		st, err := os.Stat(name)
		if err != nil {
			return "", err
		}
		if st.IsDir() {
			return "", fmt.Errorf("%s is a directory", name)
		}
		return name, nil
	}
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, d := range sbinDirs {
		p := filepath.Join(d, name)
		if st, err := os.Stat(p); err == nil && !st.IsDir() && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s: not found on PATH nor in %s", name, strings.Join(sbinDirs, ", "))
}

// bin returns the full path of a binary that Need has already checked.
// It fails the test if the binary has disappeared in between.
func bin(t testing.TB, name string) string {
	t.Helper()
	p, err := lookPath(name)
	if err != nil {
		t.Fatalf("peertest: %v", err)
	}
	return p
}
