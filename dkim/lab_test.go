package dkim

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	msgdkim "github.com/emersion/go-msgauth/dkim"
	"github.com/miekg/dns"
	"github.com/stretchr/testify/require"

	"github.com/seed7b014b84/caddy-smtp/internal/peertest"
	"github.com/seed7b014b84/caddy-smtp/resolver"
)

// lab is the DNS of the tests with real verifiers: Knot serving the zone
// example.test, unbound resolving it on port 53 of an address of its own
// (OpenDKIM asks the C library's resolver, whose resolv.conf has no port),
// and the app's resolver package asking unbound.
type lab struct {
	knot     *peertest.Knot
	unbound  *peertest.Unbound
	resolver TXTResolver
	// resolvConf names only unbound, for OpenDKIM (bind-mounted over
	// /etc/resolv.conf in a mount namespace of its own).
	resolvConf string
}

const labZone = "example.test"

// startLab starts Knot with records in example.test, and unbound. With
// update, Knot accepts RFC 2136 updates from loopback; answers are then
// kept at most a second (TTL and negative TTL), so that a record set by a
// test is seen at once.
func startLab(t *testing.T, records string, update bool) *lab {
	t.Helper()
	peertest.Need(t, "dkimverify", "opendkim-testmsg", "unshare", "/usr/bin/python3")
	zone := peertest.Zone{Name: labZone, Records: records}
	var extra []string
	if update {
		zone.TTL = 1
		extra = []string{"cache-max-negative-ttl: 1", "cache-max-ttl: 1"}
	}
	k := peertest.StartKnot(t, peertest.KnotOptions{Zones: []peertest.Zone{zone}, AllowUpdate: update})
	u := peertest.StartUnbound(t, peertest.UnboundOptions{Knot: k, Addr: peertest.Port53Address(t, "127.88.15"), Port: 53, Extra: extra})
	r, err := resolver.New(resolver.Config{Servers: []string{"udp://" + u.Addr}, Cache: &resolver.CacheConfig{Size: -1}}, "resolver")
	require.NoError(t, err)
	rc := filepath.Join(t.TempDir(), "resolv.conf")
	require.NoError(t, os.WriteFile(rc, []byte("nameserver "+u.Host+"\noptions attempts:2 timeout:2\n"), 0o644))
	return &lab{
		knot:    k,
		unbound: u,
		// What the app does with its resolver.
		resolver: TXTResolverFunc(func(ctx context.Context, name string) ([]string, error) {
			res, err := r.LookupTXT(ctx, name)
			if err != nil {
				return nil, err
			}
			return res.Records, nil
		}),
		resolvConf: rc,
	}
}

// pyResult is one signature's verdict from python3-dkim.
type pyResult struct {
	D, S, A, H string
	OK         bool
	Error      string
	// Key is the key record python3-dkim was given ("(NXDOMAIN)" or
	// "(NoAnswer)" when none).
	Key string
}

// pythonVerify verifies every signature of the message in file with
// python3-dkim (testdata/verify.py), keys looked up at unbound.
func (l *lab) pythonVerify(t *testing.T, file string) []pyResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "/usr/bin/python3", "testdata/verify.py", file, l.unbound.Host, fmt.Sprint(l.unbound.Port))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	require.NoError(t, err, "verify.py: %s", stderr.String())
	var res []pyResult
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		var r pyResult
		require.NoError(t, json.Unmarshal(sc.Bytes(), &r), "%s", sc.Text())
		res = append(res, r)
	}
	return res
}

// knotVerify verifies every signature of msg with go-msgauth, the keys
// read from Knot itself: against what the zone publishes now, with no
// resolver cache in between (unbound's may still hold an NXDOMAIN from
// before the record was set).
func (l *lab) knotVerify(t *testing.T, msg []byte) []*msgdkim.Verification {
	t.Helper()
	lookup := func(name string) ([]string, error) {
		m := peertest.Query(t, l.knot.Addr, name, dns.TypeTXT, false)
		var out []string
		for _, rr := range m.Answer {
			if txt, ok := rr.(*dns.TXT); ok {
				out = append(out, strings.Join(txt.Txt, ""))
			}
		}
		if len(out) == 0 {
			return nil, fmt.Errorf("%s: no TXT record in Knot (%s)", name, dns.RcodeToString[m.Rcode])
		}
		return out, nil
	}
	vs, err := msgdkim.VerifyWithOptions(bytes.NewReader(msg), &msgdkim.VerifyOptions{LookupTXT: lookup})
	require.NoError(t, err)
	return vs
}

// opendkimVerify runs opendkim-testmsg on the message in file, with the C
// library's resolver pointed at unbound; nil means it verified.
func (l *lab) opendkimVerify(t *testing.T, file string) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	in, err := os.Open(file)
	require.NoError(t, err)
	defer in.Close()
	// A mount namespace of its own (private propagation: unshare's
	// default), so that the machine's /etc/resolv.conf is untouched.
	cmd := exec.CommandContext(ctx, "unshare", "--mount", "sh", "-c",
		`mount --bind "$1" /etc/resolv.conf && exec opendkim-testmsg -t "$2"`, "sh", l.resolvConf, t.TempDir())
	cmd.Stdin = in
	out, err := cmd.CombinedOutput()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return fmt.Errorf("opendkim-testmsg: exit %d: %s", ee.ExitCode(), strings.TrimSpace(string(out)))
		}
		t.Fatalf("opendkim-testmsg: %v", err)
	}
	if len(bytes.TrimSpace(out)) > 0 {
		return fmt.Errorf("opendkim-testmsg: %s", strings.TrimSpace(string(out)))
	}
	return nil
}

// zoneRecords returns zone file lines for records, relative to example.test.
func zoneRecords(recs []Record) string {
	var b strings.Builder
	for _, r := range recs {
		b.WriteString(r.ZoneLine())
		b.WriteString("\n")
	}
	return b.String()
}

// writeMessage writes a message to a file of the test.
func writeMessage(t *testing.T, msg []byte) string {
	t.Helper()
	f := filepath.Join(t.TempDir(), "msg.eml")
	require.NoError(t, os.WriteFile(f, msg, 0o644))
	return f
}
