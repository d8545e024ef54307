package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	msgdkim "github.com/emersion/go-msgauth/dkim"
	"github.com/emersion/go-smtp"
)

// The -dkim rows: the app as in the first row, with a DKIM signer for
// example.org, the domain of smtp-source's From (<a@example.org>), so that
// every message is signed as it enters the queue. The signer's key is made
// when Caddy starts (RSA 2048 or Ed25519) and kept in its storage in the
// instance's folder; no record is published (the first key signs without).
//
// That every message was signed is shown three ways, and the run fails
// otherwise:
//
//  1. after the measurement, one more message from smtp-source goes
//     through the same Caddy, its next_hop switched (a config reload) to a
//     small SMTP server of this command, and its signatures are verified
//     by go-msgauth against the public key read from Caddy's storage: this
//     gives the signature's algorithm and its size in bytes;
//  2. the sink read, per message, that many bytes more than in the
//     unsigned row (its rchar in /proc/PID/io; within 2%): so at least 98%
//     of the messages were signed, and every one that was carried a
//     signature of that size;
//  3. Caddy logged no "message not signed" (the signer's only way to
//     leave a message unsigned that it chose to sign).

// dkimRow is one signing setup of the -dkim rows.
type dkimRow struct {
	name      string // the row's label
	dir       string
	algorithm string // a= of its signatures
	selector  string
	signers   []map[string]any
}

var dkimRows = []dkimRow{
	{name: "this app, DKIM signing (rsa-sha256, 2048-bit key)", dir: "caddy-dkim-rsa", algorithm: "rsa-sha256", selector: "s1",
		signers: []map[string]any{{"domain": "example.org"}}},
	{name: "this app, DKIM signing (ed25519-sha256)", dir: "caddy-dkim-ed25519", algorithm: "ed25519-sha256", selector: "e1",
		signers: []map[string]any{{"domain": "example.org", "algorithm": "ed25519-sha256"}}},
}

// dkimCheck is the proof that a row's messages were signed.
type dkimCheck struct {
	algorithm string // a= of the check message's signature, verified
	sigBytes  int    // bytes of its DKIM-Signature field(s), as on the wire
	notSigned int    // "message not signed" lines in Caddy's log
	extra     float64
}

// checkDKIM sends one message through c, switched to deliver to a small
// SMTP server of this command, and verifies its signatures with the keys
// in c's storage.
func (b *bench) checkDKIM(c *caddyInstance, spec appSpec) (*dkimCheck, error) {
	row := dkimRowOf(spec.dir)
	msgs := make(chan []byte, 4)
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	srv := smtp.NewServer(smtp.BackendFunc(func(*smtp.Conn) (smtp.Session, error) { return &checkSession{msgs: msgs}, nil }))
	srv.Domain = "check.bench.example.org"
	srv.ReadTimeout, srv.WriteTimeout = 30*time.Second, 30*time.Second
	go func() { _ = srv.Serve(l) }()
	defer srv.Close()

	o := c.opts
	o.sinkPort = l.Addr().(*net.TCPAddr).Port
	if err := c.load(b.ctx, o); err != nil {
		return nil, fmt.Errorf("dkim check: %w", err)
	}
	sctx, cancel := context.WithTimeout(b.ctx, 30*time.Second)
	defer cancel()
	src, err := b.startSourceN(sctx, hostPort(o.submitPort), 1, 1)
	if err != nil {
		return nil, err
	}
	if _, _, err := src.wait(); err != nil {
		return nil, fmt.Errorf("dkim check: %w", err)
	}
	var msg []byte
	select {
	case msg = <-msgs:
	case <-time.After(30 * time.Second):
		return nil, fmt.Errorf("dkim check: the message did not reach the check server in 30 s")
	case <-b.ctx.Done():
		return nil, b.ctx.Err()
	}
	msg = crlf(msg)
	record, err := dkimRecord(filepath.Join(o.dir, "data", "smtp", "dkim", "example.org", row.selector, "key.pem"))
	if err != nil {
		return nil, fmt.Errorf("dkim check: %w", err)
	}
	name := row.selector + "._domainkey.example.org"
	vs, err := msgdkim.VerifyWithOptions(bytes.NewReader(msg), &msgdkim.VerifyOptions{
		LookupTXT: func(domain string) ([]string, error) {
			if domain != name {
				return nil, fmt.Errorf("no TXT record at %s", domain)
			}
			return []string{record}, nil
		},
	})
	if err != nil {
		return nil, fmt.Errorf("dkim check: verifying: %w", err)
	}
	fields := signatureFields(msg)
	if len(vs) != 1 || len(fields) != 1 {
		return nil, fmt.Errorf("dkim check: %d signatures (%d DKIM-Signature fields), want 1:\n%s", len(vs), len(fields), tail(msg, 3000))
	}
	if vs[0].Err != nil || vs[0].Domain != "example.org" {
		return nil, fmt.Errorf("dkim check: signature of %s does not verify: %v", vs[0].Domain, vs[0].Err)
	}
	if !strings.Contains(strings.ReplaceAll(fields[0], " ", ""), "a="+row.algorithm+";") {
		return nil, fmt.Errorf("dkim check: signature not %s: %s", row.algorithm, fields[0])
	}
	progress("%s: the check message's %s signature (d=example.org, s=%s, %d bytes) verifies", spec.dir, row.algorithm, row.selector, len(fields[0]))
	return &dkimCheck{algorithm: row.algorithm, sigBytes: len(fields[0])}, nil
}

