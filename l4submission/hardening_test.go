package l4submission

import (
	"bufio"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// rawClient is an SMTP client that sends exactly the bytes a test gives
// it, for what no well-behaved client sends.
type rawClient struct {
	t    *testing.T
	conn net.Conn
	rd   *bufio.Reader
}

// dialRaw connects to a port of the lab from the loopback address local
// ("" for the kernel's choice), and returns the client; the greeting is
// left unread.
func dialRaw(t *testing.T, local string, port int) *rawClient {
	t.Helper()
	c, err := dialFrom(local, port)
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })
	require.NoError(t, c.SetDeadline(time.Now().Add(30*time.Second)))
	return &rawClient{t: t, conn: c, rd: bufio.NewReader(c)}
}

func dialFrom(local string, port int) (net.Conn, error) {
	d := net.Dialer{Timeout: 10 * time.Second}
	if local != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(local)}
	}
	return d.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
}

// send writes s as it is. A write error is not a failure: the server may
// have closed the connection, which the next read shows.
func (c *rawClient) send(s string) {
	_, _ = c.conn.Write([]byte(s))
}

// reply reads one reply, all its lines, and returns its last line
// ("250 2.0.0 ..."), or "" and the error when the connection ended first.
func (c *rawClient) reply() (string, error) {
	for {
		line, err := c.rd.ReadString('\n')
		if err != nil {
			return "", err
		}
		line = strings.TrimRight(line, "\r\n")
		if len(line) < 4 || line[3] != '-' {
			return line, nil
		}
	}
}

// expect reads one reply and checks that it starts with prefix.
func (c *rawClient) expect(prefix string) string {
	c.t.Helper()
	r, err := c.reply()
	require.NoError(c.t, err, "waiting for %q", prefix)
	require.True(c.t, strings.HasPrefix(r, prefix), "want %q, got %q", prefix, r)
	return r
}

// expectClosed checks that the server closed the connection without
// another reply.
func (c *rawClient) expectClosed() {
	c.t.Helper()
	r, err := c.reply()
	require.Error(c.t, err, "got %q instead of the end of the connection", r)
	assert.True(c.t, errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET), "%v", err)
}

// greet reads the greeting and says EHLO.
func (c *rawClient) greet() {
	c.t.Helper()
	c.expect("220 ")
	c.send("EHLO client.test\r\n")
	c.expect("250 ")
}

// envelope starts a transaction from sender@example.org to rcpt.
func (c *rawClient) envelope(rcpt string) {
	c.t.Helper()
	c.send("MAIL FROM:<sender@example.org>\r\n")
	c.expect("250 ")
	c.send("RCPT TO:<" + rcpt + ">\r\n")
	c.expect("250 ")
}

// noMessage waits a little and checks that the sink got no message for
// any of rcpts.
func (l *lab) noMessage(t *testing.T, rcpts ...string) {
	t.Helper()
	time.Sleep(500 * time.Millisecond)
	for _, r := range rcpts {
		assert.Empty(t, messagesTo(t, l.good, r), "a message reached <%s>", r)
	}
}

// smuggled is what a client sends after the data was cut: a whole second
// transaction, which must never be read as commands.
func smuggled(rcpt string) string {
	return "MAIL FROM:<evil@example.org>\r\nRCPT TO:<" + rcpt + ">\r\nDATA\r\n" +
		"Subject: smuggled\r\n\r\nsmuggled\r\n.\r\nQUIT\r\n"
}

