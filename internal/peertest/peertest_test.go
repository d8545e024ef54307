package peertest

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/smtp"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/seed7b014b84/caddy-smtp/internal/procstat"
)

// swaks runs swaks with a time limit and returns its output and error.
func swaks(t *testing.T, args ...string) (string, error) {
	t.Helper()
	Need(t, "swaks")
	out, err := runErr(30*time.Second, nil, append([]string{bin(t, "swaks")}, args...)...)
	return string(out), err
}

// ehlo connects to addr, says EHLO and returns the client, ready for more.
func ehlo(t *testing.T, addr string) *smtp.Client {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	require.NoError(t, err)
	require.NoError(t, c.SetDeadline(time.Now().Add(10*time.Second)))
	host, _, _ := net.SplitHostPort(addr)
	cl, err := smtp.NewClient(c, host)
	require.NoError(t, err)
	t.Cleanup(func() { _ = cl.Close() })
	require.NoError(t, cl.Hello("client.example.org"))
	return cl
}

func TestDecide(t *testing.T) {
	tests := []struct {
		name      string
		ci        string
		missing   []string
		skip      bool
		fatal     bool
		msgSubstr []string
	}{
		{name: "nothing missing", ci: "", missing: nil},
		{name: "nothing missing in CI", ci: "true", missing: nil},
		{name: "missing by hand skips", ci: "", missing: []string{"smtp-sink"}, skip: true,
			msgSubstr: []string{"peer smtp-sink not installed", "apt-get install postfix"}},
		{name: "missing in CI fails", ci: "true", missing: []string{"knotd"}, fatal: true,
			msgSubstr: []string{"peer knotd not installed", "apt-get install knot", "CI=true"}},
		{name: "CI other than true skips", ci: "1", missing: []string{"unbound"}, skip: true,
			msgSubstr: []string{"apt-get install unbound"}},
		{name: "several, packages once each", ci: "", missing: []string{"knotd", "keymgr", "/usr/lib/dovecot/lmtp"}, skip: true,
			msgSubstr: []string{"peers knotd, keymgr, /usr/lib/dovecot/lmtp not installed", "apt-get install dovecot-lmtpd knot"}},
		{name: "unknown binary named as package", ci: "", missing: []string{"frobnicate"}, skip: true,
			msgSubstr: []string{"apt-get install frobnicate"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			skip, fatal, msg := decide(tc.ci, tc.missing)
			assert.Equal(t, tc.skip, skip, "skip")
			assert.Equal(t, tc.fatal, fatal, "fatal")
			for _, s := range tc.msgSubstr {
				assert.Contains(t, msg, s)
			}
			if len(tc.missing) == 0 {
				assert.Empty(t, msg)
			}
		})
	}
}

func TestNeed(t *testing.T) {
	t.Run("missing binary skips when CI is unset", func(t *testing.T) {
		reached := false
		inner := t.Run("inner", func(t *testing.T) {
			t.Setenv("CI", "")
			Need(t, "peertest-no-such-binary-xyz")
			reached = true
		})
		assert.True(t, inner, "a skip is not a failure")
		assert.False(t, reached, "Need must stop the test")
	})
	t.Run("present binaries pass", func(t *testing.T) {
		Need(t, "sh", "/bin/sh")
	})
	t.Run("sbin directories are searched", func(t *testing.T) {
		t.Setenv("PATH", "/nonexistent")
		p, err := lookPath("ip")
		if err != nil {
			t.Skip("ip is not installed in an sbin directory here")
		}
		assert.Contains(t, p, "sbin")
	})
}