// checkSigned compares the bytes the sink read per message in a signed row
// with the unsigned row's: they must differ by the signature's size.
func checkSigned(name string, plain, signed e2eResult) error {
	if signed.dkim == nil {
		return nil
	}
	extra := float64(signed.sinkRead)/float64(signed.delivered) - float64(plain.sinkRead)/float64(plain.delivered)
	signed.dkim.extra = extra
	want := float64(signed.dkim.sigBytes)
	if extra < 0.98*want || extra > 1.02*want+4 {
		return fmt.Errorf("%s: the sink read %.1f bytes more per message than without signing, the signature has %d: not every message was signed as the check message was",
			name, extra, signed.dkim.sigBytes)
	}
	return nil
}

func dkimRowOf(dir string) dkimRow {
	for _, r := range dkimRows {
		if r.dir == dir {
			return r
		}
	}
	return dkimRow{}
}

// checkSession keeps the messages it is given.
type checkSession struct{ msgs chan<- []byte }

func (s *checkSession) Reset()                               {}
func (s *checkSession) Logout() error                        { return nil }
func (s *checkSession) Mail(string, *smtp.MailOptions) error { return nil }
func (s *checkSession) Rcpt(string, *smtp.RcptOptions) error { return nil }
func (s *checkSession) Data(r io.Reader) error {
	b, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	select {
	case s.msgs <- b:
	default:
	}
	return nil
}

// crlf makes every line end of msg CRLF, as on the wire.
func crlf(msg []byte) []byte {
	return bytes.ReplaceAll(bytes.ReplaceAll(msg, []byte("\r\n"), []byte("\n")), []byte("\n"), []byte("\r\n"))
}

// signatureFields returns the DKIM-Signature header fields of msg (CRLF
// line ends), each whole: its name, its folded lines, their CRLFs.
func signatureFields(msg []byte) []string {
	header, _, _ := bytes.Cut(msg, []byte("\r\n\r\n"))
	var fields []string
	var cur *strings.Builder
	for line := range strings.SplitSeq(string(header)+"\r\n", "\r\n") {
		if line == "" {
			continue
		}
		if line[0] == ' ' || line[0] == '\t' {
			if cur != nil {
				cur.WriteString(line + "\r\n")
			}
			continue
		}
		if cur != nil {
			fields = append(fields, cur.String())
			cur = nil
		}
		if name, _, ok := strings.Cut(line, ":"); ok && strings.EqualFold(strings.TrimSpace(name), "DKIM-Signature") {
			cur = new(strings.Builder)
			cur.WriteString(line + "\r\n")
		}
	}
	if cur != nil {
		fields = append(fields, cur.String())
	}
	return fields
}

// dkimRecord makes the TXT record of the private key in file (PKCS #8 PEM,
// as Caddy's storage keeps it): what would be published.
func dkimRecord(file string) (string, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return "", err
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		return "", fmt.Errorf("%s: no PEM block", file)
	}
	key, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		return "", fmt.Errorf("%s: %w", file, err)
	}
	switch k := key.(type) {
	case *rsa.PrivateKey:
		der, err := x509.MarshalPKIXPublicKey(&k.PublicKey)
		if err != nil {
			return "", err
		}
		if k.N.BitLen() != 2048 {
			return "", fmt.Errorf("%s: an RSA key of %d bits, not 2048", file, k.N.BitLen())
		}
		return "v=DKIM1; k=rsa; p=" + base64.StdEncoding.EncodeToString(der), nil
	case ed25519.PrivateKey:
		return "v=DKIM1; k=ed25519; p=" + base64.StdEncoding.EncodeToString(k.Public().(ed25519.PublicKey)), nil
	}
	return "", fmt.Errorf("%s: a %T, neither RSA nor Ed25519", file, key)
}

// load replaces c's config by o's (POST /load), and waits until the
// submission listener greets again.
func (c *caddyInstance) load(ctx context.Context, o caddyOptions) error {
	cfg, err := o.config(c.adminAddr, c.logFile)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+c.adminAddr+"/load", bytes.NewReader(cfg))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := adminClient.Do(req)
	if err != nil {
		return fmt.Errorf("POST /load: %w", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("POST /load: %s: %s", resp.Status, bytes.TrimSpace(body))
	}
	c.opts = o
	for {
		err := c.ready(ctx)
		if err == nil {
			return nil
		}
		if ctx.Err() != nil || c.proc.exited() {
			return errors.Join(fmt.Errorf("caddy not ready after the reload"), err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// dkimKeyMade checks that the instance made its key when it started (so
// that no key is made during the measurement).
func dkimKeyMade(c *caddyInstance, row dkimRow) error {
	file := filepath.Join(c.opts.dir, "data", "smtp", "dkim", "example.org", row.selector, "key.pem")
	if _, err := os.Stat(file); err != nil {
		return fmt.Errorf("dkim: no key in caddy's storage after its start: %w", err)
	}
	return nil
}