func TestSmuggling(t *testing.T) {
	l := startLab(t)
	// The short server's read timeout is a second.
	const pause = 1500 * time.Millisecond

	t.Run("DATA cut by the read timeout", func(t *testing.T) {
		c := dialRaw(t, "", l.short)
		c.greet()
		c.envelope("cut-data@good.test")
		c.send("DATA\r\n")
		c.expect("354 ")
		c.send("Subject: cut\r\n\r\nthe start of a message\r\n")
		time.Sleep(pause)
		c.send("the rest\r\n.\r\n" + smuggled("smuggled-data@good.test"))
		r := c.expect("421 4.4.2 ")
		assert.Contains(t, r, "message not received whole (timed out waiting for the client)")
		c.expectClosed()
		l.noMessage(t, "cut-data@good.test", "smuggled-data@good.test")
	})

	t.Run("BDAT chunk cut by the read timeout", func(t *testing.T) {
		c := dialRaw(t, "", l.short)
		c.greet()
		c.envelope("cut-bdat@good.test")
		c.send("BDAT 100 LAST\r\n" + strings.Repeat("a", 40))
		time.Sleep(pause)
		c.send(strings.Repeat("b", 58) + "\r\n" + smuggled("smuggled-bdat@good.test"))
		r := c.expect("421 4.4.2 ")
		assert.Contains(t, r, "message not received whole (timed out waiting for the client)")
		c.expectClosed()
		l.noMessage(t, "cut-bdat@good.test", "smuggled-bdat@good.test")
	})

	t.Run("last BDAT chunk cut by the end of the connection", func(t *testing.T) {
		c := dialRaw(t, "", l.short)
		c.greet()
		c.envelope("cut-last@good.test")
		c.send("BDAT 100 LAST\r\nSubject: cut\r\n\r\nforty octets or so of a chunk")
		require.NoError(t, c.conn.(*net.TCPConn).CloseWrite())
		r, err := c.reply()
		if err == nil {
			assert.True(t, strings.HasPrefix(r, "421 4.4.2 "), "the reply to a chunk cut short: %q", r)
		}
		l.noMessage(t, "cut-last@good.test")
	})

	// A command line cut by the read timeout reaches go-smtp as if it
	// were whole; it must not be executed.
	for _, tt := range []struct {
		name, before, cut string
		port              int
	}{
		{"EHLO", "", "EHLO client.test", l.short},
		{"MAIL", "EHLO client.test\r\n", "MAIL FROM:<sender@example.org>", l.short},
		{"RCPT", "EHLO client.test\r\nMAIL FROM:<sender@example.org>\r\n", "RCPT TO:<slow@good.test>", l.short},
		{"AUTH", "EHLO client.test\r\n", "AUTH PLAIN " + base64.StdEncoding.EncodeToString([]byte("\x00"+labUser+"\x00"+labPassword)), l.limits},
	} {
		t.Run("slowloris "+tt.name, func(t *testing.T) {
			c := dialRaw(t, "", tt.port)
			c.expect("220 ")
			c.send(tt.before)
			for range strings.Count(tt.before, "\r\n") {
				c.expect("250 ")
			}
			c.send(tt.cut)
			start := time.Now()
			r := c.expect("421 4.4.2 ")
			assert.Contains(t, r, "timed out waiting for the client; closing the connection")
			assert.Greater(t, time.Since(start), 800*time.Millisecond, "the reply comes at the timeout")
			c.expectClosed()
		})
	}

	t.Run("a session goes on after a whole message", func(t *testing.T) {
		c := dialRaw(t, "", l.short)
		c.greet()
		c.envelope("whole@good.test")
		whole := "Subject: whole\r\n\r\nall of it\r\n"
		c.send(fmt.Sprintf("BDAT %d LAST\r\n%s", len(whole), whole))
		c.expect("250 2.0.0 queued")
		c.send("NOOP\r\n")
		c.expect("250 ")
		c.send("QUIT\r\n")
		c.expect("221 ")
		require.Eventually(t, func() bool { return len(messagesTo(t, l.good, "whole@good.test")) == 1 }, 5*time.Second, 20*time.Millisecond)
	})
}

// longLineMessage writes a message whose line number lineNo (from 1) has
// n octets, and returns its path.
func longLineMessage(t *testing.T, lineNo, n int) string {
	t.Helper()
	lines := []string{"From: sender@example.org", "To: someone@example.net", "Subject: long line",
		fmt.Sprintf("Message-ID: <%d@example.org>", time.Now().UnixNano()), ""}
	for len(lines) < lineNo+3 {
		lines = append(lines, "a short line")
	}
	lines[lineNo-1] = strings.Repeat("x", n)
	p := filepath.Join(t.TempDir(), "long.eml")
	require.NoError(t, os.WriteFile(p, []byte(strings.Join(lines, "\r\n")+"\r\n"), 0o644))
	return p
}

