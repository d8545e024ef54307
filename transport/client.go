package transport

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-sasl"
)

// Options set up a session.
type Options struct {
	// Protocol is SMTP or LMTP. Default: SMTP.
	Protocol Protocol
	// Hostname is the name given in EHLO, LHLO or HELO.
	Hostname string
	// ServerName is the name the server's certificate must carry (the MX
	// host's name, or the remote's address), sent as SNI.
	ServerName string
	// StartTLS is whether STARTTLS is used. Default: TLSOptional.
	StartTLS TLSMode
	// ImplicitTLS starts TLS on connect (SMTPS), before the greeting.
	ImplicitTLS bool
	// AllowInvalidCerts accepts a certificate that does not verify.
	AllowInvalidCerts bool
	// TLSConfig, if set, is the base TLS configuration (root CAs, for
	// one); ServerName and InsecureSkipVerify are set from the fields
	// above.
	TLSConfig *tls.Config
	// Auth, if set, logs in after TLS.
	Auth *Auth
	// Timeouts bound each phase.
	Timeouts Timeouts
	// Source is the local address the connection was bound to, if the
	// caller chose one (for the pool's key).
	Source netip.Addr
}

// Auth is an account on a relay.
type Auth struct {
	Username, Password string
	// Mechanism, if set ("PLAIN" or "LOGIN"), is used instead of the
	// best one the server offers.
	Mechanism string
	// AllowPlaintext allows sending the credentials over a connection
	// without TLS. Never set it for a relay across a network you do not
	// control.
	AllowPlaintext bool
}

// Client is one session with a server. It is not safe for concurrent use.
type Client struct {
	raw      net.Conn // the TCP connection, under TLS if any
	conn     net.Conn
	br       *bufio.Reader
	bw       *bufio.Writer
	opts     Options
	caps     Capabilities
	greeting Reply
	tls      *tls.ConnectionState
	helo     bool // the server refused EHLO: no extensions
	// messages counts the transactions completed on this connection.
	messages int
	// dirty is true when a transaction failed part way and the next one
	// must start with RSET.
	dirty bool
	// broken is true when the session cannot be used again.
	broken bool
	// trace, if set, sees every line sent and received (tests).
	trace func(dir, line string)
	// Buffers kept for the next message: the body normalizer and two
	// BDAT chunks (the one sent and the one read ahead).
	norm   *normalizer
	chunks [2][]byte
	// sizeBuf reads the body to measure it (SIZE=).
	sizeBuf []byte
}

// Dial sets up a session on conn: implicit TLS if configured, the
// greeting, EHLO (or LHLO; HELO when an SMTP server refuses EHLO),
// STARTTLS as Options.StartTLS says, EHLO again, and AUTH. On error the
// connection is closed.
func Dial(ctx context.Context, conn net.Conn, opts Options) (*Client, error) {
	if opts.Protocol == "" {
		opts.Protocol = SMTP
	}
	if opts.StartTLS == "" {
		opts.StartTLS = TLSOptional
	}
	c := &Client{raw: conn, conn: conn, opts: opts}
	c.setConn(conn)
	if err := c.open(ctx); err != nil {
		_ = conn.Close()
		metricSessionFailed()
		return nil, err
	}
	metricConnOpened(c.tls)
	return c, nil
}

func (c *Client) setConn(conn net.Conn) {
	c.conn = conn
	c.br = bufio.NewReaderSize(conn, 4096)
	c.bw = bufio.NewWriterSize(conn, 32*1024)
}

