package l4submission

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
	"go.uber.org/zap"

	"github.com/seed7b014b84/caddy-smtp/delivery"
	"github.com/seed7b014b84/caddy-smtp/queue"
	"github.com/seed7b014b84/caddy-smtp/transport"
)

// session is one go-smtp session: from EHLO to QUIT, or to STARTTLS (after
// which go-smtp starts a new one). It holds the transaction in progress.
type session struct {
	h    *Handler
	cs   *connState
	conn *smtp.Conn
	// helo is the argument of the client's last EHLO or HELO, checked.
	helo string
	user string
	tx   transaction
	seen map[string]bool
}

// transaction is the envelope of the message in progress.
type transaction struct {
	helo  string
	user  string
	tls   bool
	from  string
	opts  *smtp.MailOptions
	rcpts []transport.Recipient
}

// newSession starts a session at the client's first EHLO or HELO (and
// the first after STARTTLS). An error is the reply to that command.
func newSession(h *Handler, cs *connState, c *smtp.Conn) (*session, error) {
	if err := cs.refusal(); err != nil {
		return nil, err
	}
	if err := checkHelo(c.Hostname()); err != nil {
		return nil, err
	}
	st, isTLS := c.TLSConnectionState()
	cs.update(func(s *sessionStats) {
		s.helo = c.Hostname()
		s.tls = tlsName(st, isTLS)
	})
	return &session{h: h, cs: cs, conn: c, helo: c.Hostname()}, nil
}

// hasControl reports whether s has an ASCII control character (NUL, CR,
// LF, ...), which no domain, address literal or mailbox may hold (RFC
// 5321 4.1.2), and which would end up in the Received header.
func hasControl(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] == 0x7f {
			return true
		}
	}
	return false
}

// checkHelo checks the argument of EHLO or HELO.
func checkHelo(helo string) *smtp.SMTPError {
	if hasControl(helo) {
		return errBadHelo
	}
	return nil
}

// The replies to what the handler refuses.
var (
	errAuthRequired = &smtp.SMTPError{Code: 530, EnhancedCode: smtp.EnhancedCode{5, 7, 0},
		Message: "authentication required"}
	errBadSender = &smtp.SMTPError{Code: 553, EnhancedCode: smtp.EnhancedCode{5, 1, 7},
		Message: "malformed sender address"}
	errBadRecipient = &smtp.SMTPError{Code: 553, EnhancedCode: smtp.EnhancedCode{5, 1, 3},
		Message: "recipient address must be local-part@domain"}
	errReadFailed = &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 4, 2},
		Message: "message not received whole; try again"}
	errAuthTooMany = &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 7, 0},
		Message: fmt.Sprintf("authentication failed %d times; closing the connection", authSessionFailures)}
	errBadHelo = &smtp.SMTPError{Code: 501, EnhancedCode: smtp.EnhancedCode{5, 5, 2},
		Message: "EHLO/HELO argument has a control character (NUL, CR, LF, ...)"}
	errControlSender = &smtp.SMTPError{Code: 501, EnhancedCode: smtp.EnhancedCode{5, 1, 7},
		Message: "sender address has a control character (NUL, CR, LF, ...)"}
	errControlRecipient = &smtp.SMTPError{Code: 501, EnhancedCode: smtp.EnhancedCode{5, 1, 3},
		Message: "recipient address has a control character (NUL, CR, LF, ...)"}
	errQueueFull = &smtp.SMTPError{Code: 452, EnhancedCode: smtp.EnhancedCode{4, 3, 1},
		Message: "the queue is full; try again later"}
	errQueueUnavailable = &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0},
		Message: "the queue cannot take the message now; try again later"}
)

// Mail starts a transaction, if the client may relay.
func (s *session) Mail(from string, opts *smtp.MailOptions) error {
	if err := s.cs.refusal(); err != nil {
		return err
	}
	if hasControl(from) {
		return errControlSender
	}
	if s.user == "" && !s.cs.inRelayNetworks {
		s.cs.update(func(st *sessionStats) { st.relayDenied++ })
		if s.h.auth != nil {
			return errAuthRequired
		}
		return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 7, 1},
			Message: fmt.Sprintf("relay access denied: %s may not relay", s.cs.remote)}
	}
	if strings.ContainsAny(from, "<>\r\n ") {
		return errBadSender
	}
	_, isTLS := s.conn.TLSConnectionState()
	s.tx = transaction{helo: s.helo, user: s.user, tls: isTLS, from: from, opts: opts}
	return nil
}

