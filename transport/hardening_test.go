package transport

import (
	"context"
	"crypto/tls"
	"io"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/seed7b014b84/caddy-smtp/internal/peertest"
	"github.com/seed7b014b84/caddy-smtp/strategy"
)

// on returns a fakeOptions.Reply that answers verb with text.
func on(verb, text string) func(int, string) string {
	return func(_ int, v string) string {
		if v == verb {
			return text
		}
		return ""
	}
}

// bigBody is a message of more than one BDAT chunk.
var bigBody = strings.Repeat(strings.Repeat("x", 78)+"\r\n", chunkSize/80+100)

// TestNoFakedDelivery: a recipient is delivered only when the server
// accepted the message's data with a 2xx reply. A 2xx reply to DATA, or a
// 3xx reply where only 2xx accepts (end of data, BDAT, RCPT), is a protocol
// error: the recipients are deferred and the session is closed.
func TestNoFakedDelivery(t *testing.T) {
	pipe := []string{"PIPELINING"}
	tests := []struct {
		name  string
		opts  fakeOptions
		proto Protocol
		body  string
		want  []Status
		// err is what Deliver's error says ("" for none).
		err string
		// stored is how many messages the server read whole.
		stored int
	}{
		{"DATA answered 250, pipelined", fakeOptions{Ext: pipe, Reply: on("DATA", "250 2.0.0 ok\r\n")}, SMTP, testBody,
			[]Status{Deferred, Deferred}, "protocol error: DATA answered with 250 2.0.0 ok", 0},
		{"DATA answered 250, lockstep", fakeOptions{Reply: on("DATA", "250 2.0.0 ok\r\n")}, SMTP, testBody,
			[]Status{Deferred, Deferred}, "protocol error: DATA answered with 250", 0},
		{"DATA answered 250, LMTP", fakeOptions{LMTP: true, Ext: pipe, Reply: on("DATA", "250 2.0.0 ok\r\n")}, LMTP, testBody,
			[]Status{Deferred, Deferred}, "protocol error: DATA answered with 250", 0},
		{"DATA answered 334", fakeOptions{Ext: pipe, Reply: on("DATA", "334 go on\r\n")}, SMTP, testBody,
			[]Status{Deferred, Deferred}, "protocol error: DATA answered with 334", 0},
		{"end of data answered 354, pipelined", fakeOptions{Ext: pipe, Reply: on("END", "354 more please\r\n")}, SMTP, testBody,
			[]Status{Deferred, Deferred}, "protocol error: the end of the message answered with 354", 1},
		{"end of data answered 354, lockstep", fakeOptions{Reply: on("END", "354 more please\r\n")}, SMTP, testBody,
			[]Status{Deferred, Deferred}, "protocol error: the end of the message answered with 354", 1},
		{"BDAT LAST answered 354", fakeOptions{Ext: []string{"PIPELINING", "CHUNKING"}, Reply: on("END", "354 more please\r\n")}, SMTP, testBody,
			[]Status{Deferred, Deferred}, "protocol error: the end of the message answered with 354", 1},
		{"BDAT chunk answered 354", fakeOptions{Ext: []string{"CHUNKING"}, Reply: on("BDAT", "354 more please\r\n")}, SMTP, bigBody,
			[]Status{Deferred, Deferred}, "protocol error: BDAT answered with 354", 0},
		{"RCPT answered 354", fakeOptions{Ext: pipe, Reply: on("RCPT", "354 ok\r\n")}, SMTP, testBody,
			[]Status{Deferred, Deferred}, "protocol error: RCPT answered with 354", 0},
		{"LMTP: one recipient's reply 354", fakeOptions{LMTP: true, Ext: pipe, Reply: on("END", "250 2.0.0 a ok\r\n354 what\r\n")}, LMTP, testBody,
			[]Status{Delivered, Deferred}, "protocol error: the end of the message answered with 354", 1},
		// The replies that are not errors, for contrast.
		{"end of data answered 250", fakeOptions{Ext: pipe}, SMTP, testBody, []Status{Delivered, Delivered}, "", 1},
		{"end of data answered 451", fakeOptions{Ext: pipe, Reply: on("END", "451 4.3.0 try later\r\n")}, SMTP, testBody,
			[]Status{Deferred, Deferred}, "", 1},
		{"BDAT, end answered 250", fakeOptions{Ext: []string{"CHUNKING"}}, SMTP, bigBody, []Status{Delivered, Delivered}, "", 1},
		{"LMTP, end answered 250 and 550", fakeOptions{LMTP: true, Ext: pipe, Reply: on("END", "250 2.0.0 a ok\r\n550 5.1.1 no b\r\n")}, LMTP, testBody,
			[]Status{Delivered, Failed}, "", 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := startFakeServer(t, tt.opts)
			c, err := session(t, s.Addr, Options{Protocol: tt.proto})
			require.NoError(t, err)
			res, err := c.Deliver(t.Context(), envelope("a@example.test", "b@example.test"), strings.NewReader(tt.body))
			require.Len(t, res, len(tt.want))
			for i, r := range res {
				assert.Equal(t, tt.want[i], r.Status, "recipient %d: %s", i, r.Reply)
				if r.Status == Deferred && tt.err != "" {
					require.Error(t, r.Err, "recipient %d", i)
					assert.Contains(t, r.Err.Error(), tt.err)
					assert.Zero(t, r.Reply.Code, "a reply that broke the protocol is not the recipient's reply")
				}
			}
			if tt.err == "" {
				require.NoError(t, err)
				assert.True(t, c.Usable())
			} else {
				require.Error(t, err)
				assert.Contains(t, err.Error(), tt.err)
				assert.ErrorIs(t, err, ErrProtocol)
				assert.False(t, c.Usable(), "the session is closed after a protocol error")
				assert.False(t, IsPermanent(err))
			}
			_ = c.Close()
			assert.Len(t, s.Messages(), tt.stored)
		})
	}
}

