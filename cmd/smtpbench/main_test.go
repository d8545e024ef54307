package main

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	msgdkim "github.com/emersion/go-msgauth/dkim"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/seed7b014b84/caddy-smtp/internal/peertest"
)

// The smoke tests run each mode of the command on a few messages, so that
// it keeps working: it must measure every row and print its table. (The
// figures themselves are for BENCHMARKS.md, not for a test.) The command
// and Caddy (from xcaddy.json, unless CADDY_BIN names a binary built
// already) are built once.

var (
	benchBin, caddyBin string
	buildErr           error
)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "smtpbench-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	benchBin = filepath.Join(dir, "smtpbench")
	if out, err := exec.Command("go", "build", "-o", benchBin, ".").CombinedOutput(); err != nil {
		buildErr = fmt.Errorf("building smtpbench: %w\n%s", err, out)
	}
	caddyBin = os.Getenv("CADDY_BIN")
	if caddyBin == "" && buildErr == nil {
		caddyBin = filepath.Join(dir, "caddy")
		build := exec.Command("go", "run", "./cmd/caddybuild", "-recipe", "xcaddy.json", "-o", caddyBin)
		build.Dir = filepath.Join("..", "..")
		if out, err := build.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("building caddy: %w\n%s", err, out)
		}
	}
	code := m.Run()
	_ = os.RemoveAll(dir)
	os.Exit(code)
}

// runBench runs the command with args and returns its table (stdout).
func runBench(t *testing.T, limit time.Duration, args ...string) string {
	t.Helper()
	peertest.Need(t, "postfix", "smtp-sink", "smtp-source", "postconf", "postqueue")
	require.NoError(t, buildErr)
	ctx, cancel := context.WithTimeout(t.Context(), limit)
	defer cancel()
	args = append([]string{"-caddy", caddyBin, "-quiet", "0"}, args...)
	cmd := exec.CommandContext(ctx, benchBin, args...)
	stdout, err := cmd.Output()
	var stderr []byte
	if ee, ok := err.(*exec.ExitError); ok {
		stderr = ee.Stderr
	}
	require.NoError(t, err, "%s\n%s", stdout, stderr)
	t.Logf("%s", stdout)
	return string(stdout)
}

func TestSmokeE2E(t *testing.T) {
	table := runBench(t, 3*time.Minute, "-n", "300", "-conns", "4", "-timeout", "1m")
	assert.Contains(t, table, "| this app (caddy: smtp_submission → queue → delivery) | 300 |")
	assert.Contains(t, table, "| Postfix (smtpd → queue → smtp) | 300 |")
	assert.Contains(t, table, "| smtp-source → smtp-sink (ceiling) | 300 |")
	assert.Contains(t, table, "caddy logged 300 queued, 300 delivered, 0 deferred, 0 failed")
}

func TestSmokeTransport(t *testing.T) {
	table := runBench(t, 3*time.Minute, "-mode", "transport", "-n", "300", "-conns", "4", "-timeout", "1m")
	assert.Contains(t, table, "this app")
	assert.Contains(t, table, "Postfix relay")
	assert.Contains(t, table, "smtp-source")
	assert.Contains(t, table, "| 300 |", "each sender delivered all 300")
}

func TestSmokeBacklog(t *testing.T) {
	table := runBench(t, 3*time.Minute, "-mode", "backlog", "-n", "400", "-ref", "200", "-conns", "4",
		"-retry", "5s", "-ref-retry", "5s")
	assert.Contains(t, table, "| 200 messages |")
	assert.Contains(t, table, "| 400 messages |")
	assert.Contains(t, table, "200 queued, 200 deferred, 0 delivered, 0 failed while filling; 200 delivered, 0 deferred, 0 failed after the restart")
	assert.Contains(t, table, "400 queued, 400 deferred, 0 delivered, 0 failed while filling; 400 delivered, 0 deferred, 0 failed after the restart")
}

func TestSmokeLarge(t *testing.T) {
	table := runBench(t, 3*time.Minute, "-mode", "large", "-large", "3000000")
	for _, path := range []string{"SMTP submission", "HTTP smtp_send, raw", "HTTP smtp_send, JSON", "admin API", "`caddy sendmail`"} {
		assert.Contains(t, table, "| "+path)
	}
	assert.Contains(t, table, "exit 0")
	assert.Equal(t, 3, strings.Count(table, ": 202 {\"id\":"), "the three HTTP paths answered 202 with an ID")
}

