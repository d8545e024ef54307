package transport

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// fakeServer is a small SMTP (or LMTP) server written for these tests, on
// a real loopback socket, that can misbehave as no real server does: answer
// a command with any reply (a 250 to DATA, a 354 to the end of data, a
// reply cut in the middle of its line), send a line nobody asked for, or
// answer in the style of a server the machine does not have (Exim's
// multi-line replies). Every message it reads whole is recorded.
type fakeServer struct {
	Addr string
	opts fakeOptions
	ln   net.Listener

	mu    sync.Mutex
	conns int
	open  map[net.Conn]bool
	msgs  []fakeMessage
	wg    sync.WaitGroup
}

type fakeOptions struct {
	// LMTP answers LHLO, and the end of data with one reply per recipient.
	LMTP bool
	// Ext are the extensions announced in EHLO (LHLO): "PIPELINING",
	// "CHUNKING", "SIZE 10000", "STARTTLS"...
	Ext []string
	// TLS is the server's TLS configuration, for STARTTLS.
	TLS *tls.Config
	// Reply, if set, may replace the reply to a command on connection n
	// (counted from 1): verb is the command's verb (MAIL, RCPT, DATA,
	// BDAT for a chunk that is not the last), GREETING for the greeting,
	// or END for the end of the message (the "." line, or BDAT ... LAST). It returns the raw reply
	// text to write (CRLF included, possibly several lines, possibly a cut
	// line), or "" for the normal reply. A reply ending in closeMark is
	// followed by closing the connection.
	Reply func(n int, verb string) string
	// Delay, if set, is how long the server waits before the reply to a
	// command (verb as for Reply) on connection n.
	Delay func(n int, verb string) time.Duration
	// Unsolicited, if set, is written on connection n Delay after the
	// reply to the end of its first message (a line nobody asked for).
	Unsolicited func(n int) (delay time.Duration, line string)
	// Coalesce writes the reply to the end of data and the unsolicited
	// line (with no delay) in one write on the socket: under TLS, two TLS
	// records in one TCP segment.
	Coalesce bool
}

// closeMark at the end of a reply closes the connection after it.
const closeMark = "<close>"

// fakeMessage is a message the server read whole.
type fakeMessage struct {
	Conn int
	From string
	// Size is the SIZE= parameter of MAIL, -1 when there was none.
	Size int64
	To   []string
	// Data is the message as sent after DATA (dot-stuffing undone) or in
	// the BDAT chunks: the octets RFC 1870 counts.
	Data []byte
}

func startFakeServer(t *testing.T, opts fakeOptions) *fakeServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	s := &fakeServer{Addr: ln.Addr().String(), opts: opts, ln: ln, open: map[net.Conn]bool{}}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.mu.Lock()
			s.conns++
			n := s.conns
			s.open[c] = true
			s.mu.Unlock()
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				defer func() {
					s.mu.Lock()
					delete(s.open, c)
					s.mu.Unlock()
					_ = c.Close()
				}()
				// No session of these tests lasts longer.
				_ = c.SetDeadline(time.Now().Add(30 * time.Second))
				s.serve(n, c)
			}()
		}
	}()
	t.Cleanup(func() {
		_ = ln.Close()
		s.mu.Lock()
		for c := range s.open {
			_ = c.Close()
		}
		s.mu.Unlock()
		done := make(chan struct{})
		go func() { s.wg.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Error("fake server: sessions still open")
		}
	})
	return s
}

// Conns returns how many connections the server accepted.
func (s *fakeServer) Conns() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.conns
}

// Messages returns the messages read whole so far.
func (s *fakeServer) Messages() []fakeMessage {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]fakeMessage(nil), s.msgs...)
}

// holdConn is the socket under the server's TLS (or plain) writes: while
// hold is set, writes are kept and sent in one write by release.
type holdConn struct {
	net.Conn
	mu   sync.Mutex
	hold bool
	buf  bytes.Buffer
}

func (h *holdConn) Write(p []byte) (int, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.hold {
		return h.buf.Write(p)
	}
	return h.Conn.Write(p)
}

func (h *holdConn) release() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.hold = false
	_, err := h.Conn.Write(h.buf.Bytes())
	h.buf.Reset()
	return err
}

