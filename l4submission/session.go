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
	"github.com/seed7b014b84/caddy-smtp/transport"
)

// session is one go-smtp session: from EHLO to QUIT, or to STARTTLS (after
// which go-smtp starts a new one). It holds the transaction in progress.
type session struct {
	h    *Handler
	cs   *connState
	conn *smtp.Conn
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

func newSession(h *Handler, cs *connState, c *smtp.Conn) *session {
	st, isTLS := c.TLSConnectionState()
	cs.update(func(s *sessionStats) {
		s.helo = c.Hostname()
		s.tls = tlsName(st, isTLS)
	})
	return &session{h: h, cs: cs, conn: c}
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
	errSpoolFailed = &smtp.SMTPError{Code: 452, EnhancedCode: smtp.EnhancedCode{4, 3, 1},
		Message: "cannot hold the message now; try again later"}
)

// Mail starts a transaction, if the client may relay.
func (s *session) Mail(from string, opts *smtp.MailOptions) error {
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
	s.tx = transaction{helo: s.conn.Hostname(), user: s.user, tls: isTLS, from: from, opts: opts}
	return nil
}

// Rcpt adds a recipient; the address must have a domain. A recipient given
// twice is kept once.
func (s *session) Rcpt(to string, opts *smtp.RcptOptions) error {
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

// Data receives the message, delivers it, and answers with the outcome.
func (s *session) Data(r io.Reader) error {
	// With BDAT, go-smtp calls Data in a goroutine of its own while it
	// goes on reading commands (RSET among them): the envelope is copied
	// before the first read, which the first chunk waits for.
	tx := s.tx
	tx.rcpts = slices.Clone(tx.rcpts)

	id := newID()
	sp := new(spool)
	defer func() { _ = sp.Close() }()
	key, err := s.receive(r, sp, tx, id)
	var tooLarge *smtp.SMTPError
	switch {
	case errors.As(err, &tooLarge):
		s.finish(id, tx, verdict{code: tooLarge.Code, result: resultRefused}, sp.Size())
		return tooLarge
	case err != nil:
		return err
	}
	v := s.relay(tx, sp, key)
	s.finish(id, tx, v, sp.Size())
	return v.reply()
}

// receive reads the message into the spool, after the Received header,
// and returns its key for the ledger. The error is a reply: 552 for a
// message too large, 451 for a client that went away, 452 for a spool
// that failed.
func (s *session) receive(r io.Reader, sp *spool, tx transaction, id string) (messageKey, error) {
	if _, err := io.WriteString(sp, s.receivedHeader(id, tx)); err != nil {
		return messageKey{}, errSpoolFailed
	}
	sum := newMessageHash(tx.from)
	n, err := io.Copy(io.MultiWriter(sp, sum), r)
	s.cs.update(func(st *sessionStats) { st.bytes += n })
	if err != nil {
		var smtpErr *smtp.SMTPError
		switch {
		case errors.As(err, &smtpErr): // go-smtp's 552
			return messageKey{}, smtpErr
		case isReadError(err):
			return messageKey{}, errReadFailed
		}
		s.h.logger.Error("spooling a message", zap.String("id", id), zap.Error(err))
		return messageKey{}, errSpoolFailed
	}
	return keyOf(sum), nil
}

// relay delivers the message to the recipients it was not delivered to
// yet, records the outcome in the ledger, and returns the reply.
func (s *session) relay(tx transaction, sp *spool, key messageKey) verdict {
	already := deliveredLedger.delivered(key, time.Now())
	var todo []transport.Recipient
	var skipped []string
	for _, rc := range tx.rcpts {
		if already[rc.Addr] {
			skipped = append(skipped, rc.Addr)
			continue
		}
		todo = append(todo, rc)
	}

	report := new(delivery.Report)
	if len(todo) > 0 {
		msg := &delivery.Message{
			From: tx.from, To: todo, Body: sp.ReaderAt(), Size: sp.Size(),
			EightBit:   sp.eightBit || tx.opts.Body == smtp.Body8BitMIME,
			SMTPUTF8:   tx.opts.UTF8 && headersNeedUTF8(sp.ReaderAt(), sp.Size()),
			RequireTLS: tx.opts.RequireTLS,
			Ret:        string(tx.opts.Return),
			EnvID:      tx.opts.EnvelopeID,
		}
		// Not cancelled with the config: a delivery in flight during a
		// reload finishes (bounded by delivery_timeout).
		ctx, cancel := context.WithTimeout(context.WithoutCancel(s.h.ctx), time.Duration(s.h.DeliveryTimeout))
		var err error
		report, err = s.h.app.Deliver(ctx, msg)
		cancel()
		if err != nil {
			return verdict{code: 554, enhanced: smtp.EnhancedCode{5, 3, 0}, lines: []string{oneLine(err.Error())},
				result: resultRefused, already: len(skipped)}
		}
	}
	v := decide(report, len(skipped))
	if v.result == resultDeferred {
		deliveredLedger.remember(key, append(skipped, v.delivered...), time.Now())
	} else {
		deliveredLedger.forget(key)
	}
	return v
}

// finish counts and logs a message's outcome.
func (s *session) finish(id string, tx transaction, v verdict, size int64) {
	s.cs.update(func(st *sessionStats) {
		switch v.result {
		case resultDelivered:
			st.delivered++
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
		zap.Int("already_delivered", v.already),
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

// Reset ends the transaction in progress.
func (s *session) Reset() {
	s.tx, s.seen = transaction{}, nil
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
	return saslServer(mech, func(username, password string) error {
		if err := s.h.auth.check(username, password); err != nil {
			s.cs.update(func(st *sessionStats) { st.authFailures++ })
			metricAuth(false)
			s.h.logger.Warn("smtp authentication failed",
				zap.String("remote", s.cs.remote.String()), zap.String("user", username))
			return err
		}
		s.user = username
		s.cs.update(func(st *sessionStats) { st.user = username })
		metricAuth(true)
		return nil
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