// poolDial is how the app makes a pooled session: the strategy's dialer
// (which hands transport a *strategy.Conn, not a *net.TCPConn), then Dial.
func poolDial(t *testing.T, addr string, opts Options) func(context.Context) (*Client, error) {
	ap := netip.MustParseAddrPort(addr)
	host := &strategy.Host{Name: "fake.example.net", Strategy: strategy.IPv4Only, ConnectTimeout: 5 * time.Second,
		FallbackDelay: strategy.Delay(strategy.DefaultFallbackDelay), Candidates: []strategy.Candidate{{Addr: ap, EHLO: "client.example.org"}}}
	return func(ctx context.Context) (*Client, error) {
		conn, err := (&strategy.Dialer{}).DialHost(ctx, host)
		if err != nil {
			return nil, err
		}
		o := opts
		o.Hostname, o.Source = conn.EHLO, conn.Source
		return Dial(ctx, conn, o)
	}
}

// TestPoolUnaskedLine: a server sends a line nobody asked for while the
// session is idle in the pool (plain text, and under TLS, where the line
// may already sit in the TLS layer's buffer); the next message goes on a
// new connection, and both messages arrive whole.
func TestPoolUnaskedLine(t *testing.T) {
	ca := peertest.NewCA(t, "fake CA")
	leaf := ca.Issue(t, "fake.example.net")
	serverTLS := &tls.Config{Certificates: []tls.Certificate{leaf.Cert}}
	clientTLS := Options{ServerName: "fake.example.net", TLSConfig: &tls.Config{RootCAs: ca.Pool()}, StartTLS: TLSRequire}
	unasked := func(delay time.Duration) func(int) (time.Duration, string) {
		return func(int) (time.Duration, string) { return delay, "250 2.0.0 nobody asked\r\n" }
	}
	tests := []struct {
		name string
		opts fakeOptions
		copt Options
	}{
		{"plain, while idle", fakeOptions{Ext: []string{"PIPELINING"}, Unsolicited: unasked(100 * time.Millisecond)}, Options{}},
		{"plain, with the reply", fakeOptions{Ext: []string{"PIPELINING"}, Unsolicited: unasked(0), Coalesce: true}, Options{}},
		{"TLS, while idle", fakeOptions{Ext: []string{"PIPELINING", "STARTTLS"}, TLS: serverTLS, Unsolicited: unasked(100 * time.Millisecond)}, clientTLS},
		{"TLS, in the reply's segment", fakeOptions{Ext: []string{"PIPELINING", "STARTTLS"}, TLS: serverTLS, Unsolicited: unasked(0), Coalesce: true}, clientTLS},
		{"TLS, lockstep, while idle", fakeOptions{Ext: []string{"STARTTLS"}, TLS: serverTLS, Unsolicited: unasked(100 * time.Millisecond)}, clientTLS},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := startFakeServer(t, tt.opts)
			pool := NewPool(PoolConfig{IdleTimeout: time.Minute})
			defer pool.Close()
			key := keyFor(s.Addr)
			dial := poolDial(t, s.Addr, tt.copt)
			bodies := []string{testBody, "Subject: second\r\n\r\nthe second message\r\n"}
			var first *Client
			for i, body := range bodies {
				c, err := pool.Session(t.Context(), []Key{key}, "fake", 0, dial)
				require.NoError(t, err)
				if i == 0 {
					first = c
				} else {
					assert.NotSame(t, first, c, "the session that heard an unasked line is not reused")
				}
				if tt.copt.StartTLS == TLSRequire {
					require.NotNil(t, c.TLS())
				}
				res, err := c.Deliver(t.Context(), envelope("a@example.test"), strings.NewReader(body))
				require.NoError(t, err, "message %d", i)
				assert.Equal(t, Delivered, res[0].Status, "message %d: %s", i, res[0].Reply)
				pool.Release(key, c)
				time.Sleep(400 * time.Millisecond) // the line arrives while idle
			}
			assert.Equal(t, 2, s.Conns(), "the second message went on a new connection")
			msgs := s.Messages()
			require.Len(t, msgs, 2)
			for i, m := range msgs {
				assert.Equal(t, bodies[i], string(m.Data))
				assert.Equal(t, i+1, m.Conn)
			}
		})
	}
}

