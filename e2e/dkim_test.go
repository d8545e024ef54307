package e2e

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/seed7b014b84/caddy-smtp/internal/peertest"
)

// The DKIM tests run the binary with signers for example.org (RSA s1 and
// Ed25519 e1) and for the reporting host out.example.org (RSA d1, which
// signs the notices: their From is MAILER-DAEMON@out.example.org). The
// key records are served by Knot (zone example.org) through unbound on
// port 53 of a loopback address of its own; the app's resolver asks
// unbound, and so do the real verifiers: python3-dkim's dkimverify and
// OpenDKIM's opendkim-testmsg, each run in a mount namespace of its own
// where a resolv.conf naming only unbound is bind-mounted over
// /etc/resolv.conf (neither takes a resolver address).

// dkimE2EZone is the zone that holds the key records.
const dkimE2EZone = "example.org"

// dkimE2ELab is the DNS of a test: Knot serving example.org and unbound
// resolving it on port 53 of a loopback address of its own.
type dkimE2ELab struct {
	knot    *peertest.Knot
	unbound *peertest.Unbound
	// resolvConf names only unbound, for the verifiers.
	resolvConf string
}

// dkimE2EStartLab starts Knot with records (zone-file lines) in
// example.org, and unbound. With short, answers are kept at most a second
// (TTL, negative TTL, unbound's cache), so that a record added later is
// seen at once.
func dkimE2EStartLab(t *testing.T, records string, short bool) *dkimE2ELab {
	t.Helper()
	peertest.Need(t, "dkimverify", "opendkim-testmsg", "unshare", "mount")
	zone := peertest.Zone{Name: dkimE2EZone, Records: records}
	var extra []string
	if short {
		zone.TTL = 1
		extra = []string{"cache-max-negative-ttl: 1", "cache-max-ttl: 1"}
	}
	k := peertest.StartKnot(t, peertest.KnotOptions{Zones: []peertest.Zone{zone}})
	u := peertest.StartUnbound(t, peertest.UnboundOptions{Knot: k, Addr: peertest.Port53Address(t, "127.88.29"), Port: 53, Extra: extra})
	rc := filepath.Join(t.TempDir(), "resolv.conf")
	require.NoError(t, os.WriteFile(rc, []byte("nameserver "+u.Host+"\noptions attempts:2 timeout:2\n"), 0o644))
	return &dkimE2ELab{knot: k, unbound: u, resolvConf: rc}
}

// publish replaces the records of example.org with the given zone-file
// lines (what caddy smtp-dkim prints, comments included) and waits until
// unbound answers them (a negative answer it cached expires).
func (l *dkimE2ELab) publish(t *testing.T, lines string) {
	t.Helper()
	l.knot.Reload(t, dkimE2EZone, lines)
	deadline := time.Now().Add(15 * time.Second)
	for _, r := range dkimE2EParseRecords(t, lines) {
		for !slices.Contains(l.txt(t, r.Name), r.Text()) {
			require.True(t, time.Now().Before(deadline), "unbound does not answer %s after 15s", r.Name)
			time.Sleep(100 * time.Millisecond)
		}
	}
}

// txt returns the TXT records of name as unbound answers them, each with
// its strings joined.
func (l *dkimE2ELab) txt(t *testing.T, name string) []string {
	t.Helper()
	m := peertest.Query(t, l.unbound.Addr, name, dns.TypeTXT, false)
	var out []string
	for _, rr := range m.Answer {
		if r, ok := rr.(*dns.TXT); ok {
			out = append(out, strings.Join(r.Txt, ""))
		}
	}
	return out
}

// inNamespace runs argv with stdin from file in a mount namespace of its
// own (private propagation: unshare's default) where l.resolvConf is
// bind-mounted over /etc/resolv.conf; the machine's file is untouched.
func (l *dkimE2ELab) inNamespace(t *testing.T, file string, argv ...string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	in, err := os.Open(file)
	require.NoError(t, err)
	defer in.Close()
	args := append([]string{"--mount", "sh", "-c", `mount --bind "$1" /etc/resolv.conf && shift && exec "$@"`, "sh", l.resolvConf}, argv...)
	cmd := exec.CommandContext(ctx, "unshare", args...)
	cmd.Stdin = in
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if errors.As(err, &ee) && ctx.Err() == nil {
		return ee.ExitCode(), strings.TrimSpace(string(out))
	}
	require.NoError(t, err, "%v: %s", argv, out)
	return 0, strings.TrimSpace(string(out))
}