func TestFreePort(t *testing.T) {
	seen := map[int]bool{}
	for range 20 {
		p := FreePort(t)
		require.False(t, seen[p], "port %d handed out twice", p)
		seen[p] = true
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
		require.NoError(t, err)
		u, err := net.ListenPacket("udp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
		require.NoError(t, err)
		require.NoError(t, l.Close())
		require.NoError(t, u.Close())
	}
}

func TestCA(t *testing.T) {
	t.Parallel()
	ca := NewCA(t, "test CA")
	leaf := ca.Issue(t, "mx.example.test", "127.0.0.1", "::1")

	assert.Equal(t, []string{"mx.example.test"}, leaf.X509.DNSNames)
	require.Len(t, leaf.X509.IPAddresses, 2)
	assert.True(t, leaf.X509.IPAddresses[0].Equal(net.ParseIP("127.0.0.1")))

	for _, name := range []string{"mx.example.test", "127.0.0.1", "::1"} {
		_, err := leaf.X509.Verify(x509.VerifyOptions{Roots: ca.Pool(), DNSName: name})
		assert.NoError(t, err, name)
	}
	_, err := leaf.X509.Verify(x509.VerifyOptions{Roots: ca.Pool(), DNSName: "other.example.test"})
	assert.Error(t, err)
	_, err = leaf.X509.Verify(x509.VerifyOptions{Roots: NewCA(t, "other CA").Pool(), DNSName: "mx.example.test"})
	assert.Error(t, err, "a leaf must not verify under another CA")

	// DER and SPKI are what DANE records hash.
	c, err := x509.ParseCertificate(leaf.DER)
	require.NoError(t, err)
	assert.Equal(t, leaf.SPKI, c.RawSubjectPublicKeyInfo)
	_, err = x509.ParsePKIXPublicKey(leaf.SPKI)
	require.NoError(t, err)

	// The files hold what they say.
	for _, f := range []string{ca.CertFile, leaf.CertFile, leaf.KeyFile, leaf.ChainFile} {
		st, err := os.Stat(f)
		require.NoError(t, err)
		assert.Equal(t, os.FileMode(0o644), st.Mode().Perm(), f)
	}
	pair, err := tls.LoadX509KeyPair(leaf.ChainFile, leaf.KeyFile)
	require.NoError(t, err)
	require.Len(t, pair.Certificate, 2, "chain file = leaf + CA")
	assert.Equal(t, leaf.DER, pair.Certificate[0])
	assert.Equal(t, ca.Cert.Raw, pair.Certificate[1])

	// A real handshake with the in-memory certificate, over loopback TCP
	// (net.Pipe has no buffer: close_notify would block until a timeout).
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{leaf.Cert}})
	require.NoError(t, err)
	defer ln.Close()
	errc := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			errc <- err
			return
		}
		defer c.Close()
		errc <- c.(*tls.Conn).Handshake()
	}()
	c2, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{RootCAs: ca.Pool(), ServerName: "127.0.0.1"})
	require.NoError(t, err)
	assert.Equal(t, leaf.DER, c2.ConnectionState().PeerCertificates[0].Raw)
	_ = c2.Close()
	require.NoError(t, <-errc)
}

func TestParseSinkDump(t *testing.T) {
	dump := "X-Client-Addr: ipv6:::1\n" +
		"X-Client-Proto: ESMTP\n" +
		"X-Mail-Args: <> SIZE=42 BODY=8BITMIME\n" +
		"X-Rcpt-Args: <b@example.test> NOTIFY=NEVER\n" +
		"X-Rcpt-Args: <c@example.test>\n" +
		"Received: from [::1] ([::1])\n" +
		"\tby smtp-sink (smtp-sink) with ESMTP id 0bcd30af;\n" +
		"\tSun, 22 Nov 2026 05:23:39 +0000 (UTC)\n" +
		"Subject: hi\n" +
		"From: a@example.org\n" +
		"\n" +
		"line 1\n" +
		"\n" +
		"line 3\n" +
		"\n"
	m, err := ParseSinkDump([]byte(dump))
	require.NoError(t, err)
	assert.Equal(t, "::1", m.ClientAddr)
	assert.Equal(t, "ESMTP", m.Proto)
	assert.Equal(t, "", m.Helo)
	assert.Equal(t, "", m.From)
	assert.Equal(t, "<> SIZE=42 BODY=8BITMIME", m.MailArgs)
	assert.Equal(t, []string{"b@example.test", "c@example.test"}, m.To)
	assert.Equal(t, []string{"<b@example.test> NOTIFY=NEVER", "<c@example.test>"}, m.RcptArgs)
	assert.Equal(t, "Subject: hi\nFrom: a@example.org\n", string(m.Header))
	assert.Equal(t, "line 1\n\nline 3\n", string(m.Body))
	assert.Equal(t, "Subject: hi\nFrom: a@example.org\n\nline 1\n\nline 3\n", string(m.Raw))

	_, err = ParseSinkDump([]byte("Subject: not a dump\n\nbody\n"))
	assert.Error(t, err)
}

func TestSplitMessage(t *testing.T) {
	tests := []struct{ raw, header, body string }{
		{"A: 1\r\nB: 2\r\n\r\nbody\r\n", "A: 1\r\nB: 2\r\n", "body\r\n"},
		{"A: 1\n\nbody\n\nmore\n", "A: 1\n", "body\n\nmore\n"},
		{"A: 1\n", "A: 1\n", ""},
		{"\nbody\n", "", "body\n"},
	}
	for _, tc := range tests {
		h, b := SplitMessage([]byte(tc.raw))
		assert.Equal(t, tc.header, string(h), "%q", tc.raw)
		assert.Equal(t, tc.body, string(b), "%q", tc.raw)
	}
}