// TestPoolReuseTLS: a TLS session with nothing unasked on it is reused,
// from Postfix (OpenSSL, which sends TLS 1.3 session tickets after the
// handshake) and from a Go TLS server.
func TestPoolReuseTLS(t *testing.T) {
	pf := peertest.StartPostfix(t, peertest.PostfixOptions{})
	ca := peertest.NewCA(t, "fake CA")
	leaf := ca.Issue(t, "fake.example.net")
	fake := startFakeServer(t, fakeOptions{Ext: []string{"PIPELINING", "STARTTLS"}, TLS: &tls.Config{Certificates: []tls.Certificate{leaf.Cert}}})
	for _, tt := range []struct {
		name, addr string
		opts       Options
	}{
		{"postfix", pf.SMTPAddr, Options{ServerName: pf.Hostname, TLSConfig: &tls.Config{RootCAs: pf.CA.Pool()}, StartTLS: TLSRequire}},
		{"go", fake.Addr, Options{ServerName: "fake.example.net", TLSConfig: &tls.Config{RootCAs: ca.Pool()}, StartTLS: TLSRequire}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			pool := NewPool(PoolConfig{IdleTimeout: time.Minute})
			defer pool.Close()
			key := keyFor(tt.addr)
			dial := poolDial(t, tt.addr, tt.opts)
			var first *Client
			for i := range 3 {
				c, err := pool.Session(t.Context(), []Key{key}, "tls", 0, dial)
				require.NoError(t, err)
				if i == 0 {
					first = c
				}
				assert.Same(t, first, c, "message %d on the first session", i)
				res, err := c.Deliver(t.Context(), envelope("a@example.test"), strings.NewReader(testBody))
				require.NoError(t, err)
				assert.Equal(t, Delivered, res[0].Status, res[0].Reply.String())
				pool.Release(key, c)
				time.Sleep(200 * time.Millisecond)
			}
			assert.Equal(t, 3, first.Messages())
		})
	}
	assert.Equal(t, 1, fake.Conns())
}