// Rcpt adds a recipient; the address must have a domain. A recipient given
// twice is kept once.
func (s *session) Rcpt(to string, opts *smtp.RcptOptions) error {
	if err := s.cs.refusal(); err != nil {
		return err
	}
	if hasControl(to) {
		return errControlRecipient
	}
	at := strings.LastIndexByte(to, '@')
	if at <= 0 || at == len(to)-1 || strings.ContainsAny(to, "<>\r\n ") {
		return errBadRecipient
	}
	if s.seen[to] {
		return nil
	}
	if s.seen == nil {
		s.seen = map[string]bool{}
	}
	if checker, ok := s.h.app.(delivery.RecipientChecker); ok {
		// A domain that does not exist or takes no mail is refused now,
		// rather than bounced later.
		ctx, cancel := context.WithTimeout(s.h.ctx, 30*time.Second)
		rep := checker.CheckRecipient(ctx, s.tx.from, to)
		cancel()
		if rep != nil {
			return replyError(rep)
		}
	}
	s.seen[to] = true
	r := transport.Recipient{Addr: to}
	for _, n := range opts.Notify {
		r.Notify = append(r.Notify, string(n))
	}
	if opts.OriginalRecipientType == smtp.DSNAddressTypeRFC822 {
		r.ORCPT = opts.OriginalRecipient
	}
	s.tx.rcpts = append(s.tx.rcpts, r)
	return nil
}

// Data receives the message into the queue and answers once the queue
// has it on stable storage: "250 2.0.0 queued as ID". From then on the
// message is the queue's to deliver, retry and report on.
func (s *session) Data(r io.Reader) error {
	// With BDAT, go-smtp calls Data in a goroutine of its own while it
	// goes on reading commands (RSET among them): the envelope is copied
	// before the first read, which the first chunk waits for.
	tx := s.tx
	tx.rcpts = slices.Clone(tx.rcpts)
	if err := s.cs.refusal(); err != nil {
		return err
	}

	id := queue.NewID(time.Now())
	s.cs.conn.setInData(true)
	size, err := s.enqueue(r, tx, id)
	s.cs.conn.setInData(false)
	if err != nil {
		result := resultRefused
		if err.Code/100 == 4 {
			result = resultDeferred
		}
		s.finish(id, tx, verdict{code: err.Code, result: result}, size)
		return err
	}
	s.finish(id, tx, verdict{code: 250, result: resultQueued}, size)
	return &smtp.SMTPError{Code: 250, EnhancedCode: smtp.EnhancedCode{2, 0, 0}, Message: "queued as " + id}
}

// countingReader counts what passes, and turns the end of the message
// into the connection's read error, when it has one: go-smtp ends a BDAT
// chunk cut short by the end of the connection as if it were whole, and a
// message cut short must fail before the queue commits it.
type countingReader struct {
	r       io.Reader
	n       int64
	readErr func() error
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	if err == io.EOF {
		switch rerr := c.readErr(); {
		case rerr == io.EOF:
			// The connection ended before the data did.
			return n, io.ErrUnexpectedEOF
		case rerr != nil:
			return n, rerr
		}
	}
	return n, err
}