// dkimverify runs python3-dkim's dkimverify on the signature at index (0
// is the first DKIM-Signature field) of the message in file; nil means
// "signature ok".
func (l *dkimE2ELab) dkimverify(t *testing.T, file string, index int) error {
	t.Helper()
	code, out := l.inNamespace(t, file, "dkimverify", "--index", strconv.Itoa(index))
	if code == 0 && out == "signature ok" {
		return nil
	}
	return fmt.Errorf("dkimverify --index %d: exit %d: %s", index, code, out)
}

// opendkim runs opendkim-testmsg on the message in file; nil means it
// verified (it prints nothing then).
func (l *dkimE2ELab) opendkim(t *testing.T, file string) error {
	t.Helper()
	code, out := l.inNamespace(t, file, "opendkim-testmsg", "-t", t.TempDir())
	if code == 0 && out == "" {
		return nil
	}
	return fmt.Errorf("opendkim-testmsg: exit %d: %s", code, out)
}

// dkimE2EConfig is a Caddyfile: storage in the folder storage, the smtp
// app resolving at resolver (unbound, answers kept at most a second), the
// example.org signers (RSA s1, Ed25519 e1) and the lines in extra, mail
// to refuse.test sent to 127.0.0.1:refuse and everything else to
// 127.0.0.1:store, and a submission port.
func dkimE2EConfig(storage, resolver string, submit, store, refuse int, extra string) string {
	return fmt.Sprintf(`{
	admin off
	storage file_system {
		root %s
	}
	smtp {
		hostname out.example.org
		resolver udp://%s {
			cache {
				max_ttl 1s
				max_negative_ttl 1s
			}
		}
		dkim example.org {
			selector s1
			algorithm rsa-sha256
		}
		dkim example.org {
			selector e1
			algorithm ed25519-sha256
		}
%s		next_hop {
			if "rcpt_domain == 'refuse.test'" refuse
			else store
		}
		remote store {
			address 127.0.0.1
			port %d
		}
		remote refuse {
			address 127.0.0.1
			port %d
		}
	}
	layer4 {
		127.0.0.1:%d {
			route {
				smtp_submission {
					relay_networks 127.0.0.0/8
				}
			}
		}
	}
}
`, storage, resolver, extra, store, refuse, submit)
}

// dkimE2ECmd runs caddy smtp-dkim with args and returns its standard
// output, failing the test unless it exits 0.
func dkimE2ECmd(t *testing.T, args ...string) string {
	t.Helper()
	stdout, stderr, err := caddy(t, append([]string{"smtp-dkim"}, args...)...)
	require.NoError(t, err, "caddy smtp-dkim %v: %s", args, stderr)
	return stdout
}

// dkimE2ERecord is one line that caddy smtp-dkim prints.
type dkimE2ERecord struct {
	Name    string   // with the final dot
	Strings []string // the TXT record's strings
	Role    string   // current, next or retired
}

// Text is the record's strings joined.
func (r dkimE2ERecord) Text() string { return strings.Join(r.Strings, "") }

// P is the record's p= value.
func (r dkimE2ERecord) P() string { return dkimE2ETags(r.Text())["p"] }

var (
	dkimE2ELineRE   = regexp.MustCompile(`^(\S+) IN TXT((?: "[^"]*")+) ; (\w+)$`)
	dkimE2EStringRE = regexp.MustCompile(`"([^"]*)"`)
)

// dkimE2EParseRecords parses what caddy smtp-dkim prints: one zone-file
// line per record, its role in a comment.
func dkimE2EParseRecords(t *testing.T, out string) []dkimE2ERecord {
	t.Helper()
	var recs []dkimE2ERecord
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		m := dkimE2ELineRE.FindStringSubmatch(line)
		require.NotNil(t, m, "not a record line: %q", line)
		r := dkimE2ERecord{Name: m[1], Role: m[3]}
		for _, s := range dkimE2EStringRE.FindAllStringSubmatch(m[2], -1) {
			r.Strings = append(r.Strings, s[1])
		}
		recs = append(recs, r)
	}
	return recs
}

// dkimE2ETags parses a tag list ("v=DKIM1; k=rsa; p=..." or a
// DKIM-Signature's value): tag names trimmed, whitespace removed from the
// values.
func dkimE2ETags(s string) map[string]string {
	tags := map[string]string{}
	for _, part := range strings.Split(s, ";") {
		name, value, ok := strings.Cut(part, "=")
		if !ok {
			continue
		}
		tags[strings.TrimSpace(name)] = strings.Join(strings.Fields(value), "")
	}
	return tags
}

// dkimE2EField is one header field of a message.
type dkimE2EField struct {
	Name  string // as written
	Value string // unfolded, line ends removed
	Raw   string // the field with its CRLF line ends
}