// pgBins are the PostgreSQL programs the -pg rows run.
var pgBins = []string{pgBinDir + "/postgres", pgBinDir + "/initdb"}

func TestSmokeE2EPostgres(t *testing.T) {
	peertest.Need(t, pgBins...)
	table := runBench(t, 4*time.Minute, "-pg", "-n", "300", "-conns", "4", "-timeout", "1m")
	assert.Contains(t, table, "fsync = on, synchronous_commit = on, full_page_writes = on")
	assert.Contains(t, table, "| this app (caddy: smtp_submission → queue → delivery) | 300 |")
	assert.Contains(t, table, "| this app, PostgreSQL store, one instance | 300 |")
	assert.Contains(t, table, "| this app, PostgreSQL store, two instances (one database; N/2 and C/2 to each) | 300 |")
	assert.Contains(t, table, "PostgreSQL CPU µs/msg")
	assert.Equal(t, 3, strings.Count(table, "caddy logged 300 queued, 300 delivered, 0 deferred, 0 failed"), "the embedded and both PostgreSQL rows")
	assert.Contains(t, table, "| PostgreSQL per message | server CPU µs | round trips |")
	assert.Regexp(t, `\| PostgreSQL ×1 \| [1-9]\d* \| [1-9][\d.]* \| [1-9]\d* \| [1-9]\d* \| [1-9][\d.]* \| [1-9]\d* \| `, table, "every database cost measured, none zero")
	assert.Regexp(t, `\| PostgreSQL ×2 \| [1-9]\d* \| [1-9][\d.]* \| [1-9]\d* \| [1-9]\d* \| [1-9][\d.]* \| [1-9]\d* \| `, table)
	assert.NotContains(t, table, "closed during the measurement")
	// The cluster is stopped when the command ends.
	out, _ := exec.Command("ps", "-eo", "args").Output()
	assert.NotRegexp(t, `postgres -D \S*smtpbench-`, string(out), "a PostgreSQL of the command is still running")
}

func TestSmokeE2EDKIM(t *testing.T) {
	table := runBench(t, 4*time.Minute, "-dkim", "-n", "300", "-conns", "4", "-timeout", "1m")
	assert.Contains(t, table, "| this app, DKIM signing (rsa-sha256, 2048-bit key) | 300 |")
	assert.Contains(t, table, "| this app, DKIM signing (ed25519-sha256) | 300 |")
	assert.Regexp(t, `DKIM rsa-sha256: .* Every message signed: the check message's rsa-sha256 signature \(d=example.org, \d+ bytes\) verified .* caddy logged 300 queued, 300 delivered, 0 deferred, 0 failed, no "message not signed"`, table)
	assert.Regexp(t, `DKIM ed25519-sha256: .* Every message signed: the check message's ed25519-sha256 signature \(d=example.org, \d+ bytes\) verified .* caddy logged 300 queued, 300 delivered, 0 deferred, 0 failed, no "message not signed"`, table)
}

// TestCheckSigned: a signed row whose sink read no more than the unsigned
// row's (its messages were not signed) fails the run.
func TestCheckSigned(t *testing.T) {
	plain := e2eResult{result: result{delivered: 100}, sinkRead: 100 * 1300}
	for _, tc := range []struct {
		name    string
		read    int64
		wantErr bool
	}{
		{"every message signed", 100 * (1300 + 537), false},
		{"none signed", 100 * 1300, true},
		{"nine in ten signed", 100*1300 + 90*537, true},
		{"more than the signature", 100 * (1300 + 2*537), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			signed := e2eResult{result: result{delivered: 100}, sinkRead: tc.read, dkim: &dkimCheck{sigBytes: 537}}
			err := checkSigned("row", plain, signed)
			if tc.wantErr {
				require.Error(t, err)
				assert.Contains(t, err.Error(), "not every message was signed")
			} else {
				require.NoError(t, err)
			}
		})
	}
}