// enqueue streams the message, after the Received header, into the queue,
// and returns its size. The error is the reply: 552 for a message too
// large; 554 for a line too long; 421 for a read that failed (a timeout, a
// connection cut), after which the connection is closed, since the rest of
// what the client sent cannot be told from commands; 452 for a queue that
// is full; 451 for one that cannot be reached.
func (s *session) enqueue(r io.Reader, tx transaction, id string) (int64, *smtp.SMTPError) {
	lines := &lineLimiter{r: r, max: s.h.MaxLineLength, line: 1}
	counted := &countingReader{r: lines, readErr: s.cs.conn.readError}
	msg := &delivery.Message{
		ID: id, From: tx.from, To: tx.rcpts, Source: "smtp",
		Reader:     io.MultiReader(strings.NewReader(s.receivedHeader(id, tx)), counted),
		EightBit:   tx.opts.Body == smtp.Body8BitMIME,
		SMTPUTF8:   tx.opts.UTF8,
		RequireTLS: tx.opts.RequireTLS,
		Ret:        string(tx.opts.Return),
		EnvID:      tx.opts.EnvelopeID,
	}
	// Not cancelled with the config: a message being stored during a
	// reload is stored.
	_, err := s.h.app.Enqueue(context.WithoutCancel(s.h.ctx), msg)
	s.cs.update(func(st *sessionStats) { st.bytes += counted.n })
	// go-smtp ends a BDAT chunk cut short by the end of the connection as
	// if it were whole: the read error says it was not. The queue then
	// has not kept it: the read error failed its Add.
	readErr := s.cs.conn.readError()
	var tooLong *lineTooLongError
	var smtpErr *smtp.SMTPError
	switch {
	case err == nil && readErr == nil:
		return counted.n, nil
	case err == nil:
		// Stored whole (the end of the data was read before the stream
		// broke): it is the queue's now, and the session ends.
		s.breakConn()
		return counted.n, nil
	case errors.As(err, &tooLong):
		// go-smtp reads the rest of the data, or of the chunk, and drops
		// it: the session goes on.
		return counted.n, tooLong.reply()
	case errors.Is(err, smtp.ErrTooLongLine):
		// go-smtp's own line limit, which is above max_line_length, cut
		// the read; what the chunk held is lost, and its reader fails
		// from now on.
		s.breakConn()
		return counted.n, (&lineTooLongError{line: lines.line, max: lines.max, atLeast: true}).reply()
	case readErr != nil:
		s.breakConn()
		return counted.n, brokenReply("message", readErr)
	case errors.As(err, &smtpErr): // go-smtp's 552
		return counted.n, smtpErr
	case errors.Is(err, smtp.ErrDataReset):
		// RSET (or EHLO) in the middle of a BDAT transfer: nobody reads
		// this reply.
		return counted.n, errReadFailed
	case errors.Is(err, delivery.ErrQueueFull):
		s.h.logger.Warn("queue full: message refused for now", zap.String("id", id), zap.Error(err))
		return counted.n, errQueueFull
	case errors.Is(err, delivery.ErrQueueUnavailable):
		s.h.logger.Error("queue unavailable: message refused for now", zap.String("id", id), zap.Error(err))
		return counted.n, errQueueUnavailable
	case isReadError(err):
		// The end of the stream (a TLS close_notify) with the
		// connection itself sound.
		s.breakConn()
		return counted.n, brokenReply("message", err)
	}
	s.h.logger.Error("queueing a message", zap.String("id", id), zap.Error(err))
	return counted.n, errQueueUnavailable
}

// breakConn marks the connection broken, and has it closed after the
// reply at hand.
func (s *session) breakConn() {
	s.cs.markBroken()
	s.cs.conn.closeAfterWrite()
}

// finish counts and logs a message's outcome.
func (s *session) finish(id string, tx transaction, v verdict, size int64) {
	s.cs.update(func(st *sessionStats) {
		switch v.result {
		case resultQueued:
			st.queued++
		case resultDeferred:
			st.deferred++
		default:
			st.refused++
		}
	})
	metricMessage(v.result)
	rcpts := make([]string, len(tx.rcpts))
	for i, r := range tx.rcpts {
		rcpts[i] = r.Addr
	}
	s.h.logger.Info("smtp message",
		zap.String("id", id),
		zap.String("remote", s.cs.remote.String()),
		zap.String("user", tx.user),
		zap.String("from", tx.from),
		zap.Strings("to", rcpts),
		zap.Int64("size", size),
		zap.String("result", v.result),
		zap.Int("reply_code", v.code),
	)
}