func TestSink(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		opts   SinkOptions
		ipv6   bool
		flags  []string
		proto  string
		client string // expected client address; "" = the sink's own
	}{
		{name: "smtp on 127.0.0.1", opts: SinkOptions{}, proto: "ESMTP"},
		{name: "smtp on another 127/8 address from a third", opts: SinkOptions{Addr: "127.0.0.7"},
			flags: []string{"--local-interface", "127.0.0.9"}, proto: "ESMTP", client: "127.0.0.9"},
		{name: "smtp on ::1", opts: SinkOptions{Addr: "::1"}, ipv6: true, proto: "ESMTP"},
		{name: "lmtp", opts: SinkOptions{LMTP: true}, flags: []string{"--protocol", "LMTP"}, proto: "LMTP"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if tc.ipv6 && !haveIPv6Loopback() {
				t.Skip("no IPv6 loopback")
			}
			s := StartSink(t, tc.opts)
			args := append([]string{"--server", s.Host, "--port", strconv.Itoa(s.Port),
				"--from", "a@example.org", "--to", "b@example.test,c@example.test",
				"--helo", "client.example.org", "--body", "hello sink"}, tc.flags...)
			out, err := swaks(t, args...)
			require.NoError(t, err, out)

			msgs := s.WaitMessages(t, 1, 5*time.Second)
			require.Len(t, msgs, 1)
			m := msgs[0]
			assert.Equal(t, "a@example.org", m.From)
			assert.Equal(t, []string{"b@example.test", "c@example.test"}, m.To)
			client := tc.client
			if client == "" {
				client = s.Host
			}
			assert.Equal(t, client, m.ClientAddr, "the source address the sink saw")
			assert.Equal(t, "client.example.org", m.Helo)
			assert.Equal(t, tc.proto, m.Proto)
			assert.Contains(t, string(m.Header), "From: a@example.org\n")
			assert.True(t, strings.HasPrefix(string(m.Body), "hello sink\n"), "%q", m.Body)
			assert.FileExists(t, m.File)
		})
	}

	t.Run("soft reject at RCPT makes swaks fail", func(t *testing.T) {
		t.Parallel()
		s := StartSink(t, SinkOptions{Flags: []string{"-r", "rcpt"}})
		out, err := swaks(t, "--server", s.Addr, "--from", "a@example.org", "--to", "b@example.test")
		var ee *exec.ExitError
		require.True(t, errors.As(err, &ee), "swaks must exit non-zero: %v\n%s", err, out)
		assert.Contains(t, out, "450 4.3.0")
		time.Sleep(100 * time.Millisecond)
		assert.Empty(t, s.Messages(t), "no message may be stored")
	})

	t.Run("several messages in order", func(t *testing.T) {
		t.Parallel()
		s := StartSink(t, SinkOptions{})
		for i := range 3 {
			out, err := swaks(t, "--server", s.Addr, "--from", fmt.Sprintf("s%d@example.org", i),
				"--to", "b@example.test", "--body", fmt.Sprintf("message %d", i))
			require.NoError(t, err, out)
		}
		msgs := s.WaitMessages(t, 3, 5*time.Second)
		require.Len(t, msgs, 3)
		for i, m := range msgs {
			assert.Equal(t, fmt.Sprintf("s%d@example.org", i), m.From)
		}
	})

	t.Run("in a network namespace", func(t *testing.T) {
		t.Parallel()
		ns := NewNetns(t)
		s := StartSink(t, SinkOptions{Netns: ns, Addr: "127.0.0.1"})
		// Not reachable from the host namespace (nothing of ours there)...
		// ...but reachable from inside.
		c, err := DialNetns(ns, "tcp", s.Addr, 5*time.Second)
		require.NoError(t, err)
		line, err := bufio.NewReader(c).ReadString('\n')
		require.NoError(t, err)
		assert.True(t, strings.HasPrefix(line, "220 "), line)
		_ = c.Close()

		out, err := runErr(30*time.Second, nil, bin(t, "ip"), "netns", "exec", ns, bin(t, "swaks"),
			"--server", s.Addr, "--from", "a@example.org", "--to", "b@example.test", "--body", "from inside")
		require.NoError(t, err, string(out))
		msgs := s.WaitMessages(t, 1, 5*time.Second)
		assert.Equal(t, "127.0.0.1", msgs[0].ClientAddr)
		assert.Contains(t, string(msgs[0].Body), "from inside")
	})
}