func TestLongLines(t *testing.T) {
	l := startLab(t)

	tests := []struct {
		name        string
		port        int
		line, n     int
		want        string
		delivered   bool
		rcptPrefix  string
		description string
	}{
		{name: "998 octets", port: l.trusted, line: 9, n: 998, want: "250 2.0.0 queued", delivered: true},
		{name: "999 octets", port: l.trusted, line: 17, n: 999,
			want: "554 5.6.0 line 17 of the message is longer than 998 octets"},
		{name: "1500 octets", port: l.trusted, line: 6, n: 1500,
			want: "554 5.6.0 line 6 of the message is longer than 998 octets"},
		{name: "past go-smtp's own limit", port: l.trusted, line: 12, n: 5000,
			want: "554 5.6.0 a line of the message (line "},
		{name: "under a max_line_length of 2500", port: l.short, line: 8, n: 2500, want: "250 2.0.0 queued", delivered: true},
		{name: "over a max_line_length of 2500", port: l.short, line: 8, n: 2501,
			want: "554 5.6.0 line 8 of the message is longer than 2500 octets"},
	}
	for i, tt := range tests {
		t.Run("DATA, "+tt.name, func(t *testing.T) {
			rcpt := fmt.Sprintf("long%d@good.test", i)
			r := l.swaks(t, tt.port, "--to", rcpt, "--data", "@"+longLineMessage(t, tt.line, tt.n))
			assert.True(t, strings.HasPrefix(r.dataReply(), tt.want), "want %q, got %q", tt.want, r.dataReply())
			if tt.delivered {
				require.Eventually(t, func() bool { return len(messagesTo(t, l.good, rcpt)) == 1 }, 5*time.Second, 20*time.Millisecond)
			} else {
				l.noMessage(t, rcpt)
			}
		})
	}

	t.Run("BDAT, and the session goes on", func(t *testing.T) {
		c := dialRaw(t, "", l.trusted)
		c.greet()
		c.envelope("long-bdat@good.test")
		body := "Subject: long\r\n\r\nshort\r\n" + strings.Repeat("y", 1200) + "\r\nshort\r\n"
		// In two chunks, the long line across them.
		c.send(fmt.Sprintf("BDAT %d\r\n%s", 30, body[:30]))
		c.expect("250 ")
		c.send(fmt.Sprintf("BDAT %d LAST\r\n%s", len(body)-30, body[30:]))
		c.expect("554 5.6.0 line 4 of the message is longer than 998 octets")
		l.noMessage(t, "long-bdat@good.test")

		c.envelope("after-long@good.test")
		ok := "Subject: fine\r\n\r\nfine\r\n"
		c.send(fmt.Sprintf("BDAT %d LAST\r\n%s", len(ok), ok))
		c.expect("250 2.0.0 queued")
		c.send("QUIT\r\n")
		c.expect("221 ")
	})
}

func TestArguments(t *testing.T) {
	l := startLab(t)

	for _, tt := range []struct {
		name, ehlo string
	}{
		{"bare CR", "EHLO evil.test\rX-Injected: yes\r\n"},
		{"NUL", "EHLO evil\x00.test\r\n"},
		{"other control", "EHLO evil\x1b.test\r\n"},
	} {
		t.Run("first EHLO with a "+tt.name, func(t *testing.T) {
			rcpt := "ehlo-" + strings.ReplaceAll(tt.name, " ", "-") + "@good.test"
			c := dialRaw(t, "", l.trusted)
			c.expect("220 ")
			c.send(tt.ehlo)
			c.expect("501 5.5.2 EHLO/HELO argument has a control character")
			c.send("MAIL FROM:<sender@example.org>\r\n")
			c.expect("502 5.5.1 Please introduce yourself first")
			// A good EHLO then: its name, and only it, is in Received.
			c.send("EHLO client.test\r\n")
			c.expect("250 ")
			c.envelope(rcpt)
			c.send("DATA\r\n")
			c.expect("354 ")
			c.send("Subject: args\r\n\r\nbody\r\n.\r\n")
			c.expect("250 2.0.0 queued")
			require.Eventually(t, func() bool { return len(messagesTo(t, l.good, rcpt)) == 1 }, 5*time.Second, 20*time.Millisecond)
			h := string(messagesTo(t, l.good, rcpt)[0].Header)
			assert.True(t, strings.HasPrefix(h, "Received: from client.test ([127.0.0.1])\n"), h)
			assert.NotContains(t, h, "evil")
			assert.NotContains(t, h, "X-Injected")
		})
	}

	t.Run("a later EHLO with a bare CR", func(t *testing.T) {
		c := dialRaw(t, "", l.trusted)
		c.greet()
		c.send("EHLO evil.test\rX-Injected: yes\r\nMAIL FROM:<sender@example.org>\r\nRCPT TO:<later-ehlo@good.test>\r\nDATA\r\nSubject: x\r\n\r\nx\r\n.\r\n")
		c.expect("501 5.5.2 EHLO/HELO argument has a control character")
		c.expectClosed()
		l.noMessage(t, "later-ehlo@good.test")
	})

	for _, tt := range []struct {
		name, cmd, want string
		mail            bool
	}{
		{"MAIL FROM with a NUL", "MAIL FROM:<a\x00b@example.org>\r\n", "501 5.1.7 sender address has a control character", false},
		{"MAIL FROM with a bare CR", "MAIL FROM:<\"a\rb\"@example.org>\r\n", "501 5.1.7 sender address has a control character", false},
		{"RCPT TO with a NUL", "RCPT TO:<a\x00b@good.test>\r\n", "501 5.1.3 recipient address has a control character", true},
		{"RCPT TO with a bare CR", "RCPT TO:<\"a\rb\"@good.test>\r\n", "501 5.1.3 recipient address has a control character", true},
		{"RCPT TO with a CR in its domain", "RCPT TO:<ab@good.test\rX-Injected:>\r\n", "501 5.1.3 recipient address has a control character", true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := dialRaw(t, "", l.trusted)
			c.greet()
			if tt.mail {
				c.send("MAIL FROM:<sender@example.org>\r\n")
				c.expect("250 ")
			}
			c.send(tt.cmd)
			c.expect(tt.want)
			c.send("QUIT\r\n")
			c.expect("221 ")
		})
	}
}