func (c *Client) open(ctx context.Context) error {
	if c.opts.ImplicitTLS {
		if err := c.handshake(ctx); err != nil {
			return err
		}
	}
	rep, err := c.read(ctx, PhaseGreeting)
	if err != nil {
		return err
	}
	c.greeting = rep
	if rep.Code != 220 {
		return &Error{Phase: PhaseGreeting, Reply: &rep}
	}
	if err := c.hello(ctx); err != nil {
		return err
	}
	if c.tls == nil && c.opts.StartTLS != TLSDisable {
		if c.caps.Has("STARTTLS") {
			rep, err := c.cmd(ctx, PhaseTLS, "STARTTLS")
			if err != nil {
				return err
			}
			switch {
			case rep.Code == 220:
				if err := c.handshake(ctx); err != nil {
					return err
				}
				// What was learnt before TLS is forgotten (RFC 3207).
				if err := c.hello(ctx); err != nil {
					return err
				}
			case c.opts.StartTLS == TLSRequire:
				return &Error{Phase: PhaseTLS, Reply: &rep}
			}
		} else if c.opts.StartTLS == TLSRequire {
			return &Error{Phase: PhaseTLS, Err: errors.New("STARTTLS is required, and the server does not offer it")}
		}
	}
	if c.opts.Auth != nil {
		if err := c.auth(ctx); err != nil {
			return err
		}
	}
	return nil
}

// hello sends EHLO (LHLO for LMTP), falling back to HELO for an SMTP
// server that refuses EHLO with a 5xx reply.
func (c *Client) hello(ctx context.Context) error {
	verb := "EHLO"
	if c.opts.Protocol == LMTP {
		verb = "LHLO"
	}
	rep, err := c.cmd(ctx, PhaseEHLO, verb+" "+c.opts.Hostname)
	if err != nil {
		return err
	}
	if rep.Code == 250 {
		c.caps = ParseCapabilities(rep.Lines)
		c.helo = false
		return nil
	}
	if rep.Class() == PermanentNegative && c.opts.Protocol == SMTP {
		rep, err = c.cmd(ctx, PhaseEHLO, "HELO "+c.opts.Hostname)
		if err != nil {
			return err
		}
		if rep.Code == 250 {
			c.caps, c.helo = Capabilities{}, true
			return nil
		}
	}
	return &Error{Phase: PhaseEHLO, Reply: &rep}
}

// handshake starts TLS on the connection, verifying the server's
// certificate for ServerName unless AllowInvalidCerts.
func (c *Client) handshake(ctx context.Context) error {
	cfg := &tls.Config{}
	if c.opts.TLSConfig != nil {
		cfg = c.opts.TLSConfig.Clone()
	}
	cfg.ServerName = strings.TrimSuffix(c.opts.ServerName, ".")
	cfg.InsecureSkipVerify = c.opts.AllowInvalidCerts
	tc := tls.Client(c.conn, cfg)
	limit := c.opts.Timeouts.of(PhaseTLS)
	hctx, cancel := phaseContext(ctx, limit)
	defer cancel()
	if err := tc.HandshakeContext(hctx); err != nil {
		e := phaseError(PhaseTLS, limit, err)
		if errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
			e.Timeout = true
		}
		return e
	}
	st := tc.ConnectionState()
	c.tls = &st
	c.setConn(tc)
	return nil
}