// receivedHeader is the trace header RFC 5321 (4.4) asks every relay to
// add: who sent the message, who took it, with which protocol (RFC 3848:
// ESMTP, with S for TLS and A for AUTH), and for whom, when there is only
// one recipient.
func (s *session) receivedHeader(id string, tx transaction) string {
	proto := "ESMTP"
	if tx.tls {
		proto += "S"
	}
	if tx.user != "" {
		proto += "A"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "Received: from %s ([%s])\r\n\tby %s (caddy-smtp) with %s id %s", tx.helo, s.cs.remote, s.h.Hostname, proto, id)
	if len(tx.rcpts) == 1 {
		fmt.Fprintf(&b, "\r\n\tfor <%s>", tx.rcpts[0].Addr)
	}
	fmt.Fprintf(&b, ";\r\n\t%s\r\n", time.Now().Format(time.RFC1123Z))
	return b.String()
}

// Reset ends the transaction in progress. go-smtp calls it for RSET, at
// the end of a message, and for an EHLO or HELO after the first, which
// has no other hook: its argument is checked here. go-smtp has already
// taken it and would answer 250, so a bad one gets 501 here, written
// directly, and the connection is closed before go-smtp's reply.
func (s *session) Reset() {
	s.tx, s.seen = transaction{}, nil
	helo := s.conn.Hostname()
	if helo == s.helo {
		return
	}
	if err := checkHelo(helo); err != nil {
		s.cs.markBroken()
		s.writeAndClose(err)
		return
	}
	s.helo = helo
	s.cs.update(func(st *sessionStats) { st.helo = helo })
}

// writeAndClose writes a one-line reply on the connection, under TLS if
// it has started, and closes the connection. It is for go-smtp's
// goroutine only, between two of its replies.
func (s *session) writeAndClose(e *smtp.SMTPError) {
	c := s.conn.Conn()
	_ = c.SetWriteDeadline(time.Now().Add(time.Duration(s.h.WriteTimeout)))
	_, _ = fmt.Fprintf(c, "%d %d.%d.%d %s\r\n", e.Code, e.EnhancedCode[0], e.EnhancedCode[1], e.EnhancedCode[2], e.Message)
	_ = s.cs.conn.Close()
}

// Logout ends the session.
func (s *session) Logout() error { return nil }

// AuthMechanisms are the SASL mechanisms offered: PLAIN and LOGIN when
// users are configured, none otherwise. go-smtp offers them only after
// STARTTLS, unless allow_insecure_auth.
func (s *session) AuthMechanisms() []string {
	if s.h.auth == nil {
		return nil
	}
	return []string{mechPlain, mechLogin}
}

// Auth starts the server side of a mechanism.
func (s *session) Auth(mech string) (sasl.Server, error) {
	if s.h.auth == nil {
		return nil, smtp.ErrAuthUnsupported
	}
	if err := s.cs.refusal(); err != nil {
		return nil, err
	}
	return saslServer(mech, func(username, password string) error {
		// The response may be a line cut short by the read timeout.
		if err := s.cs.refusal(); err != nil {
			return err
		}
		err := s.h.auth.check(s.cs.remote, username, password)
		if err == nil {
			s.user = username
			s.cs.update(func(st *sessionStats) { st.user = username })
			metricAuth(authSuccess)
			return nil
		}
		result := authFailure
		if !errors.Is(err, smtp.ErrAuthFailed) {
			result = authThrottled
		}
		metricAuth(result)
		var failures int
		s.cs.update(func(st *sessionStats) {
			st.authFailures++
			failures = st.authFailures
		})
		s.h.logger.Warn("smtp authentication failed",
			zap.String("remote", s.cs.remote.String()), zap.String("user", username),
			zap.String("result", result), zap.Error(err))
		if failures >= authSessionFailures {
			s.cs.markBroken()
			s.cs.conn.closeAfterWrite()
			return errAuthTooMany
		}
		return err
	})
}

// isReadError tells a failure to read the client (a timeout, a dropped
// connection, an aborted BDAT transfer) from a failure to spool.
func isReadError(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) ||
		errors.Is(err, net.ErrClosed) || errors.Is(err, smtp.ErrDataReset)
}

// newID returns a random identifier for a message, for the Received header
// and the log lines.
func newID() string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return strings.ToUpper(hex.EncodeToString(b))
}

// Interface guards
var (
	_ smtp.Session     = (*session)(nil)
	_ smtp.AuthSession = (*session)(nil)
)
