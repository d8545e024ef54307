package peertest

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// startEcho starts a TCP echo server on 127.0.0.1 that copies what it
// reads back until EOF, then closes. It is stopped when the test ends.
func startEcho(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	require.NoError(t, err)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, _ = io.Copy(c, c)
				_ = c.Close()
			}()
		}
	}()
	t.Cleanup(func() {
		_ = ln.Close()
		mu.Lock()
		for _, c := range conns {
			_ = c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().String()
}

// readReply reads one SMTP reply, all its lines, and returns its last
// line. It is safe in any goroutine.
func readReply(r *bufio.Reader) (string, error) {
	for range 100 {
		l, err := r.ReadString('\n')
		if err != nil {
			return "", err
		}
		if len(l) < 4 || l[3] != '-' {
			return strings.TrimRight(l, "\r\n"), nil
		}
	}
	return "", errors.New("reply of more than 100 lines")
}

// smtpReply is readReply that fails the test on error.
func smtpReply(t *testing.T, r *bufio.Reader) string {
	t.Helper()
	l, err := readReply(r)
	require.NoError(t, err)
	return l
}

func TestDelayProxySMTP(t *testing.T) {
	t.Parallel()
	const delay = 50 * time.Millisecond
	s := StartSink(t, SinkOptions{})
	p := StartDelayProxy(t, s.Addr, delay)

	// session runs one SMTP transaction through the proxy; with
	// pipelining, MAIL, RCPT and DATA go in one write, and the message
	// with QUIT in another. It returns the time from connect to the end.
	session := func(t *testing.T, pipelining bool, rcpt string) time.Duration {
		t.Helper()
		start := time.Now()
		c, err := net.DialTimeout("tcp", p.Addr, 5*time.Second)
		require.NoError(t, err)
		defer c.Close()
		require.NoError(t, c.SetDeadline(time.Now().Add(10*time.Second)))
		r := bufio.NewReader(c)
		send := func(s string) {
			_, err := io.WriteString(c, s)
			require.NoError(t, err)
		}
		want := func(code string) {
			l := smtpReply(t, r)
			require.True(t, strings.HasPrefix(l, code), "want %s, got %q", code, l)
		}
		want("220")
		send("EHLO client.example.org\r\n")
		want("250")
		if pipelining {
			send("MAIL FROM:<a@example.org>\r\nRCPT TO:<" + rcpt + ">\r\nDATA\r\n")
			want("250")
			want("250")
			want("354")
			send("Subject: via proxy\r\n\r\nhello\r\n.\r\nQUIT\r\n")
			want("250")
			want("221")
		} else {
			for _, cmd := range []struct{ line, code string }{
				{"MAIL FROM:<a@example.org>\r\n", "250"},
				{"RCPT TO:<" + rcpt + ">\r\n", "250"},
				{"DATA\r\n", "354"},
				{"Subject: via proxy\r\n\r\nhello\r\n.\r\n", "250"},
				{"QUIT\r\n", "221"},
			} {
				send(cmd.line)
				want(cmd.code)
			}
		}
		// The sink closes after 221; its EOF comes through too.
		_, err = r.ReadByte()
		require.ErrorIs(t, err, io.EOF)
		return time.Since(start)
	}

	tests := []struct {
		name       string
		pipelining bool
		turns      int
	}{
		// EHLO; MAIL+RCPT+DATA; message+QUIT.
		{"pipelined", true, 3},
		// EHLO; MAIL; RCPT; DATA; message; QUIT.
		{"one command per turn", false, 6},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p.ResetCounters()
			elapsed := session(t, tc.pipelining, "b@example.test")
			assert.Equal(t, 1, p.Conns())
			assert.Equal(t, tc.turns, p.Turns())
			// The greeting takes one Delay, each turn two.
			min := time.Duration(2*tc.turns+1) * delay
			assert.GreaterOrEqual(t, elapsed, min)
			// Not serialized per chunk: a pipelined burst of replies
			// costs no more than one.
			assert.Less(t, elapsed, min+time.Second, "chunks delayed more than once")
			t.Logf("%d turns in %v (at least %v)", tc.turns, elapsed, min)
		})
	}
	msgs := s.WaitMessages(t, 2, 5*time.Second)
	for _, m := range msgs {
		assert.Equal(t, "127.0.0.1", m.ClientAddr, "the sink sees the proxy")
		assert.Equal(t, "hello\n", string(m.Body))
	}

	t.Run("counters sum over connections and reset", func(t *testing.T) {
		p.ResetCounters()
		assert.Zero(t, p.Conns())
		assert.Zero(t, p.Turns())
		var wg sync.WaitGroup
		for range 3 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				c, err := net.DialTimeout("tcp", p.Addr, 5*time.Second)
				if !assert.NoError(t, err) {
					return
				}
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(10 * time.Second))
				r := bufio.NewReader(c)
				for _, cmd := range []string{"", "EHLO x\r\n", "QUIT\r\n"} {
					if cmd != "" {
						_, err := io.WriteString(c, cmd)
						assert.NoError(t, err)
					}
					_, err := readReply(r)
					assert.NoError(t, err)
				}
			}()
		}
		wg.Wait()
		assert.Equal(t, 3, p.Conns())
		assert.Equal(t, 6, p.Turns(), "EHLO and QUIT on each of 3 connections")
	})
}