// dkimE2EFields splits a message's header section (LF or CRLF line ends)
// into its fields.
func dkimE2EFields(msg []byte) []dkimE2EField {
	header, _, _ := bytes.Cut(bytes.ReplaceAll(msg, []byte("\r\n"), []byte("\n")), []byte("\n\n"))
	var out []dkimE2EField
	for _, line := range strings.Split(string(header), "\n") {
		if (strings.HasPrefix(line, " ") || strings.HasPrefix(line, "\t")) && len(out) > 0 {
			f := &out[len(out)-1]
			f.Value += line
			f.Raw += line + "\r\n"
			continue
		}
		name, value, _ := strings.Cut(line, ":")
		out = append(out, dkimE2EField{Name: strings.TrimSpace(name), Value: value, Raw: line + "\r\n"})
	}
	return out
}

// dkimE2ECount counts the fields named name (any case).
func dkimE2ECount(fields []dkimE2EField, name string) int {
	n := 0
	for _, f := range fields {
		if strings.EqualFold(f.Name, name) {
			n++
		}
	}
	return n
}

// dkimE2ESignatures returns the tags of each DKIM-Signature field of msg,
// in order (dkimverify's --index).
func dkimE2ESignatures(msg []byte) []map[string]string {
	var out []map[string]string
	for _, f := range dkimE2EFields(msg) {
		if strings.EqualFold(f.Name, "DKIM-Signature") {
			out = append(out, dkimE2ETags(f.Value))
		}
	}
	return out
}

// dkimE2EHeaderList counts the names in an h= tag, lower-cased.
func dkimE2EHeaderList(h string) map[string]int {
	n := map[string]int{}
	for _, name := range strings.Split(h, ":") {
		n[strings.ToLower(strings.TrimSpace(name))]++
	}
	return n
}

// dkimE2ECRLF returns a stored message (smtp-sink keeps lines with LF)
// with the CRLF line ends it travelled with.
func dkimE2ECRLF(raw []byte) []byte {
	return bytes.ReplaceAll(bytes.ReplaceAll(raw, []byte("\r\n"), []byte("\n")), []byte("\n"), []byte("\r\n"))
}

// dkimE2EWrite writes msg to a file of the test and returns its path.
func dkimE2EWrite(t *testing.T, name string, msg []byte) string {
	t.Helper()
	f := filepath.Join(t.TempDir(), name)
	require.NoError(t, os.WriteFile(f, msg, 0o644))
	return f
}

// dkimE2EKeepSignature returns a CRLF message with only its keep'th
// DKIM-Signature field (the others removed), for opendkim-testmsg to judge
// one signature alone.
func dkimE2EKeepSignature(msg []byte, keep int) []byte {
	header, body, _ := bytes.Cut(msg, []byte("\r\n\r\n"))
	var b bytes.Buffer
	i := 0
	for _, f := range dkimE2EFields(append(append([]byte(nil), header...), "\r\n\r\n"...)) {
		if strings.EqualFold(f.Name, "DKIM-Signature") {
			i++
			if i-1 != keep {
				continue
			}
		}
		b.WriteString(f.Raw)
	}
	b.WriteString("\r\n")
	b.Write(body)
	return b.Bytes()
}

// dkimE2EAddFrom adds a second From field to a CRLF message, at the top
// of the header or at its bottom.
func dkimE2EAddFrom(msg []byte, top bool) []byte {
	const from = "From: Mallory <mallory@example.org>\r\n"
	if top {
		return append([]byte(from), msg...)
	}
	i := bytes.Index(msg, []byte("\r\n\r\n"))
	out := append([]byte(nil), msg[:i+2]...)
	out = append(out, from...)
	return append(out, msg[i+2:]...)
}

// dkimE2EMessage is a message of the kind a web application sends, with
// every field the signer signs by default, a line with a leading dot
// (dot-stuffed on the way) and whitespace that relaxed canonicalization
// changes.
func dkimE2EMessage(subject string) string {
	return "From: Shop <app@example.org>\r\n" +
		"To: Bob <bob@store.test>\r\n" +
		"Subject: " + subject + "\r\n" +
		"Date: Mon, 2 Jun 2025 10:00:00 +0000\r\n" +
		"Message-ID: <" + subject + "@example.org>\r\n" +
		"MIME-Version: 1.0\r\n" +
		"Content-Type: text/plain; charset=utf-8\r\n" +
		"List-Unsubscribe: <https://example.org/u/1>\r\n" +
		"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n" +
		"X-Mailer: dkim e2e\r\n" +
		"\r\n" +
		"Hello Bob,\r\n\r\n  indented  line with trailing space \t\r\n.a line with a leading dot\r\nbye\r\n\r\n\r\n"
}