func TestPostfix(t *testing.T) {
	t.Parallel()
	ca := NewCA(t, "postfix test CA")
	p := StartPostfix(t, PostfixOptions{CA: ca, Mailbox: true})

	t.Run("EHLO advertises", func(t *testing.T) {
		cl := ehlo(t, p.SMTPAddr)
		for _, ext := range []string{"PIPELINING", "CHUNKING", "SMTPUTF8", "STARTTLS", "8BITMIME", "SIZE"} {
			ok, _ := cl.Extension(ext)
			assert.True(t, ok, "%s not advertised", ext)
		}
		ok, _ := cl.Extension("AUTH")
		assert.False(t, ok, "AUTH advertised without Users")
		// STARTTLS verifies under the CA for each of the certificate's names.
		require.NoError(t, cl.StartTLS(&tls.Config{RootCAs: ca.Pool(), ServerName: "mx.example.test"}))
		st, ok := cl.TLSConnectionState()
		require.True(t, ok)
		assert.Equal(t, p.Leaf.DER, st.PeerCertificates[0].Raw)
		_ = cl.Quit()
	})

	t.Run("swaks STARTTLS with verification", func(t *testing.T) {
		out, err := swaks(t, "--server", p.SMTPAddr, "--tls", "--tls-verify", "--tls-ca-path", ca.CertFile,
			"--from", "a@example.org", "--to", "starttls@example.test", "--body", "via starttls")
		require.NoError(t, err, out)
		assert.Contains(t, out, "TLS started")
	})

	t.Run("swaks STARTTLS under another CA fails", func(t *testing.T) {
		other := NewCA(t, "other CA")
		out, err := swaks(t, "--server", p.SMTPAddr, "--tls", "--tls-verify", "--tls-ca-path", other.CertFile,
			"--from", "a@example.org", "--to", "never@example.test")
		require.Error(t, err, out)
	})

	t.Run("swaks implicit TLS", func(t *testing.T) {
		out, err := swaks(t, "--server", p.SMTPSAddr, "--tlsc", "--tls-verify", "--tls-ca-path", ca.CertFile,
			"--from", "a@example.org", "--to", "implicit@example.test", "--body", "via smtps")
		require.NoError(t, err, out)
	})

	t.Run("other domains are refused", func(t *testing.T) {
		out, err := swaks(t, "--server", p.SMTPAddr, "--from", "a@example.org", "--to", "x@elsewhere.test")
		require.Error(t, err, out)
		assert.Contains(t, out, "554 5.7.1")
	})

	t.Run("bodies arrive byte for byte", func(t *testing.T) {
		body := "first line\r\n.leading dot\r\nsmörgåsbord 8bit\r\n\r\nlast line"
		out, err := swaks(t, "--server", p.SMTPAddr, "--from", "a@example.org", "--to", "body@example.test",
			"--data", "Subject: exact\r\nFrom: a@example.org\r\n\r\n"+body)
		require.NoError(t, err, out)
		found := waitFor(t, 10*time.Second, func() []byte {
			for _, m := range p.Messages(t) {
				if strings.Contains(string(m), "Delivered-To: body@example.test\n") {
					return m
				}
			}
			return nil
		})
		h, b := SplitMessage(found)
		assert.Contains(t, string(h), "Subject: exact\n")
		assert.Contains(t, string(h), "Return-Path: <a@example.org>\n")
		// Postfix stores LF line endings and undoes dot-stuffing.
		assert.Equal(t, strings.ReplaceAll(body, "\r\n", "\n")+"\n", string(b))
	})

	t.Run("BDAT with SMTPUTF8 is accepted and stored", func(t *testing.T) {
		c, err := net.DialTimeout("tcp", p.SMTPAddr, 5*time.Second)
		require.NoError(t, err)
		defer c.Close()
		require.NoError(t, c.SetDeadline(time.Now().Add(10*time.Second)))
		r := bufio.NewReader(c)
		reply := func() string {
			var last string
			for {
				l, err := r.ReadString('\n')
				require.NoError(t, err)
				last = l
				if len(l) < 4 || l[3] != '-' {
					return strings.TrimSpace(last)
				}
			}
		}
		send := func(cmd string) string {
			_, err := c.Write([]byte(cmd))
			require.NoError(t, err)
			return reply()
		}
		assert.True(t, strings.HasPrefix(reply(), "220 "))
		assert.True(t, strings.HasPrefix(send("EHLO client.example.org\r\n"), "250 "))
		assert.True(t, strings.HasPrefix(send("MAIL FROM:<jörg@example.org> SMTPUTF8\r\n"), "250 "))
		assert.True(t, strings.HasPrefix(send("RCPT TO:<åsa@example.test>\r\n"), "250 "))
		msg := "Subject: chunked\r\nFrom: jörg@example.org\r\n\r\nchunk one, "
		assert.True(t, strings.HasPrefix(send(fmt.Sprintf("BDAT %d\r\n%s", len(msg), msg)), "250 "))
		last := "chunk two\r\n"
		assert.True(t, strings.HasPrefix(send(fmt.Sprintf("BDAT %d LAST\r\n%s", len(last), last)), "250 "))
		send("QUIT\r\n")
		found := waitFor(t, 10*time.Second, func() []byte {
			for _, m := range p.Messages(t) {
				if strings.Contains(string(m), "Delivered-To: åsa@example.test\n") {
					return m
				}
			}
			return nil
		})
		_, b := SplitMessage(found)
		assert.Equal(t, "chunk one, chunk two\n", string(b))
		assert.Contains(t, string(found), "Return-Path: <jörg@example.org>\n")
	})

	t.Run("all messages are stored", func(t *testing.T) {
		msgs := p.WaitMessages(t, 4, 10*time.Second)
		var to []string
		for _, m := range msgs {
			for _, l := range strings.Split(string(m), "\n") {
				if v, ok := strings.CutPrefix(l, "Delivered-To: "); ok {
					to = append(to, v)
				}
			}
		}
		assert.Subset(t, to, []string{"starttls@example.test", "implicit@example.test", "body@example.test"})
		assert.Contains(t, p.Log(), "status=sent (delivered to maildir)")
	})
}