func TestDelayProxyPipelinesChunks(t *testing.T) {
	t.Parallel()
	const delay = 100 * time.Millisecond
	p := StartDelayProxy(t, startEcho(t), delay)
	c, err := net.DialTimeout("tcp", p.Addr, 5*time.Second)
	require.NoError(t, err)
	defer c.Close()
	require.NoError(t, c.SetDeadline(time.Now().Add(10*time.Second)))

	// Five chunks 10 ms apart: each comes back 2*Delay after it was
	// sent, so all are back 2*Delay after the last was sent. A proxy that
	// delayed each chunk after the one before would take 5*2*Delay.
	start := time.Now()
	var sent []byte
	for i := range 5 {
		chunk := []byte(strings.Repeat(string(rune('a'+i)), 100))
		_, err := c.Write(chunk)
		require.NoError(t, err)
		sent = append(sent, chunk...)
		time.Sleep(10 * time.Millisecond)
	}
	lastSent := time.Since(start)
	first := make([]byte, 1)
	_, err = io.ReadFull(c, first)
	require.NoError(t, err)
	firstAt := time.Since(start)
	rest := make([]byte, len(sent)-1)
	_, err = io.ReadFull(c, rest)
	require.NoError(t, err)
	all := time.Since(start)
	assert.Equal(t, sent, append(first, rest...), "order and bytes kept")
	assert.GreaterOrEqual(t, firstAt, 2*delay, "first byte: one delay each way")
	assert.Less(t, firstAt, 2*delay+300*time.Millisecond)
	assert.GreaterOrEqual(t, all, 2*delay)
	assert.Less(t, all, lastSent+2*delay+300*time.Millisecond, "chunks are pipelined, not serialized")
	assert.Zero(t, p.Turns(), "client spoke first and only once: no turn yet")

	// A second request after the reply is a turn.
	_, err = c.Write([]byte("again"))
	require.NoError(t, err)
	buf := make([]byte, 5)
	_, err = io.ReadFull(c, buf)
	require.NoError(t, err)
	assert.Equal(t, 1, p.Turns())

	t.Run("a megabyte each way arrives intact", func(t *testing.T) {
		data := make([]byte, 1<<20)
		_, err := rand.Read(data)
		require.NoError(t, err)
		c, err := net.DialTimeout("tcp", p.Addr, 5*time.Second)
		require.NoError(t, err)
		defer c.Close()
		require.NoError(t, c.SetDeadline(time.Now().Add(20*time.Second)))
		errc := make(chan error, 1)
		go func() {
			_, err := c.Write(data)
			if err == nil {
				err = c.(*net.TCPConn).CloseWrite()
			}
			errc <- err
		}()
		got, err := io.ReadAll(c)
		require.NoError(t, err, "the echo server's close comes through as EOF")
		require.NoError(t, <-errc)
		assert.True(t, bytes.Equal(data, got), "got %d bytes of %d", len(got), len(data))
	})
}