// auth logs in with PLAIN or LOGIN, whichever the server offers (PLAIN
// first), never over plain text unless the account allows it.
func (c *Client) auth(ctx context.Context) error {
	a := c.opts.Auth
	if c.tls == nil && !a.AllowPlaintext {
		return &Error{Phase: PhaseAuth, Err: errors.New("refusing to send credentials without TLS (the server offers no STARTTLS, or it is disabled)")}
	}
	mechs := c.caps.AuthMechanisms()
	if a.Mechanism != "" {
		if !slices.Contains(mechs, strings.ToUpper(a.Mechanism)) {
			return &Error{Phase: PhaseAuth, Err: fmt.Errorf("the server does not offer %s authentication (offers: %s)", a.Mechanism, strings.Join(mechs, " "))}
		}
		mechs = []string{strings.ToUpper(a.Mechanism)}
	}
	var client sasl.Client
	switch {
	case slices.Contains(mechs, sasl.Plain):
		client = sasl.NewPlainClient("", a.Username, a.Password)
	case slices.Contains(mechs, sasl.Login):
		client = sasl.NewLoginClient(a.Username, a.Password)
	default:
		return &Error{Phase: PhaseAuth, Err: fmt.Errorf("the server offers no PLAIN or LOGIN authentication (offers: %s)", strings.Join(mechs, " "))}
	}
	mech, ir, err := client.Start()
	if err != nil {
		return &Error{Phase: PhaseAuth, Err: err}
	}
	line := "AUTH " + mech
	if ir != nil {
		line += " " + encodeSASL(ir)
	}
	for range 10 {
		rep, err := c.cmdSecret(ctx, PhaseAuth, line)
		if err != nil {
			return err
		}
		switch rep.Code {
		case 235:
			return nil
		case 334:
			challenge, err := base64.StdEncoding.DecodeString(rep.Text())
			if err != nil {
				return &Error{Phase: PhaseAuth, Err: fmt.Errorf("bad challenge %q: %w", rep.Text(), err)}
			}
			resp, err := client.Next(challenge)
			if err != nil {
				return &Error{Phase: PhaseAuth, Err: err}
			}
			line = encodeSASL(resp)
		default:
			return &Error{Phase: PhaseAuth, Reply: &rep}
		}
	}
	return &Error{Phase: PhaseAuth, Err: errors.New("too many authentication challenges")}
}

func encodeSASL(b []byte) string {
	if len(b) == 0 {
		return "="
	}
	return base64.StdEncoding.EncodeToString(b)
}

// Capabilities returns what the server announced (after TLS, if any).
func (c *Client) Capabilities() Capabilities { return c.caps }

// TLS returns the TLS state, nil for a plain-text session.
func (c *Client) TLS() *tls.ConnectionState { return c.tls }

// Greeting returns the server's greeting.
func (c *Client) Greeting() Reply { return c.greeting }

// Messages returns how many transactions this session completed.
func (c *Client) Messages() int { return c.messages }

// Usable reports whether the session can carry another message.
func (c *Client) Usable() bool { return !c.broken }

// Hostname returns the name the session greeted with.
func (c *Client) Hostname() string { return c.opts.Hostname }

// BoundSource returns the local address the connection was bound to, or
// the invalid Addr when the kernel chose it.
func (c *Client) BoundSource() netip.Addr { return c.opts.Source }

// LocalAddr and RemoteAddr are the connection's addresses.
func (c *Client) LocalAddr() net.Addr  { return c.conn.LocalAddr() }
func (c *Client) RemoteAddr() net.Addr { return c.conn.RemoteAddr() }

// Quit ends the session politely (QUIT, bounded by a few seconds) and
// closes the connection.
func (c *Client) Quit() error {
	if !c.broken {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, _ = c.cmd(ctx, PhaseQuit, "QUIT")
		cancel()
	}
	c.broken = true
	return c.conn.Close()
}

// Close closes the connection without QUIT.
func (c *Client) Close() error {
	c.broken = true
	return c.conn.Close()
}

// cmd sends one command and reads its reply. Bytes that arrived before
// the command are an error (ErrProtocol): they would be read as its reply.
func (c *Client) cmd(ctx context.Context, p Phase, line string) (Reply, error) {
	if err := c.unaskedBuffered(p); err != nil {
		c.broken = true
		return Reply{}, err
	}
	if err := c.send(ctx, p, line); err != nil {
		return Reply{}, err
	}
	if err := c.flush(ctx, p); err != nil {
		return Reply{}, err
	}
	return c.read(ctx, p)
}

// cmdSecret is cmd for a line that must not be traced.
func (c *Client) cmdSecret(ctx context.Context, p Phase, line string) (Reply, error) {
	trace := c.trace
	c.trace = nil
	if trace != nil {
		trace("C", "(credentials)")
	}
	rep, err := c.cmd(ctx, p, line)
	c.trace = trace
	if trace != nil && err == nil {
		trace("S", rep.String())
	}
	return rep, err
}