// TestUnaskedLineBeforeCommand: a server that says something after its
// EHLO reply, before the client sent its first command, gets no message:
// its next replies could not be matched to the commands.
func TestUnaskedLineBeforeCommand(t *testing.T) {
	s := startFakeServer(t, fakeOptions{Reply: on("EHLO", "250-fake.example.net\r\n250 PIPELINING\r\n250 2.0.0 extra\r\n")})
	c, err := session(t, s.Addr, Options{})
	require.NoError(t, err)
	time.Sleep(100 * time.Millisecond)
	res, err := c.Deliver(t.Context(), envelope("a@example.test"), strings.NewReader(testBody))
	require.Error(t, err)
	assert.Contains(t, err.Error(), "before the command was sent")
	assert.Equal(t, Deferred, res[0].Status)
	assert.Zero(t, res[0].Reply.Code)
	assert.False(t, c.Usable())
	time.Sleep(100 * time.Millisecond)
	assert.Empty(t, s.Messages())

	// A line after the greeting would be read as the reply to EHLO.
	s = startFakeServer(t, fakeOptions{Reply: on("GREETING", "220 fake.example.net ESMTP\r\n250 2.0.0 extra\r\n")})
	_, err = session(t, s.Addr, Options{})
	var e *Error
	require.ErrorAs(t, err, &e)
	assert.Equal(t, PhaseEHLO, e.Phase)
	assert.ErrorIs(t, err, ErrProtocol)
	assert.Contains(t, err.Error(), `the server sent "250 2.0.0 extra\r\n" before the command was sent`)
}

// TestCutReply: a reply whose line the server never finishes is an error
// of the phase whose timeout fired (or of the phase the connection closed
// in), never a reply.
func TestCutReply(t *testing.T) {
	timeouts := Timeouts{Greeting: 5 * time.Second, EHLO: time.Second, MailFrom: time.Second, RcptTo: time.Second, Data: time.Second}
	t.Run("end of data cut, then silence", func(t *testing.T) {
		s := startFakeServer(t, fakeOptions{Ext: []string{"PIPELINING"}, Reply: on("END", "250 2.0.")})
		c, err := session(t, s.Addr, Options{Timeouts: timeouts})
		require.NoError(t, err)
		start := time.Now()
		res, err := c.Deliver(t.Context(), envelope("a@example.test"), strings.NewReader(testBody))
		require.Error(t, err)
		assert.GreaterOrEqual(t, time.Since(start), time.Second)
		var e *Error
		require.ErrorAs(t, err, &e)
		assert.Equal(t, PhaseData, e.Phase)
		assert.True(t, e.Timeout)
		assert.Nil(t, e.Reply)
		assert.Equal(t, `smtp data: timed out after 1s (the reply was cut after "250 2.0.")`, err.Error())
		assert.Equal(t, Deferred, res[0].Status)
		assert.Zero(t, res[0].Reply.Code)
	})
	t.Run("end of data cut, then close", func(t *testing.T) {
		s := startFakeServer(t, fakeOptions{Ext: []string{"PIPELINING"}, Reply: on("END", "250 2.0.0 ok"+closeMark)})
		c, err := session(t, s.Addr, Options{Timeouts: timeouts})
		require.NoError(t, err)
		res, err := c.Deliver(t.Context(), envelope("a@example.test"), strings.NewReader(testBody))
		require.Error(t, err)
		var e *Error
		require.ErrorAs(t, err, &e)
		assert.Equal(t, PhaseData, e.Phase)
		assert.False(t, e.Timeout)
		assert.Contains(t, err.Error(), `the reply was cut after "250 2.0.0 ok"`)
		assert.Equal(t, Deferred, res[0].Status)
	})
	t.Run("MAIL reply cut", func(t *testing.T) {
		// Without PIPELINING: the server gets no further command to
		// answer, and stays silent.
		s := startFakeServer(t, fakeOptions{Reply: on("MAIL", "250 2.1.")})
		c, err := session(t, s.Addr, Options{Timeouts: timeouts})
		require.NoError(t, err)
		res, err := c.Deliver(t.Context(), envelope("a@example.test"), strings.NewReader(testBody))
		var e *Error
		require.ErrorAs(t, err, &e)
		assert.Equal(t, PhaseMailFrom, e.Phase)
		assert.True(t, e.Timeout)
		assert.Equal(t, Deferred, res[0].Status)
		assert.Empty(t, s.Messages())
	})
	t.Run("EHLO reply cut", func(t *testing.T) {
		s := startFakeServer(t, fakeOptions{Reply: on("EHLO", "250-fake.example.net\r\n250 PIPELI")})
		_, err := session(t, s.Addr, Options{Timeouts: timeouts})
		var e *Error
		require.ErrorAs(t, err, &e)
		assert.Equal(t, PhaseEHLO, e.Phase)
		assert.True(t, e.Timeout)
		assert.Contains(t, err.Error(), `smtp ehlo: timed out after 1s (the reply was cut after "250-fake.example.net\r\n250 PIPELI")`)
	})
}