func TestDelayProxyClose(t *testing.T) {
	t.Parallel()
	const delay = 50 * time.Millisecond

	t.Run("client half-close reaches the server, its reply still comes back", func(t *testing.T) {
		p := StartDelayProxy(t, startEcho(t), delay)
		c, err := net.DialTimeout("tcp", p.Addr, 5*time.Second)
		require.NoError(t, err)
		defer c.Close()
		require.NoError(t, c.SetDeadline(time.Now().Add(5*time.Second)))
		_, err = c.Write([]byte("last words"))
		require.NoError(t, err)
		require.NoError(t, c.(*net.TCPConn).CloseWrite())
		got, err := io.ReadAll(c)
		require.NoError(t, err)
		assert.Equal(t, "last words", string(got))
	})

	t.Run("server close after its last reply", func(t *testing.T) {
		s := StartSink(t, SinkOptions{Flags: []string{"-Q", "ehlo"}})
		p := StartDelayProxy(t, s.Addr, delay)
		c, err := net.DialTimeout("tcp", p.Addr, 5*time.Second)
		require.NoError(t, err)
		defer c.Close()
		require.NoError(t, c.SetDeadline(time.Now().Add(5*time.Second)))
		r := bufio.NewReader(c)
		assert.True(t, strings.HasPrefix(smtpReply(t, r), "220"))
		sentAt := time.Now()
		_, err = io.WriteString(c, "EHLO client.example.org\r\n")
		require.NoError(t, err)
		assert.True(t, strings.HasPrefix(smtpReply(t, r), "421"))
		_, err = r.ReadByte()
		assert.ErrorIs(t, err, io.EOF, "the close follows the reply")
		assert.GreaterOrEqual(t, time.Since(sentAt), 2*delay)
	})

	t.Run("nothing listening at the target", func(t *testing.T) {
		p := StartDelayProxy(t, "127.0.0.1:"+strconv.Itoa(FreePort(t)), delay)
		c, err := net.DialTimeout("tcp", p.Addr, 5*time.Second)
		require.NoError(t, err, "the proxy itself accepts")
		defer c.Close()
		require.NoError(t, c.SetDeadline(time.Now().Add(5*time.Second)))
		_, err = c.Read(make([]byte, 1))
		assert.Error(t, err, "then closes")
		assert.Equal(t, 1, p.Conns())
	})

	t.Run("cleanup closes open connections and the listener", func(t *testing.T) {
		var addr string
		var c net.Conn
		t.Run("inner", func(t *testing.T) {
			p := StartDelayProxy(t, startEcho(t), delay)
			addr = p.Addr
			var err error
			c, err = net.DialTimeout("tcp", p.Addr, 5*time.Second)
			require.NoError(t, err)
			_, err = c.Write([]byte("x"))
			require.NoError(t, err)
			// Left open, with data in flight.
		})
		require.NotNil(t, c)
		defer c.Close()
		require.NoError(t, c.SetDeadline(time.Now().Add(5*time.Second)))
		_, err := io.ReadAll(c)
		var ne net.Error
		assert.False(t, errors.As(err, &ne) && ne.Timeout(), "connection not closed by cleanup: %v", err)
		_, err = net.DialTimeout("tcp", addr, time.Second)
		assert.Error(t, err, "listener still open")
	})
}

func TestDelayProxyTarget(t *testing.T) {
	t.Parallel()
	for _, target := range []string{"192.0.2.1:25", "localhost:25", "[2001:db8::1]:25", "127.0.0.1", "no port"} {
		ft := &fakeT{TB: t}
		ft.do(func() { StartDelayProxy(ft, target, time.Millisecond) })
		assert.True(t, ft.failed, "%q must be refused", target)
		assert.Contains(t, ft.msg, "delay proxy target", target)
	}
	for _, target := range []string{"127.0.0.9:25", "[::1]:25"} {
		ft := &fakeT{TB: t}
		ft.do(func() { StartDelayProxy(ft, target, time.Millisecond) })
		assert.False(t, ft.failed, "%q must be accepted: %s", target, ft.msg)
	}
}