// TestDKIMRecordVerifies: the record made from a key in Caddy's storage
// form (PKCS #8 PEM) verifies a signature made with the key, and the
// signature field is found whole.
func TestDKIMRecordVerifies(t *testing.T) {
	for _, alg := range []string{"rsa", "ed25519"} {
		t.Run(alg, func(t *testing.T) {
			var signer crypto.Signer
			if alg == "rsa" {
				k, err := rsa.GenerateKey(rand.Reader, 2048)
				require.NoError(t, err)
				signer = k
			} else {
				_, k, err := ed25519.GenerateKey(rand.Reader)
				require.NoError(t, err)
				signer = k
			}
			der, err := x509.MarshalPKCS8PrivateKey(signer)
			require.NoError(t, err)
			file := filepath.Join(t.TempDir(), "key.pem")
			require.NoError(t, os.WriteFile(file, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600))
			record, err := dkimRecord(file)
			require.NoError(t, err)

			msg := "From: <a@example.org>\r\nTo: <b@example.test>\r\nSubject: x\r\n\r\nbody\r\n"
			var signed bytes.Buffer
			require.NoError(t, msgdkim.Sign(&signed, strings.NewReader(msg), &msgdkim.SignOptions{Domain: "example.org", Selector: "s1", Signer: signer}))
			fields := signatureFields(signed.Bytes())
			require.Len(t, fields, 1)
			assert.Equal(t, signed.Len()-len(msg), len(fields[0]), "the field is every byte the signature added")
			vs, err := msgdkim.VerifyWithOptions(bytes.NewReader(signed.Bytes()), &msgdkim.VerifyOptions{
				LookupTXT: func(string) ([]string, error) { return []string{record}, nil }})
			require.NoError(t, err)
			require.Len(t, vs, 1)
			require.NoError(t, vs[0].Err)

			tampered := bytes.Replace(signed.Bytes(), []byte("body"), []byte("bodx"), 1)
			vs, err = msgdkim.VerifyWithOptions(bytes.NewReader(tampered), &msgdkim.VerifyOptions{
				LookupTXT: func(string) ([]string, error) { return []string{record}, nil }})
			require.NoError(t, err)
			require.Len(t, vs, 1)
			assert.Error(t, vs[0].Err, "a changed body does not verify")
		})
	}
}

// TestTCPCounts: the kernel's counters of this process's connection to a
// loopback server (read as the -pg rows read Caddy's) give its requests
// and bytes, and so does the counting relay.
func TestTCPCounts(t *testing.T) {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		buf := make([]byte, 100)
		for {
			if _, err := io.ReadFull(c, buf); err != nil {
				return
			}
			if _, err := c.Write(make([]byte, 10)); err != nil {
				return
			}
		}
	}()
	relay, err := startPGRelay(ln.Addr().String())
	require.NoError(t, err)
	defer relay.close()

	// Three requests of 100 bytes, each answered by 10 bytes.
	exchange := func(t *testing.T, c net.Conn) {
		for range 3 {
			_, err := c.Write(make([]byte, 100))
			require.NoError(t, err)
			_, err = io.ReadFull(c, make([]byte, 10))
			require.NoError(t, err)
		}
	}
	port := relay.port()
	before, err := tcpConns(port, []int{os.Getpid()})
	require.NoError(t, err)
	assert.Empty(t, before)
	c, err := net.Dial("tcp4", hostPort(port))
	require.NoError(t, err)
	defer c.Close()
	exchange(t, c)
	after, err := tcpConns(port, []int{os.Getpid()})
	require.NoError(t, err)
	sum, conns, closed := connDelta(before, after)
	assert.Equal(t, connStats{bytesSent: 300, bytesReceived: 30, segsSent: 3, segsReceived: 3}, sum)
	assert.Equal(t, 1, conns)
	assert.Zero(t, closed)

	counts := relay.counts()
	assert.Equal(t, relayCounts{toServer: 300, fromServer: 30, clientBursts: 3, serverBursts: 3, connections: 1}, counts)

	// A connection gone by the second reading is reported as closed.
	require.NoError(t, c.Close())
	time.Sleep(100 * time.Millisecond)
	gone, err := tcpConns(port, []int{os.Getpid()})
	require.NoError(t, err)
	_, _, closed = connDelta(after, gone)
	assert.Equal(t, 1, closed)
}

func TestParseLSN(t *testing.T) {
	v, err := parseLSN("1/2A")
	require.NoError(t, err)
	assert.Equal(t, uint64(1<<32|0x2a), v)
	_, err = parseLSN("12")
	assert.ErrorContains(t, err, `WAL position "12"`)
}