// dkimE2ESubmit submits msg from app@example.org to rcpt through the
// binary's submission port and returns its queue ID.
func dkimE2ESubmit(t *testing.T, submit int, rcpt, msg string) string {
	t.Helper()
	s, err := dialSubmitter(fmt.Sprintf("127.0.0.1:%d", submit))
	require.NoError(t, err)
	defer s.close()
	code, text, err := s.send("app@example.org", []string{rcpt}, msg)
	require.NoError(t, err)
	id, ok := queuedID(code, text)
	require.True(t, ok, "%d %s", code, text)
	return id
}

// dkimE2EWait waits until the sink holds a message that match accepts,
// and returns it (with CRLF line ends).
func dkimE2EWait(t *testing.T, sink *peertest.Sink, timeout time.Duration, what string, match func(peertest.SinkMessage) bool) []byte {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		for _, m := range sink.Messages(t) {
			if match(m) {
				return dkimE2ECRLF(m.Raw)
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not at the sink after %v", what, timeout)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// dkimE2EBySubject matches a sink message by its Subject.
func dkimE2EBySubject(subject string) func(peertest.SinkMessage) bool {
	return func(m peertest.SinkMessage) bool { return subjectOf(m) == subject }
}

// dkimE2EMadeKeys returns the selectors of the "made dkim key" lines of
// the processes' logs, one entry per line.
func dkimE2EMadeKeys(procs ...*caddyProc) []string {
	var out []string
	for _, p := range procs {
		for _, e := range p.entries() {
			if e.Logger == "smtp.dkim" && e.Msg == "made dkim key" {
				out = append(out, e.str("domain")+"/"+e.str("selector"))
			}
		}
	}
	sort.Strings(out)
	return out
}

// dkimE2EStoredKey returns the p= value of the private key that the
// storage holds for domain/selector (key.pem, PKCS #8).
func dkimE2EStoredKey(t *testing.T, storage, domain, selector string) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(storage, "smtp", "dkim", domain, selector, "key.pem"))
	require.NoError(t, err)
	block, _ := pem.Decode(data)
	require.NotNil(t, block, "no PEM block in %s/%s key.pem", domain, selector)
	key, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	require.NoError(t, err)
	switch k := key.(type) {
	case ed25519.PrivateKey:
		return base64.StdEncoding.EncodeToString(k.Public().(ed25519.PublicKey))
	case *rsa.PrivateKey:
		der, err := x509.MarshalPKIXPublicKey(&k.PublicKey)
		require.NoError(t, err)
		return base64.StdEncoding.EncodeToString(der)
	}
	t.Fatalf("%s/%s: %T key", domain, selector, key)
	return ""
}

// dkimE2EVerifyAll checks that msg has the signatures want (selector ->
// algorithm, all with d=domain) and that each passes dkimverify and, alone
// in the message, opendkim-testmsg; and that opendkim-testmsg passes the
// whole message.
func dkimE2EVerifyAll(t *testing.T, lab *dkimE2ELab, msg []byte, domain string, want map[string]string) []map[string]string {
	t.Helper()
	sigs := dkimE2ESignatures(msg)
	got := map[string]string{}
	for _, s := range sigs {
		got[s["s"]] = s["a"]
		assert.Equal(t, domain, s["d"], "d= of s=%s", s["s"])
	}
	require.Equal(t, want, got, "the signatures (selector: algorithm)")
	file := dkimE2EWrite(t, "msg.eml", msg)
	for i, s := range sigs {
		assert.NoError(t, lab.dkimverify(t, file, i), "dkimverify, %s s=%s", s["a"], s["s"])
		alone := dkimE2EWrite(t, "alone.eml", dkimE2EKeepSignature(msg, i))
		require.Len(t, dkimE2ESignatures(dkimE2EKeepSignature(msg, i)), 1)
		assert.NoError(t, lab.opendkim(t, alone), "opendkim-testmsg, %s s=%s alone", s["a"], s["s"])
	}
	assert.NoError(t, lab.opendkim(t, file), "opendkim-testmsg, every signature")
	return sigs
}

// dkimE2EBigMessage is a message of about size bytes: text lines of 78
// octets.
func dkimE2EBigMessage(subject string, size int) string {
	const line = "The quick brown fox  jumps over the lazy dog, \t0123456789 abcdefghijklmnop \r\n"
	var b strings.Builder
	b.Grow(size + 1024)
	b.WriteString("From: Shop <app@example.org>\r\nTo: bob@store.test\r\nSubject: " + subject +
		"\r\nDate: Mon, 2 Jun 2025 10:00:00 +0000\r\nMessage-ID: <" + subject + "@example.org>\r\n\r\n")
	for b.Len() < size {
		b.WriteString(line)
	}
	return b.String()
}

// TestDKIME2ESigning: the records printed by caddy smtp-dkim before Caddy
// ever ran are the keys it then signs with; messages submitted through
// the binary verify with dkimverify and opendkim-testmsg (RSA and
// Ed25519); a second From makes them fail and h= oversigns From; the
// notices the binary sends are signed by the reporting host's domain; a
// 20 MiB message verifies.
func TestDKIME2ESigning(t *testing.T) {
	t.Parallel()
	lab := dkimE2EStartLab(t, "", false)
	store := peertest.StartSink(t, peertest.SinkOptions{})
	refuse := peertest.StartSink(t, peertest.SinkOptions{Flags: []string{"-f", "rcpt"}})
	dir := t.TempDir()
	storage := filepath.Join(dir, "storage")
	submit := peertest.FreePort(t)
	// The reporting host's domain has a signer of its own: the notices'
	// From is MAILER-DAEMON@out.example.org.
	config := dkimE2EConfig(storage, lab.unbound.Addr, submit, store.Port, refuse.Port,
		"\t\tdkim out.example.org {\n\t\t\tselector d1\n\t\t}\n")
	configFile := filepath.Join(dir, "Caddyfile")
	require.NoError(t, os.WriteFile(configFile, []byte(config), 0o644))

	// 1. The records, before Caddy ever ran: the same twice, served by
	// Knot as printed.
	ok := t.Run("records", func(t *testing.T) {
		first := dkimE2ECmd(t, "--config", configFile, "example.org")
		second := dkimE2ECmd(t, "--config", configFile, "example.org")
		assert.Equal(t, first, second, "a second run prints the same keys")
		recs := dkimE2EParseRecords(t, first)
		require.Len(t, recs, 2, "%s", first)
		kinds := map[string]string{}
		for _, r := range recs {
			assert.Equal(t, "current", r.Role)
			for _, s := range r.Strings {
				assert.LessOrEqual(t, len(s), 255, "TXT strings are at most 255 octets")
			}
			tags := dkimE2ETags(r.Text())
			assert.Equal(t, "DKIM1", tags["v"])
			kinds[r.Name] = tags["k"]
			p, err := base64.StdEncoding.DecodeString(r.P())
			require.NoError(t, err, "p= of %s", r.Name)
			switch tags["k"] {
			case "rsa":
				pub, err := x509.ParsePKIXPublicKey(p)
				require.NoError(t, err)
				assert.Equal(t, 2048, pub.(*rsa.PublicKey).N.BitLen())
				assert.Greater(t, len(r.Strings), 1, "a 2048-bit key's record needs two strings")
				assert.Equal(t, dkimE2EStoredKey(t, storage, "example.org", "s1"), r.P(), "the stored key's")
			case "ed25519":
				assert.Len(t, p, ed25519.PublicKeySize)
				assert.Equal(t, dkimE2EStoredKey(t, storage, "example.org", "e1"), r.P(), "the stored key's")
			}
		}
		assert.Equal(t, map[string]string{"s1._domainkey.example.org.": "rsa", "e1._domainkey.example.org.": "ed25519"}, kinds)

		// Every domain's records, as the zone gets them: the printed
		// lines as they are (the role is a zone-file comment).
		all := dkimE2ECmd(t, "--config", configFile)
		require.Len(t, dkimE2EParseRecords(t, all), 3, "%s", all)
		assert.Contains(t, all, first)
		assert.Contains(t, all, "d1._domainkey.out.example.org. IN TXT \"v=DKIM1; k=rsa; p=")
		lab.publish(t, all)
		for _, r := range recs {
			assert.Equal(t, []string{r.Text()}, lab.txt(t, r.Name), "unbound answers the printed record")
		}
	})
	require.True(t, ok, "the rest needs the records")

	p := startCaddy(t, "Caddyfile", config)
	var signed []byte
	// 2. A message through the binary: both signatures verify with both
	// verifiers, made with the keys printed before Caddy ran.
	ok = t.Run("verified", func(t *testing.T) {
		dkimE2ESubmit(t, submit, "bob@store.test", dkimE2EMessage("dkim-e2e-1"))
		signed = dkimE2EWait(t, store, 30*time.Second, "the message", dkimE2EBySubject("dkim-e2e-1"))
		sigs := dkimE2EVerifyAll(t, lab, signed, "example.org", map[string]string{"s1": "rsa-sha256", "e1": "ed25519-sha256"})
		for _, s := range sigs {
			h := dkimE2EHeaderList(s["h"])
			for _, name := range []string{"to", "subject", "date", "message-id", "mime-version", "content-type",
				"list-unsubscribe", "list-unsubscribe-post"} {
				assert.Equal(t, 1, h[name], "h= of s=%s signs %s once: %s", s["s"], name, s["h"])
			}
			assert.Zero(t, h["x-mailer"], "X-Mailer is not in the default list")
			assert.Equal(t, "relaxed/relaxed", s["c"])
		}
		assert.Empty(t, dkimE2EMadeKeys(p), "Caddy signs with the keys made by caddy smtp-dkim")

		// A changed body fails with both verifiers: they do judge.
		tampered := dkimE2EWrite(t, "tampered.eml", bytes.Replace(signed, []byte("bye\r\n"), []byte("Bye\r\n"), 1))
		for i := range sigs {
			assert.Error(t, lab.dkimverify(t, tampered, i), "a changed body, signature %d", i)
		}
		assert.Error(t, lab.opendkim(t, tampered), "a changed body")
	})
	require.True(t, ok, "the rest needs a signed message")

	// 3. A second From, at the top or at the bottom of the header, fails;
	// h= lists From once more than the message has From fields, which is
	// what makes it fail for any verifier (python3-dkim adds a From of its
	// own and opendkim-testmsg refuses two From fields whatever the
	// signer did, so their verdicts alone do not prove it).
	t.Run("second From", func(t *testing.T) {
		fields := dkimE2EFields(signed)
		froms := dkimE2ECount(fields, "From")
		require.Equal(t, 1, froms)
		sigs := dkimE2ESignatures(signed)
		require.Len(t, sigs, 2)
		for _, s := range sigs {
			assert.Equal(t, froms+1, dkimE2EHeaderList(s["h"])["from"], "h= of s=%s lists From once more than the message has: %s", s["s"], s["h"])
		}
		for _, top := range []bool{true, false} {
			msg := dkimE2EAddFrom(signed, top)
			require.Equal(t, 2, dkimE2ECount(dkimE2EFields(msg), "From"))
			file := dkimE2EWrite(t, "twofrom.eml", msg)
			for i, s := range sigs {
				err := lab.dkimverify(t, file, i)
				assert.Error(t, err, "dkimverify, From added (top %v), s=%s", top, s["s"])
				t.Logf("From added (top %v), s=%s: %v", top, s["s"], err)
			}
			err := lab.opendkim(t, file)
			assert.Error(t, err, "opendkim-testmsg, From added (top %v)", top)
			t.Logf("From added (top %v): %v", top, err)
		}
	})

	// 5. A notice (a recipient refused with 5xx) is signed with the
	// reporting host's domain, the domain of its From.
	t.Run("notice", func(t *testing.T) {
		id := dkimE2ESubmit(t, submit, "nobody@refuse.test", dkimE2EMessage("dkim-e2e-refused"))
		dsn := dkimE2EWait(t, store, 30*time.Second, "the notice of "+id, func(m peertest.SinkMessage) bool {
			return m.From == "" && bytes.Contains(m.Raw, []byte("dkim-e2e-refused"))
		})
		fields := dkimE2EFields(dsn)
		var from string
		for _, f := range fields {
			if strings.EqualFold(f.Name, "From") {
				from = f.Value
			}
		}
		assert.Contains(t, from, "MAILER-DAEMON@out.example.org")
		sigs := dkimE2EVerifyAll(t, lab, dsn, "out.example.org", map[string]string{"d1": "rsa-sha256"})
		assert.Equal(t, 2, dkimE2EHeaderList(sigs[0]["h"])["from"], "From oversigned: %s", sigs[0]["h"])
	})

	// A 20 MiB message: submitted, queued, signed and delivered within
	// bounds; both signatures verify.
	t.Run("20MiB", func(t *testing.T) {
		const size = 20 << 20
		msg := dkimE2EBigMessage("dkim-e2e-big", size)
		start := time.Now()
		dkimE2ESubmit(t, submit, "bob@store.test", msg)
		submitted := time.Since(start)
		big := dkimE2EWait(t, store, 60*time.Second, "the 20 MiB message", dkimE2EBySubject("dkim-e2e-big"))
		arrived := time.Since(start)
		require.Greater(t, len(big), size)
		sigs := dkimE2ESignatures(big)
		require.Len(t, sigs, 2)
		file := dkimE2EWrite(t, "big.eml", big)
		vstart := time.Now()
		for i, s := range sigs {
			assert.NoError(t, lab.dkimverify(t, file, i), "dkimverify, 20 MiB, %s s=%s", s["a"], s["s"])
		}
		pyTime := time.Since(vstart)
		vstart = time.Now()
		assert.NoError(t, lab.opendkim(t, file), "opendkim-testmsg, 20 MiB")
		t.Logf("20 MiB: submitted in %v, at the sink after %v; dkimverify (both) %v, opendkim-testmsg %v",
			submitted.Round(time.Millisecond), arrived.Round(time.Millisecond), pyTime.Round(time.Millisecond),
			time.Since(vstart).Round(time.Millisecond))
	})
}

// TestDKIME2ETwoInstances: two binaries on one storage folder, started at
// the same moment with no key made yet, make one key per signer, not two:
// one "made dkim key" line per selector over both logs, one key in
// storage, and the messages each instance signs verify against the one
// record.
func TestDKIME2ETwoInstances(t *testing.T) {
	t.Parallel()
	// Answers kept a second: the instances look their records up at
	// start, before they are published.
	lab := dkimE2EStartLab(t, "", true)
	sink := peertest.StartSink(t, peertest.SinkOptions{})
	storage := filepath.Join(t.TempDir(), "storage")
	submits := []int{peertest.FreePort(t), peertest.FreePort(t)}
	var procs []*caddyProc
	for _, submit := range submits {
		procs = append(procs, newCaddy(t, "Caddyfile", dkimE2EConfig(storage, lab.unbound.Addr, submit, sink.Port, sink.Port, "")))
	}
	var wg sync.WaitGroup
	gate := make(chan struct{})
	for _, p := range procs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-gate
			p.start()
		}()
	}
	close(gate)
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}

	for i, p := range procs {
		for _, e := range p.entries() {
			if e.Msg == "made dkim key" || e.Msg == "smtp app started" {
				t.Logf("instance %d at %s: %s %s", i, e.TS.Format("15:04:05.000"), e.Msg, e.str("selector"))
			}
		}
	}
	made := dkimE2EMadeKeys(procs...)
	assert.Equal(t, []string{"example.org/e1", "example.org/s1"}, made, "one key made per signer over both instances")
	ents, err := os.ReadDir(filepath.Join(storage, "smtp", "dkim", "example.org"))
	require.NoError(t, err)
	var dirs []string
	for _, e := range ents {
		dirs = append(dirs, e.Name())
	}
	assert.Equal(t, []string{"e1", "s1"}, dirs, "one key folder per selector")

	// Each instance signs with the stored key: its messages verify
	// against the record of the key in storage.
	recs := dkimE2ECmd(t, "--config", procs[0].path, "example.org")
	require.Len(t, dkimE2EParseRecords(t, recs), 2)
	assert.Equal(t, made, dkimE2EMadeKeys(procs...), "printing the records made no key")
	lab.publish(t, recs)
	for i, submit := range submits {
		subject := fmt.Sprintf("dkim-e2e-instance-%d", i)
		dkimE2ESubmit(t, submit, "bob@store.test", dkimE2EMessage(subject))
		msg := dkimE2EWait(t, sink, 30*time.Second, subject, dkimE2EBySubject(subject))
		sigs := dkimE2ESignatures(msg)
		require.Len(t, sigs, 2)
		file := dkimE2EWrite(t, "msg.eml", msg)
		for j, s := range sigs {
			assert.NoError(t, lab.dkimverify(t, file, j), "instance %d, s=%s: signed with the stored key", i, s["s"])
		}
	}
}