func TestPostfixOptions(t *testing.T) {
	t.Parallel()
	p := StartPostfix(t, PostfixOptions{
		NoTLS:            true,
		MessageSizeLimit: 2000,
		Domains:          []string{"a.test", "b.test"},
		Extra:            map[string]string{"smtpd_banner": "$myhostname ESMTP peertest-extra"},
	})
	cl := ehlo(t, p.SMTPAddr)
	ok, _ := cl.Extension("STARTTLS")
	assert.False(t, ok, "NoTLS must turn STARTTLS off")
	ok, size := cl.Extension("SIZE")
	assert.True(t, ok)
	assert.Equal(t, "2000", size)
	for _, ext := range []string{"PIPELINING", "CHUNKING", "SMTPUTF8"} {
		ok, _ := cl.Extension(ext)
		assert.True(t, ok, ext)
	}
	require.NoError(t, cl.Mail("a@example.org"))
	require.NoError(t, cl.Rcpt("x@b.test"), "second domain accepted")
	assert.Error(t, cl.Rcpt("x@example.test"), "example.test is not ours here")
	_ = cl.Quit()

	c, err := net.DialTimeout("tcp", p.SMTPAddr, 5*time.Second)
	require.NoError(t, err)
	require.NoError(t, c.SetDeadline(time.Now().Add(5*time.Second)))
	banner, err := bufio.NewReader(c).ReadString('\n')
	require.NoError(t, err)
	_ = c.Close()
	assert.Contains(t, banner, "peertest-extra", "Extra applied")

	// The implicit TLS listener keeps TLS.
	out, err := swaks(t, "--server", p.SMTPSAddr, "--tlsc", "--tls-verify", "--tls-ca-path", p.CA.CertFile,
		"--from", "a@example.org", "--to", "y@a.test")
	require.NoError(t, err, out)
}

func TestDovecot(t *testing.T) {
	t.Parallel()
	d := StartDovecot(t, DovecotOptions{Users: []string{"alice@foobar.net", "bob@foobar.net"}})

	t.Run("known user gets the message", func(t *testing.T) {
		out, err := swaks(t, "--protocol", "LMTP", "--server", d.LMTPAddr, "--tls", "--tls-verify",
			"--tls-ca-path", d.CA.CertFile, "--from", "a@example.org", "--to", "alice@foobar.net",
			"--body", "hello alice")
		require.NoError(t, err, out)
		msgs := d.Messages(t, "alice@foobar.net")
		require.Len(t, msgs, 1, "LMTP stores before it replies")
		h, b := SplitMessage(msgs[0])
		assert.Contains(t, string(h), "Delivered-To: alice@foobar.net\n")
		assert.True(t, strings.HasPrefix(string(b), "hello alice\n"), "%q", b)
		assert.Empty(t, d.Messages(t, "bob@foobar.net"))
	})

	t.Run("unknown user is refused at RCPT", func(t *testing.T) {
		out, err := swaks(t, "--protocol", "LMTP", "--server", d.LMTPAddr, "--from", "a@example.org",
			"--to", "mallory@foobar.net")
		require.Error(t, err, out)
		assert.Contains(t, out, "550 5.1.1")
	})

	t.Run("over IPv6 with per-recipient replies", func(t *testing.T) {
		if d.LMTPAddr6 == "" {
			t.Skip("no IPv6 loopback")
		}
		out, err := swaks(t, "--protocol", "LMTP", "--server", "::1", "--port", strconv.Itoa(d.Port),
			"--from", "a@example.org", "--to", "bob@foobar.net,alice@foobar.net")
		require.NoError(t, err, out)
		assert.Len(t, d.WaitMessages(t, "bob@foobar.net", 1, 5*time.Second), 1)
		assert.Len(t, d.Messages(t, "alice@foobar.net"), 2)
		assert.Contains(t, d.Log(), "saved mail to INBOX")
	})

	t.Run("EHLO-level features", func(t *testing.T) {
		c, err := net.DialTimeout("tcp", d.LMTPAddr, 5*time.Second)
		require.NoError(t, err)
		defer c.Close()
		require.NoError(t, c.SetDeadline(time.Now().Add(5*time.Second)))
		r := bufio.NewReader(c)
		_, err = r.ReadString('\n')
		require.NoError(t, err)
		_, err = fmt.Fprintf(c, "LHLO client.example.org\r\n")
		require.NoError(t, err)
		var lines []string
		for {
			l, err := r.ReadString('\n')
			require.NoError(t, err)
			lines = append(lines, strings.TrimSpace(l))
			if len(l) > 3 && l[3] == ' ' {
				break
			}
		}
		joined := strings.Join(lines, "\n")
		for _, ext := range []string{"PIPELINING", "CHUNKING", "STARTTLS", "8BITMIME"} {
			assert.Contains(t, joined, ext)
		}
	})
}