// send buffers a command line.
func (c *Client) send(ctx context.Context, p Phase, line string) error {
	if c.trace != nil {
		c.trace("C", line)
	}
	if _, err := c.bw.WriteString(line); err != nil {
		return c.fail(ctx, p, err)
	}
	if _, err := c.bw.WriteString("\r\n"); err != nil {
		return c.fail(ctx, p, err)
	}
	return nil
}

// flush writes what is buffered, within the phase's time.
func (c *Client) flush(ctx context.Context, p Phase) error {
	stop := c.deadline(ctx, p, false)
	defer stop()
	if err := c.bw.Flush(); err != nil {
		return c.fail(ctx, p, err)
	}
	return nil
}

// read reads one reply within the phase's time.
func (c *Client) read(ctx context.Context, p Phase) (Reply, error) {
	stop := c.deadline(ctx, p, true)
	defer stop()
	rep, err := readReply(c.br)
	if err != nil {
		return Reply{}, c.fail(ctx, p, err)
	}
	if c.trace != nil {
		c.trace("S", rep.String())
	}
	metricReply(rep)
	if rep.Code == 421 {
		// The server is closing the session (RFC 5321, section 3.8).
		c.broken = true
		return rep, &Error{Phase: p, Reply: &rep}
	}
	return rep, nil
}

// deadline sets the connection's read (or write) deadline to the phase's
// timeout, earlier if ctx ends sooner, and makes a cancellation of ctx
// interrupt the I/O at once. stop undoes the cancellation hook.
func (c *Client) deadline(ctx context.Context, p Phase, read bool) (stop func()) {
	set := c.conn.SetWriteDeadline
	if read {
		set = c.conn.SetReadDeadline
	}
	var phaseEnd time.Time
	if limit := c.opts.Timeouts.of(p); limit > 0 {
		phaseEnd = time.Now().Add(limit)
	}
	var mu sync.Mutex
	var timer *time.Timer
	stopped := false
	// apply sets the connection's deadline to the phase's end, or the
	// context's deadline if sooner. The context's deadline may move later
	// while the I/O runs (a queue lease renewed): shortly before the
	// deadline set, it looks again. Called with mu held.
	var apply func()
	apply = func() {
		if stopped {
			return
		}
		d := phaseEnd
		cd, ok := ctx.Deadline()
		byCtx := ok && (d.IsZero() || cd.Before(d))
		if byCtx {
			d = cd
		}
		_ = set(d)
		if byCtx {
			if wait := time.Until(d) - deadlineRecheck; wait > 0 {
				timer = time.AfterFunc(wait, func() {
					mu.Lock()
					defer mu.Unlock()
					apply()
				})
			}
		}
	}
	mu.Lock()
	apply()
	mu.Unlock()
	cancel := context.AfterFunc(ctx, func() {
		mu.Lock()
		defer mu.Unlock()
		if !stopped {
			_ = set(time.Unix(1, 0))
		}
	})
	return func() {
		cancel()
		mu.Lock()
		stopped = true
		if timer != nil {
			timer.Stop()
		}
		mu.Unlock()
	}
}

// deadlineRecheck is how long before a deadline that came from the
// context the context's deadline is read again.
const deadlineRecheck = 250 * time.Millisecond

// fail marks the session broken and wraps err with the phase.
func (c *Client) fail(ctx context.Context, p Phase, err error) error {
	c.broken = true
	limit := c.opts.Timeouts.of(p)
	e := phaseError(p, limit, err)
	cerr := ctx.Err()
	if dl, ok := ctx.Deadline(); ok && cerr == nil && !time.Now().Before(dl) {
		// The connection's deadline was the caller's, and it fired just
		// before the context's own timer.
		cerr = context.DeadlineExceeded
	}
	if cerr != nil {
		// The caller gave up (or its deadline passed): not the phase's
		// timeout.
		e.Timeout, e.Err = false, fmt.Errorf("%w (%v)", cerr, err)
	}
	return e
}

// phaseContext bounds ctx by limit (none when zero).
func phaseContext(ctx context.Context, limit time.Duration) (context.Context, context.CancelFunc) {
	if limit <= 0 {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, limit)
}