func TestConnectionLimits(t *testing.T) {
	l := startLab(t)

	t.Run("max_connections", func(t *testing.T) {
		var open []*rawClient
		for range 3 {
			c := dialRaw(t, "", l.capped)
			c.expect("220 ")
			open = append(open, c)
		}
		c := dialRaw(t, "", l.capped)
		c.expect("421 4.7.0 relay.test too many connections; try again later")
		c.expectClosed()
		// A connection that ends frees its place.
		open[0].send("QUIT\r\n")
		open[0].expect("221 ")
		require.Eventually(t, func() bool {
			conn, err := dialFrom("", l.capped)
			if err != nil {
				return false
			}
			defer conn.Close()
			_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
			line, _ := bufio.NewReader(conn).ReadString('\n')
			return strings.HasPrefix(line, "220 ")
		}, 5*time.Second, 50*time.Millisecond)
	})

	t.Run("2000 idle connections from one address", func(t *testing.T) {
		// Few enough descriptors that holding both ends of 2000
		// connections in this process runs out of them, as Caddy would
		// with 2000 connections and its usual limit of 1024.
		var lim syscall.Rlimit
		require.NoError(t, syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim))
		if lim.Max < 3200 {
			t.Skipf("RLIMIT_NOFILE hard limit %d: too low for 2000 connections", lim.Max)
		}
		low := lim
		low.Cur = 3000
		require.NoError(t, syscall.Setrlimit(syscall.RLIMIT_NOFILE, &low))
		t.Cleanup(func() { _ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim) })

		const n = 2000
		conns := make([]net.Conn, 0, n)
		t.Cleanup(func() {
			for _, c := range conns {
				_ = c.Close()
			}
		})
		greeted, refused := 0, 0
		var dialErr error
		for i := range n {
			c, err := dialFrom("127.0.0.2", l.auth)
			if err != nil {
				// Checked after the delivery, to see what it does then.
				dialErr = fmt.Errorf("connection %d: %w", i, err)
				break
			}
			conns = append(conns, c)
			_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
			line, err := bufio.NewReader(c).ReadString('\n')
			require.NoError(t, err, "connection %d", i)
			switch {
			case strings.HasPrefix(line, "220 "):
				greeted++
			case strings.HasPrefix(line, "421 4.7.0 relay.test too many connections from 127.0.0.2; try again later"):
				refused++
			default:
				t.Fatalf("connection %d: %q", i, line)
			}
		}
		// Meanwhile a client that authenticates gets its message
		// delivered: the handler has descriptors left to relay it.
		r := l.swaks(t, l.auth, "--to", "during-flood@good.test", "--tls",
			"--auth", "PLAIN", "--auth-user", labUser, "--auth-password", labPassword)
		require.NoError(t, dialErr)
		assert.Equal(t, defaultMaxConnsPerIP, greeted, "max_connections_per_ip")
		assert.Equal(t, n-defaultMaxConnsPerIP, refused)
		require.Equal(t, 0, r.exit, r.out)
		assert.True(t, strings.HasPrefix(r.dataReply(), "250 2.0.0 queued as "), r.dataReply())
		require.Eventually(t, func() bool { return len(messagesTo(t, l.good, "during-flood@good.test")) == 1 }, 5*time.Second, 20*time.Millisecond)

		// A client in relay_networks is not counted per address.
		for range defaultMaxConnsPerIP + 10 {
			c := dialRaw(t, "127.0.0.3", l.trusted)
			c.expect("220 ")
		}
	})
}