// TestEximMultilineEnhanced: Exim gives the enhanced status code on the
// first line of a multi-line reply only; it is kept, and each line keeps
// the rest of its text.
func TestEximMultilineEnhanced(t *testing.T) {
	s := startFakeServer(t, fakeOptions{Ext: []string{"PIPELINING"}, Reply: func(_ int, verb string) string {
		switch verb {
		case "RCPT":
			return "550-5.7.1 Relaying denied: the sender is\r\n550-not allowed to relay\r\n550 through this host\r\n"
		case "END":
			return "250-2.0.0 accepted\r\n250 id=1q2w3e\r\n"
		}
		return ""
	}})
	c, err := session(t, s.Addr, Options{Protocol: SMTP})
	require.NoError(t, err)
	res, err := c.Deliver(t.Context(), envelope("a@example.test"), strings.NewReader(testBody))
	require.NoError(t, err)
	assert.Equal(t, Failed, res[0].Status)
	assert.Equal(t, Reply{Code: 550, Enhanced: "5.7.1", Lines: []string{"Relaying denied: the sender is", "not allowed to relay", "through this host"}}, res[0].Reply)
	require.NoError(t, c.Quit())

	s = startFakeServer(t, fakeOptions{Reply: on("END", "250-2.0.0 accepted\r\n250 id=1q2w3e\r\n")})
	c, err = session(t, s.Addr, Options{})
	require.NoError(t, err)
	res, err = c.Deliver(t.Context(), envelope("a@example.test"), strings.NewReader(testBody))
	require.NoError(t, err)
	assert.Equal(t, Reply{Code: 250, Enhanced: "2.0.0", Lines: []string{"accepted", "id=1q2w3e"}}, res[0].Reply)
	require.NoError(t, c.Quit())
}

// nonSeeker hides a reader's Seek method.
type nonSeeker struct{ io.Reader }

// TestWireSize: the SIZE declared is the size sent (line ends made CRLF,
// the final CRLF added, dot-stuffing not counted, as RFC 1870 defines it),
// over DATA and BDAT.
func TestWireSize(t *testing.T) {
	body := "Subject: size\n\nline one\n.dotted line\rbare CR\r\nlast line, no end"
	wire := "Subject: size\r\n\r\nline one\r\n.dotted line\r\nbare CR\r\nlast line, no end\r\n"
	n, err := WireSize(strings.NewReader(body))
	require.NoError(t, err)
	assert.Equal(t, int64(len(wire)), n)

	for _, ext := range [][]string{{"PIPELINING", "SIZE 100000"}, {"PIPELINING", "CHUNKING", "SIZE 100000"}, {"SIZE 100000"}} {
		t.Run(strings.Join(ext, ","), func(t *testing.T) {
			s := startFakeServer(t, fakeOptions{Ext: ext})
			c, err := session(t, s.Addr, Options{})
			require.NoError(t, err)
			env := envelope("a@example.test")
			env.Size = int64(len(body)) // the input's size, as a caller knows it
			res, err := c.Deliver(t.Context(), env, strings.NewReader(body))
			require.NoError(t, err)
			assert.Equal(t, Delivered, res[0].Status)
			require.NoError(t, c.Quit())
			msgs := s.Messages()
			require.Len(t, msgs, 1)
			assert.Equal(t, wire, string(msgs[0].Data))
			assert.Equal(t, int64(len(wire)), msgs[0].Size, "SIZE= is the size sent")
		})
	}
	t.Run("a body that cannot be re-read declares the caller's size", func(t *testing.T) {
		s := startFakeServer(t, fakeOptions{Ext: []string{"SIZE 100000"}})
		c, err := session(t, s.Addr, Options{})
		require.NoError(t, err)
		env := envelope("a@example.test")
		env.Size = 1234
		_, err = c.Deliver(t.Context(), env, nonSeeker{strings.NewReader(body)})
		require.NoError(t, err)
		require.NoError(t, c.Quit())
		assert.Equal(t, int64(1234), s.Messages()[0].Size)
	})
}