func TestKnotAndUnbound(t *testing.T) {
	t.Parallel()
	k := StartKnot(t, KnotOptions{Zones: []Zone{
		{Name: "example.test", Signed: true, Records: `
@    MX 10 mx1
@    MX 20 mx2.example.test.
mx1  A 127.0.0.1
mx2  AAAA ::1
`},
		{Name: "unsigned.test.", Records: "@ MX 10 mx\nmx A 127.0.0.2\n"},
	}})

	t.Run("Knot answers authoritatively over UDP and TCP", func(t *testing.T) {
		m := Query(t, k.Addr, "example.test", dns.TypeMX, true)
		require.Equal(t, dns.RcodeSuccess, m.Rcode)
		assert.True(t, m.Authoritative)
		assert.ElementsMatch(t, []string{"10 mx1.example.test.", "20 mx2.example.test."}, mxs(m))
		assert.True(t, hasRRSIG(m, dns.TypeMX), "signed zone: MX carries an RRSIG")

		m = Query(t, k.Addr, "unsigned.test", dns.TypeMX, true)
		assert.Equal(t, []string{"10 mx.unsigned.test."}, mxs(m))
		assert.False(t, hasRRSIG(m, dns.TypeMX))

		q := new(dns.Msg)
		q.SetQuestion("mx1.example.test.", dns.TypeA)
		r, _, err := (&dns.Client{Net: "tcp", Timeout: 3 * time.Second}).Exchange(q, k.Addr)
		require.NoError(t, err)
		require.Len(t, r.Answer, 1)
		assert.Equal(t, "127.0.0.1", r.Answer[0].(*dns.A).A.String())

		if k.Addr6 != "" {
			m = Query(t, k.Addr6, "mx2.example.test", dns.TypeAAAA, false)
			require.Len(t, m.Answer, 1)
			assert.Equal(t, "::1", m.Answer[0].(*dns.AAAA).AAAA.String())
		}
	})

	t.Run("DS is a SHA-256 DS of the zone's KSK", func(t *testing.T) {
		ds := k.DS(t, "example.test.")
		rr, err := dns.NewRR(ds)
		require.NoError(t, err)
		d, ok := rr.(*dns.DS)
		require.True(t, ok)
		assert.Equal(t, uint8(dns.SHA256), d.DigestType)
		assert.Equal(t, uint8(dns.ECDSAP256SHA256), d.Algorithm)
		m := Query(t, k.Addr, "example.test", dns.TypeDNSKEY, true)
		var match bool
		for _, rr := range m.Answer {
			if key, ok := rr.(*dns.DNSKEY); ok && key.KeyTag() == d.KeyTag {
				match = strings.EqualFold(key.ToDS(dns.SHA256).Digest, d.Digest)
			}
		}
		assert.True(t, match, "DS %s matches no DNSKEY", ds)
	})

	u := StartUnbound(t, UnboundOptions{Knot: k})

	t.Run("unbound validates", func(t *testing.T) {
		tests := []struct {
			name  string
			qtype uint16
			ad    bool
			rcode int
		}{
			{"example.test", dns.TypeMX, true, dns.RcodeSuccess},
			{"mx1.example.test", dns.TypeA, true, dns.RcodeSuccess},
			{"nothere.example.test", dns.TypeA, true, dns.RcodeNameError},
			{"unsigned.test", dns.TypeMX, false, dns.RcodeSuccess},
			{"www.example.com", dns.TypeA, false, dns.RcodeRefused},
			{"other.test", dns.TypeA, false, dns.RcodeRefused},
		}
		for _, tc := range tests {
			m := Query(t, u.Addr, tc.name, tc.qtype, true)
			assert.Equal(t, dns.RcodeToString[tc.rcode], dns.RcodeToString[m.Rcode], tc.name)
			assert.Equal(t, tc.ad, m.AuthenticatedData, "AD for %s", tc.name)
			if tc.rcode != dns.RcodeRefused { // refusals come from a local zone, with AA
				assert.False(t, m.Authoritative, "a resolved answer is not authoritative: %s", tc.name)
			}
		}
		m := Query(t, u.Addr, "example.test", dns.TypeMX, true)
		assert.ElementsMatch(t, []string{"10 mx1.example.test.", "20 mx2.example.test."}, mxs(m))
	})

	t.Run("a wrong trust anchor makes the zone bogus", func(t *testing.T) {
		ds := k.DS(t, "example.test")
		f := strings.Fields(ds)
		// Same key tag and algorithm, different digest.
		f[5] = strings.Repeat("ab", 32)
		bogus := StartUnbound(t, UnboundOptions{Knot: k, TrustAnchors: []string{strings.Join(f, " ")}})
		m := Query(t, bogus.Addr, "example.test", dns.TypeMX, true)
		assert.Equal(t, "SERVFAIL", dns.RcodeToString[m.Rcode])
		m = Query(t, bogus.Addr, "unsigned.test", dns.TypeMX, true)
		assert.Equal(t, "NOERROR", dns.RcodeToString[m.Rcode], "unsigned zone unaffected")
		assert.Contains(t, bogus.Log(), "validation failure")
	})

	t.Run("Reload changes the records", func(t *testing.T) {
		for _, zone := range []string{"example.test", "unsigned.test"} {
			before := Query(t, k.Addr, zone, dns.TypeSOA, false).Answer[0].(*dns.SOA).Serial
			k.Reload(t, zone, "@ MX 5 newmx\nnewmx A 127.0.0.3\n")
			m := Query(t, k.Addr, zone, dns.TypeMX, true)
			assert.Equal(t, []string{"5 newmx." + zone + "."}, mxs(m))
			assert.Equal(t, zone == "example.test", hasRRSIG(m, dns.TypeMX))
			after := Query(t, k.Addr, zone, dns.TypeSOA, false).Answer[0].(*dns.SOA).Serial
			assert.Greater(t, after, before)
		}
		// Twice in a row on the signed zone.
		k.Reload(t, "example.test", "@ MX 1 again\nagain A 127.0.0.4\n")
		assert.Equal(t, []string{"1 again.example.test."}, mxs(Query(t, k.Addr, "example.test", dns.TypeMX, false)))
		// A fresh resolver validates the re-signed zone.
		u2 := StartUnbound(t, UnboundOptions{Knot: k, Zones: []string{"example.test"}})
		m := Query(t, u2.Addr, "again.example.test", dns.TypeA, true)
		assert.True(t, m.AuthenticatedData)
		assert.Equal(t, "REFUSED", dns.RcodeToString[Query(t, u2.Addr, "unsigned.test", dns.TypeMX, true).Rcode],
			"only the listed zones are known")
	})
}