// authPlain is an AUTH PLAIN command with its initial response.
func authPlain(user, password string) string {
	return "AUTH PLAIN " + base64.StdEncoding.EncodeToString([]byte("\x00"+user+"\x00"+password)) + "\r\n"
}

// hashComparisons is the number of password comparisons the handlers
// made so far.
func hashComparisons() int64 {
	var n int64
	guards.Range(func(_, v any) bool {
		n += v.(*guard).auth.compares.Load()
		return true
	})
	return n
}

func TestAuthLimits(t *testing.T) {
	l := startLab(t)

	t.Run("a session ends after 3 failures", func(t *testing.T) {
		c := dialRaw(t, "127.0.0.11", l.limits)
		c.greet()
		c.send(authPlain(labUser, "wrong 1"))
		c.expect("535 5.7.8 ")
		c.send(authPlain(labUser, "wrong 2"))
		c.expect("535 5.7.8 ")
		c.send(authPlain(labUser, "wrong 3"))
		c.expect("421 4.7.0 authentication failed 3 times; closing the connection")
		c.expectClosed()
	})

	t.Run("a client that failed too often is locked out, without comparisons", func(t *testing.T) {
		c := dialRaw(t, "127.0.0.12", l.limits)
		c.greet()
		for i := range authSessionFailures - 1 {
			c.send(authPlain(labUser, fmt.Sprintf("wrong %d", i)))
			c.expect("535 5.7.8 ")
		}
		c.send(authPlain(labUser, "wrong again"))
		c.expect("421 4.7.0 ")
		c = dialRaw(t, "127.0.0.12", l.limits)
		c.greet()
		for i := authSessionFailures; i < authFreeFailures; i++ {
			c.send(authPlain("nobody", fmt.Sprintf("wrong %d", i)))
			c.expect("535 5.7.8 ")
		}
		c.send("QUIT\r\n")
		c.expect("221 ")

		before := hashComparisons()
		c = dialRaw(t, "127.0.0.12", l.limits)
		c.greet()
		c.send(authPlain(labUser, labPassword))
		r := c.expect("454 4.7.0 too many failed authentications from 127.0.0.12; try again in ")
		assert.Regexp(t, `in (1m0s|59s|58s)$`, r)
		assert.Equal(t, before, hashComparisons(), "no comparison for a client locked out")
		c.send("MAIL FROM:<sender@example.org>\r\n")
		c.expect("530 5.7.0 authentication required")

		// Another address is not locked out.
		c = dialRaw(t, "127.0.0.13", l.limits)
		c.greet()
		c.send(authPlain(labUser, labPassword))
		c.expect("235 ")
	})

	t.Run("a client that logs in often costs one comparison", func(t *testing.T) {
		before := hashComparisons()
		for range 3 {
			c := dialRaw(t, "127.0.0.14", l.limits)
			c.greet()
			c.send(authPlain(labUser, labPassword))
			c.expect("235 ")
			c.send("QUIT\r\n")
			c.expect("221 ")
		}
		// One, or none if an earlier test logged in.
		after := hashComparisons()
		assert.LessOrEqual(t, after-before, int64(1), "comparisons for three logins")
		// A wrong password is not taken for the cached one.
		c := dialRaw(t, "127.0.0.14", l.limits)
		c.greet()
		c.send(authPlain(labUser, labPassword+"x"))
		c.expect("535 5.7.8 ")
		assert.Equal(t, after+1, hashComparisons())
	})
}