// TestPostfixSizeIsWireSize: a message whose input fits Postfix's
// message_size_limit but whose CRLF form does not is refused before
// anything is sent, with the size that would have been sent.
func TestPostfixSizeIsWireSize(t *testing.T) {
	pf := peertest.StartPostfix(t, peertest.PostfixOptions{MessageSizeLimit: 2100})
	c, err := session(t, pf.SMTPAddr, Options{ServerName: pf.Hostname, TLSConfig: &tls.Config{RootCAs: pf.CA.Pool()}})
	require.NoError(t, err)
	body := strings.Repeat("123456789\n", 200) // 2000 octets in, 2200 on the wire
	env := envelope("a@example.test")
	env.Size = int64(len(body))
	res, err := c.Deliver(t.Context(), env, strings.NewReader(body))
	require.NoError(t, err)
	assert.Equal(t, Failed, res[0].Status)
	assert.Equal(t, "552 5.3.4 message size 2200 exceeds the server's limit of 2100", res[0].Reply.String())
	require.NoError(t, c.Quit())
	log := waitLog(t, pf, "disconnect from")
	assert.NotContains(t, log, "mail=", "nothing was sent")
}

// TestGoSMTPSize: go-smtp, a server library, sees SIZE= equal to the
// octets it reads.
func TestGoSMTPSize(t *testing.T) {
	srv := startGoSMTP(t)
	body := strings.Repeat("a line with a bare LF\n", 50) + "..leading dots\n"
	for _, chunking := range []bool{false, true} {
		c, err := session(t, srv.addr, Options{})
		require.NoError(t, err)
		require.True(t, c.Capabilities().Has("SIZE"))
		if !chunking {
			delete(c.caps, "CHUNKING")
		}
		env := envelope("a@example.test")
		env.Size = int64(len(body))
		res, err := c.Deliver(t.Context(), env, strings.NewReader(body))
		require.NoError(t, err)
		require.Equal(t, Delivered, res[0].Status, res[0].Reply.String())
		require.NoError(t, c.Quit())
	}
	got := srv.sizes()
	require.Len(t, got, 2)
	for _, g := range got {
		assert.Equal(t, g.read, g.declared, "SIZE= and the octets read")
		assert.Equal(t, int64(len(body)+51), g.read)
	}
}

// movingDeadline is a context whose deadline moves later while it lives,
// as the queue's lease context does when the lease is renewed.
type movingDeadline struct {
	context.Context
	mu sync.Mutex
	d  time.Time
}

func (m *movingDeadline) Deadline() (time.Time, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.d, true
}

func (m *movingDeadline) extend(d time.Time) {
	m.mu.Lock()
	m.d = d
	m.mu.Unlock()
}

// TestDeadlineFollowsContext: a reply slower than the context's deadline
// at the time it was awaited is still read when the deadline moved later
// meanwhile (a lease renewed), instead of cutting a transaction whose
// message the server may already have taken.
func TestDeadlineFollowsContext(t *testing.T) {
	s := startFakeServer(t, fakeOptions{Delay: func(_ int, verb string) time.Duration {
		if verb == "END" {
			return 1500 * time.Millisecond
		}
		return 0
	}})
	c, err := session(t, s.Addr, Options{Timeouts: Timeouts{Greeting: 5 * time.Second, EHLO: 5 * time.Second,
		MailFrom: 5 * time.Second, RcptTo: 5 * time.Second, Data: time.Minute}})
	require.NoError(t, err)
	ctx := &movingDeadline{Context: t.Context(), d: time.Now().Add(700 * time.Millisecond)}
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		tick := time.NewTicker(200 * time.Millisecond)
		defer tick.Stop()
		for range 50 {
			select {
			case <-stop:
				return
			case <-tick.C:
				ctx.extend(time.Now().Add(700 * time.Millisecond))
			}
		}
	}()
	res, err := c.Deliver(ctx, envelope("a@example.test"), strings.NewReader(testBody))
	require.NoError(t, err)
	assert.Equal(t, Delivered, res[0].Status)
	assert.Len(t, s.Messages(), 1)
}