// dkimE2ERotationState is smtp/dkim/<domain>/_rotation.json.
type dkimE2ERotationState struct {
	Signers map[string]struct {
		Current string `json:"current"`
		Next    string `json:"next"`
		Retired []struct {
			Selector string    `json:"selector"`
			Until    time.Time `json:"until"`
		} `json:"retired"`
	} `json:"signers"`
}

func dkimE2EReadState(t *testing.T, storage string) dkimE2ERotationState {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(storage, "smtp", "dkim", "example.org", "_rotation.json"))
	require.NoError(t, err)
	var st dkimE2ERotationState
	require.NoError(t, json.Unmarshal(data, &st), "%s", data)
	return st
}

// dkimE2ESelectors returns the selectors of msg's signatures, sorted.
func dkimE2ESelectors(msg []byte) []string {
	var out []string
	for _, s := range dkimE2ESignatures(msg) {
		out = append(out, s["s"])
	}
	sort.Strings(out)
	return out
}

// TestDKIME2ERotation: caddy smtp-dkim rotate prints the next keys'
// records (SELECTOR-YYYYMMDD, role next) and records the rotation in
// storage; the running binary keeps signing with the old keys until the
// new records resolve, then switches by itself at its next check (the
// signer checks every minute: dkim.Options.CheckInterval, which the app
// does not change), and the old records stay listed as retired.
func TestDKIME2ERotation(t *testing.T) {
	t.Parallel()
	lab := dkimE2EStartLab(t, "", true)
	sink := peertest.StartSink(t, peertest.SinkOptions{})
	storage := filepath.Join(t.TempDir(), "storage")
	submit := peertest.FreePort(t)
	p := startCaddy(t, "Caddyfile", dkimE2EConfig(storage, lab.unbound.Addr, submit, sink.Port, sink.Port, ""))
	started := time.Now()
	current := dkimE2ECmd(t, "--config", p.path, "example.org")
	lab.publish(t, current)

	send := func(subject string) []byte {
		t.Helper()
		dkimE2ESubmit(t, submit, "bob@store.test", dkimE2EMessage(subject))
		return dkimE2EWait(t, sink, 30*time.Second, subject, dkimE2EBySubject(subject))
	}
	before := send("dkim-e2e-before")
	assert.Equal(t, []string{"e1", "s1"}, dkimE2ESelectors(before))

	dayBefore := time.Now().UTC().Format("20060102")
	out := dkimE2ECmd(t, "--config", p.path, "rotate", "example.org")
	day := time.Now().UTC().Format("20060102")
	recs := dkimE2EParseRecords(t, out)
	require.Len(t, recs, 2, "%s", out)
	next := map[string]string{}
	for _, r := range recs {
		assert.Equal(t, "next", r.Role)
		sel, _, _ := strings.Cut(r.Name, ".")
		base, date, _ := strings.Cut(sel, "-")
		// SELECTOR-YYYYMMDD, the day (UTC) of the command.
		assert.Contains(t, []string{dayBefore, day}, date, "%s", r.Name)
		next[base] = sel
	}
	require.Contains(t, next, "s1")
	require.Contains(t, next, "e1")
	st := dkimE2EReadState(t, storage)
	for _, base := range []string{"s1", "e1"} {
		assert.Equal(t, base, st.Signers[base].Current, "%s signs until the new record resolves", base)
		assert.Equal(t, next[base], st.Signers[base].Next)
	}
	assert.Equal(t, out, dkimE2ECmd(t, "--config", p.path, "rotate", "example.org"), "a rotation under way is not restarted")
	listed := dkimE2ECmd(t, "--config", p.path, "example.org")
	roles := map[string]string{}
	for _, r := range dkimE2EParseRecords(t, listed) {
		roles[r.Name] = r.Role
	}
	assert.Equal(t, map[string]string{
		"s1._domainkey.example.org.": "current", next["s1"] + "._domainkey.example.org.": "next",
		"e1._domainkey.example.org.": "current", next["e1"] + "._domainkey.example.org.": "next",
	}, roles)

	// Not yet published: the running binary still signs with the old keys.
	assert.Equal(t, []string{"e1", "s1"}, dkimE2ESelectors(send("dkim-e2e-unpublished")))

	lab.publish(t, listed)
	published := time.Now()
	// The switch comes at the signer's next check: at most a minute after
	// Caddy started, plus slack for a loaded machine.
	deadline := started.Add(90 * time.Second)
	for {
		n := 0
		for _, e := range p.entries() {
			if e.Logger == "smtp.dkim" && e.Msg == "dkim key rotated: signing with the new key" {
				n++
			}
		}
		if n >= 2 {
			break
		}
		require.True(t, time.Now().Before(deadline), "the binary did not switch to the new keys within 90s of its start (%d of 2 switched)", n)
		time.Sleep(250 * time.Millisecond)
	}
	t.Logf("switched %v after the records were published (%v after Caddy started)",
		time.Since(published).Round(time.Millisecond), time.Since(started).Round(time.Millisecond))

	after := send("dkim-e2e-after")
	dkimE2EVerifyAll(t, lab, after, "example.org", map[string]string{next["s1"]: "rsa-sha256", next["e1"]: "ed25519-sha256"})

	st = dkimE2EReadState(t, storage)
	for _, base := range []string{"s1", "e1"} {
		e := st.Signers[base]
		assert.Equal(t, next[base], e.Current)
		assert.Empty(t, e.Next)
		if assert.Len(t, e.Retired, 1) {
			assert.Equal(t, base, e.Retired[0].Selector)
			assert.WithinDuration(t, time.Now().Add(7*24*time.Hour), e.Retired[0].Until, 2*time.Minute, "the old record is kept a week")
		}
	}
	roles = map[string]string{}
	for _, r := range dkimE2EParseRecords(t, dkimE2ECmd(t, "--config", p.path, "example.org")) {
		roles[r.Name] = r.Role
	}
	assert.Equal(t, map[string]string{
		"s1._domainkey.example.org.": "retired", next["s1"] + "._domainkey.example.org.": "current",
		"e1._domainkey.example.org.": "retired", next["e1"] + "._domainkey.example.org.": "current",
	}, roles)
}