func (s *fakeServer) serve(n int, raw net.Conn) {
	hc := &holdConn{Conn: raw}
	var conn net.Conn = hc
	br := bufio.NewReader(conn)
	var wmu sync.Mutex
	write := func(text string) {
		wmu.Lock()
		defer wmu.Unlock()
		text, closing := strings.CutSuffix(text, closeMark)
		_, _ = io.WriteString(conn, text)
		if closing {
			_ = raw.Close()
		}
	}
	reply := func(verb, normal string) string {
		if s.opts.Delay != nil {
			time.Sleep(s.opts.Delay(n, verb))
		}
		if s.opts.Reply != nil {
			if r := s.opts.Reply(n, verb); r != "" {
				return r
			}
		}
		return normal
	}
	var (
		msg       fakeMessage
		delivered int
	)
	reset := func() { msg = fakeMessage{Conn: n, Size: -1} }
	reset()
	end := func() {
		s.mu.Lock()
		s.msgs = append(s.msgs, msg)
		s.mu.Unlock()
		var normal string
		if s.opts.LMTP {
			for _, r := range msg.To {
				normal += "250 2.0.0 <" + r + "> delivered\r\n"
			}
		} else {
			normal = "250 2.0.0 queued as " + strconv.Itoa(len(s.msgs)) + "\r\n"
		}
		text := reply("END", normal)
		delivered++
		var extra string
		var delay time.Duration
		if delivered == 1 && s.opts.Unsolicited != nil {
			delay, extra = s.opts.Unsolicited(n)
		}
		switch {
		case extra != "" && s.opts.Coalesce:
			hc.mu.Lock()
			hc.hold = true
			hc.mu.Unlock()
			write(text)
			write(extra)
			_ = hc.release()
		case extra != "":
			write(text)
			go func() {
				time.Sleep(delay)
				write(extra)
			}()
		default:
			write(text)
		}
		reset()
	}
	write(reply("GREETING", "220 fake.example.net ESMTP\r\n"))
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			return
		}
		line = strings.TrimRight(line, "\r\n")
		verb, arg, _ := strings.Cut(line, " ")
		verb = strings.ToUpper(verb)
		switch verb {
		case "EHLO", "LHLO":
			lines := append([]string{"fake.example.net"}, s.opts.Ext...)
			var b strings.Builder
			for i, l := range lines {
				sep := "-"
				if i == len(lines)-1 {
					sep = " "
				}
				b.WriteString("250" + sep + l + "\r\n")
			}
			write(reply(verb, b.String()))
		case "STARTTLS":
			write("220 2.0.0 go ahead\r\n")
			tc := tls.Server(hc, s.opts.TLS)
			if err := tc.Handshake(); err != nil {
				return
			}
			wmu.Lock()
			conn = tc
			wmu.Unlock()
			br = bufio.NewReader(tc)
		case "MAIL":
			reset()
			for i, f := range strings.Fields(arg) {
				if i == 0 {
					msg.From = strings.Trim(f[min(len("FROM:"), len(f)):], "<>")
					continue
				}
				if k, v, ok := strings.Cut(f, "="); ok && strings.EqualFold(k, "SIZE") {
					msg.Size, _ = strconv.ParseInt(v, 10, 64)
				}
			}
			write(reply(verb, "250 2.1.0 ok\r\n"))
		case "RCPT":
			to := arg
			if len(to) > 3 {
				to = to[3:]
			}
			msg.To = append(msg.To, strings.Trim(strings.Fields(to)[0], "<>"))
			write(reply(verb, "250 2.1.5 ok\r\n"))
		case "DATA":
			r := reply(verb, "354 go ahead\r\n")
			write(r)
			if !strings.HasPrefix(r, "354") {
				continue
			}
			var data bytes.Buffer
			for {
				l, err := br.ReadString('\n')
				if err != nil {
					return
				}
				if l == ".\r\n" {
					break
				}
				data.WriteString(strings.TrimPrefix(l, "."))
			}
			msg.Data = data.Bytes()
			end()
		case "BDAT":
			f := strings.Fields(arg)
			size, _ := strconv.Atoi(f[0])
			chunk := make([]byte, size)
			if _, err := io.ReadFull(br, chunk); err != nil {
				return
			}
			msg.Data = append(msg.Data, chunk...)
			if len(f) > 1 && strings.EqualFold(f[1], "LAST") {
				end()
			} else {
				write(reply(verb, fmt.Sprintf("250 2.0.0 %d octets\r\n", size)))
			}
		case "RSET":
			reset()
			write("250 2.0.0 ok\r\n")
		case "NOOP":
			write("250 2.0.0 ok\r\n")
		case "QUIT":
			write("221 2.0.0 bye\r\n")
			return
		default:
			write("500 5.5.1 unknown command\r\n")
		}
	}
}