// waitFor polls f every 20 ms until it returns non-nil, failing the test
// after timeout.
func waitFor(t *testing.T, timeout time.Duration, f func() []byte) []byte {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		if b := f(); b != nil {
			return b
		}
		if time.Now().After(deadline) {
			t.Fatalf("condition not met after %v", timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// mxs returns the MX records of an answer as "pref host".
func mxs(m *dns.Msg) []string {
	var out []string
	for _, rr := range m.Answer {
		if mx, ok := rr.(*dns.MX); ok {
			out = append(out, fmt.Sprintf("%d %s", mx.Preference, mx.Mx))
		}
	}
	return out
}

// TestCleanupLeavesNothing starts peers in a subtest and checks, after the
// subtest's cleanup, that no process of theirs is left, their ports are
// free and their directories are gone.
func TestCleanupLeavesNothing(t *testing.T) {
	t.Parallel()
	type left struct {
		name string
		pgid int
		dir  string
		addr string
	}
	var peers []left
	var ns string
	t.Run("start", func(t *testing.T) {
		ns = NewNetns(t)
		s := StartSink(t, SinkOptions{})
		p := StartPostfix(t, PostfixOptions{})
		pa := StartPostfix(t, PostfixOptions{Users: map[string]string{"u": "p"}})
		d := StartDovecot(t, DovecotOptions{})
		sn := StartSink(t, SinkOptions{Netns: ns})
		// Let Postfix and Dovecot fork some children to be cleaned up.
		require.NoError(t, readBanner(context.Background(), "", p.SMTPAddr))
		require.NoError(t, readBanner(context.Background(), "", d.LMTPAddr))
		peers = []left{
			{"sink", s.proc.cmd.Process.Pid, s.DumpDir, s.Addr},
			{"postfix", p.proc.cmd.Process.Pid, p.Dir, p.SMTPAddr},
			{"postfix with AUTH", pa.proc.cmd.Process.Pid, pa.Dir, pa.SMTPAddr},
			{"postfix's dovecot auth", pa.sasl.proc.cmd.Process.Pid, pa.Dir, ""},
			{"dovecot", d.proc.cmd.Process.Pid, d.Dir, d.LMTPAddr},
			{"netns sink", sn.proc.cmd.Process.Pid, sn.DumpDir, ""},
		}
	})
	require.Len(t, peers, 6)
	for _, p := range peers {
		assert.Empty(t, procstat.GroupMembers(p.pgid), "%s: process group %d still alive", p.name, p.pgid)
		assert.NoDirExists(t, p.dir, p.name)
		if p.addr != "" {
			l, err := net.Listen("tcp", p.addr)
			if assert.NoError(t, err, "%s: port still taken", p.name) {
				_ = l.Close()
			}
		}
	}
	_, err := os.Stat("/var/run/netns/" + ns)
	assert.True(t, os.IsNotExist(err), "netns %s still exists", ns)
}

// TestReadyFailureShowsLog checks that a peer that cannot start fails the
// test with its log, both when it exits at once (a Knot configuration
// that does not parse) and when it runs but never gets ready.
func TestReadyFailureShowsLog(t *testing.T) {
	t.Parallel()
	t.Run("exits at once", func(t *testing.T) {
		Need(t, "knotd")
		ft := &fakeT{TB: t}
		ft.do(func() {
			StartKnot(ft, KnotOptions{Zones: []Zone{{Name: "bad zone.test"}}})
		})
		require.True(t, ft.failed, "StartKnot must fail")
		assert.Contains(t, ft.msg, "exited before it was ready")
		assert.Contains(t, ft.msg, "knot.log", "the message carries knotd's log")
		assert.Contains(t, strings.ToLower(ft.msg), "error", "knotd's own complaint is shown")
	})
	t.Run("never ready", func(t *testing.T) {
		ft := &fakeT{TB: t}
		dir := instanceDir(t, "fake")
		ft.do(func() {
			p := startProc(ft, "sleeper", dir+"/out.log", 0, nil, nil, "/bin/sh", "-c", "echo sleeper says hello; exec sleep 30")
			p.readyTimeout = 300 * time.Millisecond
			p.waitReady(ft, func(context.Context) error { return errors.New("no banner") })
		})
		require.True(t, ft.failed)
		assert.Contains(t, ft.msg, "not ready after 300ms: no banner")
		assert.Contains(t, ft.msg, "sleeper says hello")
	})
}

// fakeT is a testing.TB whose Fatal records the message and stops the
// goroutine, and whose cleanups run when asked, so that a failing Start
// can be observed without failing the real test.
type fakeT struct {
	testing.TB
	failed   bool
	msg      string
	cleanups []func()
}

func (f *fakeT) Helper() {}
func (f *fakeT) Fatalf(format string, args ...any) {
	f.failed = true
	f.msg = fmt.Sprintf(format, args...)
	panic(f)
}
func (f *fakeT) Fatal(args ...any) { f.Fatalf("%s", fmt.Sprint(args...)) }
func (f *fakeT) Errorf(format string, args ...any) {
	f.failed = true
	f.msg += fmt.Sprintf(format, args...)
}
func (f *fakeT) Failed() bool        { return f.failed }
func (f *fakeT) Logf(string, ...any) {}
func (f *fakeT) Cleanup(fn func())   { f.cleanups = append(f.cleanups, fn) }

// do runs f as a test body would run: a Fatal ends it, then the cleanups
// run.
func (f *fakeT) do(body func()) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer func() {
			if r := recover(); r != nil && r != any(f) {
				panic(r)
			}
		}()
		body()
	}()
	<-done
	f.runCleanups()
}

func (f *fakeT) runCleanups() {
	for i := len(f.cleanups) - 1; i >= 0; i-- {
		f.cleanups[i]()
	}
}
