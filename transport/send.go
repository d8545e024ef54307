package transport

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"unicode/utf8"
)

// Envelope is what a transaction carries besides the message.
type Envelope struct {
	// From is the envelope sender; "" is the null sender of a bounce.
	From string
	// To are the recipients.
	To []Recipient
	// Size is the message's size in octets as it goes on the wire (every
	// line end CRLF, RFC 1870; see WireSize), when known: declared as
	// SIZE= and checked against the server's limit before anything is
	// sent. When the body Deliver is given can be re-read (an io.Seeker:
	// io.SectionReader, bytes.Reader, os.File) and the server announced
	// SIZE, Deliver measures the size itself and this field is not used.
	Size int64
	// EightBit says the body has 8-bit text (BODY=8BITMIME).
	EightBit bool
	// SMTPUTF8 says the message needs SMTPUTF8 (RFC 6531) even if the
	// addresses are ASCII (UTF-8 headers). Non-ASCII addresses need it
	// anyway.
	SMTPUTF8 bool
	// Ret is the DSN RET parameter, "FULL" or "HDRS", or "".
	Ret string
	// EnvID is the DSN ENVID parameter, or "".
	EnvID string
	// RequireTLS asks for REQUIRETLS (RFC 8689): the message goes only over
	// TLS to a server that offers REQUIRETLS.
	RequireTLS bool
}

// Recipient is one envelope recipient.
type Recipient struct {
	Addr string
	// Notify is the DSN NOTIFY parameter (NEVER, or SUCCESS, FAILURE,
	// DELAY), empty for none.
	Notify []string
	// ORCPT is the original recipient (DSN ORCPT), or "".
	ORCPT string
}

// Status is a recipient's outcome.
type Status int

// The outcomes.
const (
	// Deferred: not delivered this time; try again later (4xx, a dropped
	// connection, a timeout).
	Deferred Status = iota
	// Delivered: the server accepted the message for the recipient.
	Delivered
	// Failed: the server refused the recipient for good (5xx), or the
	// message cannot be sent to it (too big, needs SMTPUTF8).
	Failed
)

func (s Status) String() string {
	switch s {
	case Delivered:
		return "delivered"
	case Failed:
		return "failed"
	}
	return "deferred"
}

// MarshalText writes the status's name.
func (s Status) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// RcptResult is one recipient's outcome, with the reply that decided it.
type RcptResult struct {
	Rcpt   string `json:"rcpt"`
	Status Status `json:"status"`
	// Reply is the server's reply (or one made up for a refusal before
	// sending: 552 5.3.4 for size, 553 5.6.7 for SMTPUTF8).
	Reply Reply `json:"reply"`
	// Err is the session error that left the recipient deferred, if any.
	Err error `json:"-"`
}

// chunkSize is the size of a BDAT chunk; a message up to it goes in one
// chunk, pipelined with MAIL and RCPT.
const chunkSize = 256 * 1024

// Deliver sends one message to the recipients in a single transaction, and
// returns an outcome for every recipient, in the envelope's order. With
// PIPELINING, MAIL, every RCPT and DATA (or, with CHUNKING, a message of up
// to 256 KiB as BDAT ... LAST) go in one batch. The error is set when the
// session failed part way (then the recipients not yet answered are
// deferred, with it as their Err) and the client must not be used again.
//
// A recipient is delivered only on a 2xx reply to the end of the message.
// A reply that breaks the protocol (2xx to DATA, 3xx where only 2xx
// accepts) is an error wrapping ErrProtocol, and so is anything the server
// sent before the transaction's first command: the session is closed and
// the recipients deferred.
func (c *Client) Deliver(ctx context.Context, env *Envelope, body io.Reader) ([]RcptResult, error) {
	if c.broken {
		return nil, errors.New("smtp: session is closed")
	}
	results := make([]RcptResult, len(env.To))
	for i, r := range env.To {
		results[i] = RcptResult{Rcpt: r.Addr, Status: Deferred}
	}
	size, err := c.wireSize(env, body)
	if err != nil {
		return c.settle(results, err)
	}
	active := c.precheck(env, size, results)
	if len(active) == 0 {
		return results, nil
	}
	if err := c.unasked(); err != nil {
		return c.settle(results, err)
	}
	return c.settle(results, c.transaction(ctx, env, size, body, results, active))
}

// settle ends Deliver: with err set, the recipients not yet answered are
// deferred with err, and the session is closed.
func (c *Client) settle(results []RcptResult, err error) ([]RcptResult, error) {
	if err != nil {
		for i := range results {
			if results[i].Status == Deferred && results[i].Reply.Code == 0 {
				results[i].Err = err
			}
		}
		c.broken = true
		_ = c.conn.Close()
		return results, err
	}
	return results, nil
}

// wireSize returns the size to declare as SIZE=: measured on body when the
// server announced SIZE and body can be re-read (it is then put back where
// it was), env.Size otherwise.
func (c *Client) wireSize(env *Envelope, body io.Reader) (int64, error) {
	seeker, ok := body.(io.Seeker)
	if !ok || c.helo || !c.caps.Has("SIZE") {
		return env.Size, nil
	}
	start, err := seeker.Seek(0, io.SeekCurrent)
	if err != nil {
		return env.Size, nil // not seekable after all: declare what we were told
	}
	if c.sizeBuf == nil {
		c.sizeBuf = make([]byte, normBufSize)
	}
	n, err := wireSize(body, c.sizeBuf)
	if err != nil {
		return 0, &Error{Phase: PhaseData, Err: fmt.Errorf("reading the message: %w", err)}
	}
	if _, err := seeker.Seek(start, io.SeekStart); err != nil {
		return 0, &Error{Phase: PhaseData, Err: fmt.Errorf("reading the message: %w", err)}
	}
	return n, nil
}

// precheck refuses, before anything is sent, what this server cannot take:
// a message over its SIZE, non-ASCII addresses without SMTPUTF8, REQUIRETLS
// without TLS or without the extension. It returns the indexes of the
// recipients still to send to.
func (c *Client) precheck(env *Envelope, size int64, results []RcptResult) []int {
	failAll := func(code int, enh, text string) []int {
		for i := range results {
			results[i].Status = Failed
			results[i].Reply = Reply{Code: code, Enhanced: enh, Lines: []string{text}, Local: true}
		}
		return nil
	}
	if limit := c.caps.Size(); limit > 0 && size > limit {
		return failAll(552, "5.3.4", fmt.Sprintf("message size %d exceeds the server's limit of %d", size, limit))
	}
	if env.RequireTLS {
		switch {
		case c.tls == nil:
			return failAll(550, "5.7.30", "REQUIRETLS: the message may not be sent without TLS")
		case !c.caps.Has("REQUIRETLS"):
			return failAll(550, "5.7.30", "REQUIRETLS: the server does not support REQUIRETLS")
		}
	}
	utf8OK := c.caps.Has("SMTPUTF8")
	if !utf8OK && (env.SMTPUTF8 || !isASCII(env.From)) {
		return failAll(553, "5.6.7", "the message needs SMTPUTF8, which the server does not offer")
	}
	var active []int
	for i, r := range env.To {
		if !utf8OK && !isASCII(r.Addr) {
			results[i].Status = Failed
			results[i].Reply = Reply{Code: 553, Enhanced: "5.6.7", Lines: []string{"non-ASCII address, and the server does not offer SMTPUTF8"}, Local: true}
			continue
		}
		if strings.ContainsAny(r.Addr, "<>\r\n ") {
			results[i].Status = Failed
			results[i].Reply = Reply{Code: 553, Enhanced: "5.1.3", Lines: []string{"malformed recipient address"}, Local: true}
			continue
		}
		active = append(active, i)
	}
	return active
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= utf8.RuneSelf {
			return false
		}
	}
	return true
}

// mailFrom builds the MAIL command with the parameters the server takes;
// size is the message's size on the wire (0: unknown, not declared).
func (c *Client) mailFrom(env *Envelope, size int64) string {
	var b strings.Builder
	b.WriteString("MAIL FROM:<")
	b.WriteString(env.From)
	b.WriteByte('>')
	if c.helo {
		return b.String()
	}
	if size > 0 && c.caps.Has("SIZE") {
		b.WriteString(" SIZE=")
		b.WriteString(strconv.FormatInt(size, 10))
	}
	if env.EightBit && c.caps.Has("8BITMIME") {
		b.WriteString(" BODY=8BITMIME")
	}
	if c.caps.Has("SMTPUTF8") && (env.SMTPUTF8 || !isASCII(env.From) || anyNonASCII(env.To)) {
		b.WriteString(" SMTPUTF8")
	}
	if c.caps.Has("DSN") {
		if env.Ret != "" {
			b.WriteString(" RET=" + env.Ret)
		}
		if env.EnvID != "" {
			b.WriteString(" ENVID=" + xtext(env.EnvID))
		}
	}
	if env.RequireTLS && c.caps.Has("REQUIRETLS") {
		b.WriteString(" REQUIRETLS")
	}
	return b.String()
}

func anyNonASCII(rs []Recipient) bool {
	for _, r := range rs {
		if !isASCII(r.Addr) {
			return true
		}
	}
	return false
}

// rcptTo builds a RCPT command.
func (c *Client) rcptTo(r Recipient) string {
	line := "RCPT TO:<" + r.Addr + ">"
	if c.caps.Has("DSN") && !c.helo {
		if len(r.Notify) > 0 {
			line += " NOTIFY=" + strings.Join(r.Notify, ",")
		}
		if r.ORCPT != "" {
			line += " ORCPT=rfc822;" + xtext(r.ORCPT)
		}
	}
	return line
}

// xtext encodes s as RFC 3461's xtext.
func xtext(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		ch := s[i]
		if ch < '!' || ch > '~' || ch == '+' || ch == '=' {
			fmt.Fprintf(&b, "+%02X", ch)
			continue
		}
		b.WriteByte(ch)
	}
	return b.String()
}

// transaction runs MAIL, RCPT and the data transfer, filling results.
func (c *Client) transaction(ctx context.Context, env *Envelope, size int64, body io.Reader, results []RcptResult, active []int) error {
	pipelining := c.caps.Has("PIPELINING")
	chunking := c.caps.Has("CHUNKING")

	// The body, normalized, and (for CHUNKING) its first chunk.
	if c.norm == nil {
		c.norm = newNormalizer(body, !chunking)
	} else {
		c.norm.reset(body, !chunking)
	}
	norm := c.norm
	var first []byte
	firstIsLast := false
	if chunking {
		if c.chunks[0] == nil {
			c.chunks[0] = make([]byte, 0, chunkSize)
		}
		var err error
		first, firstIsLast, err = readChunk(norm, c.chunks[0])
		if err != nil {
			return &Error{Phase: PhaseData, Err: fmt.Errorf("reading the message: %w", err)}
		}
	}

	if !pipelining {
		return c.lockstep(ctx, env, size, norm, first, firstIsLast, results, active)
	}

	// The batch: [RSET] MAIL RCPT... [DATA | BDAT n LAST].
	if c.dirty {
		if err := c.send(ctx, PhaseEHLO, "RSET"); err != nil {
			return err
		}
	}
	if err := c.send(ctx, PhaseMailFrom, c.mailFrom(env, size)); err != nil {
		return err
	}
	for _, i := range active {
		if err := c.send(ctx, PhaseRcptTo, c.rcptTo(env.To[i])); err != nil {
			return err
		}
	}
	pipelinedBDAT := chunking && firstIsLast
	switch {
	case pipelinedBDAT:
		if err := c.sendChunk(ctx, first, true); err != nil {
			return err
		}
	case !chunking:
		if err := c.send(ctx, PhaseData, "DATA"); err != nil {
			return err
		}
	}
	if err := c.flush(ctx, PhaseMailFrom); err != nil {
		return err
	}
	if err := c.finishRset(ctx); err != nil {
		return err
	}
	mail, err := c.read(ctx, PhaseMailFrom)
	if err != nil {
		return err
	}
	if err := acceptance(PhaseMailFrom, "MAIL", mail); err != nil {
		return err
	}
	var accepted []int
	for _, i := range active {
		rep, err := c.read(ctx, PhaseRcptTo)
		if err != nil {
			return err
		}
		if err := acceptance(PhaseRcptTo, "RCPT", rep); err != nil {
			return err
		}
		switch {
		case !mail.Success():
			setOne(results, i, mail)
		case !rep.Success():
			setOne(results, i, rep)
		default:
			accepted = append(accepted, i)
		}
	}
	switch {
	case pipelinedBDAT:
		if len(accepted) == 0 {
			// The server read the chunk and refused it (no valid
			// recipients): its reply is read and the state reset.
			if _, err := c.read(ctx, PhaseData); err != nil {
				return err
			}
			c.dirty = true
			return nil
		}
		return c.finalReplies(ctx, results, accepted)
	case chunking:
		if len(accepted) == 0 {
			c.dirty = true
			return nil
		}
		return c.bdat(ctx, norm, first, firstIsLast, results, accepted)
	}
	rep, err := c.read(ctx, PhaseData)
	if err != nil {
		return err
	}
	if err := dataAcceptance(rep); err != nil {
		return err
	}
	if rep.Code != 354 {
		c.dirty = true
		if len(accepted) > 0 {
			setAll(results, accepted, rep)
		}
		return nil
	}
	if len(accepted) == 0 {
		// DATA was accepted though no recipient was: send an empty
		// message's end, which the server must refuse (RFC 2920).
		if err := c.send(ctx, PhaseData, "."); err != nil {
			return err
		}
		if err := c.flush(ctx, PhaseData); err != nil {
			return err
		}
		_, err := c.read(ctx, PhaseData)
		c.dirty = true
		return err
	}
	return c.dataBody(ctx, norm, results, accepted)
}

// lockstep is the transaction for a server without PIPELINING: every
// command waits for its reply.
func (c *Client) lockstep(ctx context.Context, env *Envelope, size int64, norm io.Reader, first []byte, firstIsLast bool, results []RcptResult, active []int) error {
	if c.dirty {
		rep, err := c.cmd(ctx, PhaseEHLO, "RSET")
		if err != nil {
			return err
		}
		if rep.Code != 250 {
			return &Error{Phase: PhaseEHLO, Reply: &rep, Err: errors.New("RSET refused")}
		}
		c.dirty = false
	}
	mail, err := c.cmd(ctx, PhaseMailFrom, c.mailFrom(env, size))
	if err != nil {
		return err
	}
	if err := acceptance(PhaseMailFrom, "MAIL", mail); err != nil {
		return err
	}
	if !mail.Success() {
		c.dirty = true
		setAll(results, active, mail)
		return nil
	}
	var accepted []int
	for _, i := range active {
		rep, err := c.cmd(ctx, PhaseRcptTo, c.rcptTo(env.To[i]))
		if err != nil {
			return err
		}
		if err := acceptance(PhaseRcptTo, "RCPT", rep); err != nil {
			return err
		}
		if rep.Success() {
			accepted = append(accepted, i)
		} else {
			setOne(results, i, rep)
		}
	}
	if len(accepted) == 0 {
		c.dirty = true
		return nil
	}
	if c.caps.Has("CHUNKING") {
		return c.bdat(ctx, norm, first, firstIsLast, results, accepted)
	}
	rep, err := c.cmd(ctx, PhaseData, "DATA")
	if err != nil {
		return err
	}
	if err := dataAcceptance(rep); err != nil {
		return err
	}
	if rep.Code != 354 {
		c.dirty = true
		setAll(results, accepted, rep)
		return nil
	}
	return c.dataBody(ctx, norm, results, accepted)
}

// finishRset reads the reply to a pipelined RSET.
func (c *Client) finishRset(ctx context.Context) error {
	if !c.dirty {
		return nil
	}
	rep, err := c.read(ctx, PhaseEHLO)
	if err != nil {
		return err
	}
	if rep.Code != 250 {
		return &Error{Phase: PhaseEHLO, Reply: &rep, Err: errors.New("RSET refused")}
	}
	c.dirty = false
	return nil
}

// dataBody streams the message after a 354 and reads the final reply (or,
// for LMTP, one per accepted recipient).
func (c *Client) dataBody(ctx context.Context, norm io.Reader, results []RcptResult, accepted []int) error {
	stop := c.deadline(ctx, PhaseData, false)
	_, err := io.Copy(c.bw, norm)
	if err == nil {
		_, err = c.bw.WriteString(".\r\n")
	}
	if err == nil {
		err = c.bw.Flush()
	}
	stop()
	if err != nil {
		return c.fail(ctx, PhaseData, err)
	}
	return c.finalReplies(ctx, results, accepted)
}

// bdat sends the message as BDAT chunks, each waiting for its reply.
func (c *Client) bdat(ctx context.Context, norm io.Reader, chunk []byte, last bool, results []RcptResult, accepted []int) error {
	if c.chunks[1] == nil {
		c.chunks[1] = make([]byte, 0, chunkSize)
	}
	spare := c.chunks[1]
	defer func() { c.chunks[0], c.chunks[1] = chunk[:0], spare[:0] }()
	for {
		if !last {
			// Read ahead, to know whether this chunk is the last.
			next, nextLast, err := readChunk(norm, spare)
			if err != nil {
				return &Error{Phase: PhaseData, Err: fmt.Errorf("reading the message: %w", err)}
			}
			if len(next) == 0 && nextLast {
				last = true
			} else {
				if err := c.sendChunk(ctx, chunk, false); err != nil {
					return err
				}
				if err := c.flush(ctx, PhaseData); err != nil {
					return err
				}
				rep, err := c.read(ctx, PhaseData)
				if err != nil {
					return err
				}
				if err := acceptance(PhaseData, "BDAT", rep); err != nil {
					return err
				}
				if !rep.Success() {
					c.dirty = true
					setAll(results, accepted, rep)
					// The rest of the message is not sent: a chunk
					// refused ends the transaction (RFC 3030).
					return nil
				}
				chunk, spare = next, chunk[:0]
				last = nextLast
				continue
			}
		}
		if err := c.sendChunk(ctx, chunk, true); err != nil {
			return err
		}
		if err := c.flush(ctx, PhaseData); err != nil {
			return err
		}
		return c.finalReplies(ctx, results, accepted)
	}
}

// sendChunk buffers "BDAT n [LAST]" and the chunk.
func (c *Client) sendChunk(ctx context.Context, chunk []byte, last bool) error {
	line := "BDAT " + strconv.Itoa(len(chunk))
	if last {
		line += " LAST"
	}
	if err := c.send(ctx, PhaseData, line); err != nil {
		return err
	}
	stop := c.deadline(ctx, PhaseData, false)
	defer stop()
	if _, err := c.bw.Write(chunk); err != nil {
		return c.fail(ctx, PhaseData, err)
	}
	return nil
}

// finalReplies reads the reply to the end of the message: one for SMTP,
// one per accepted recipient for LMTP (RFC 2033).
func (c *Client) finalReplies(ctx context.Context, results []RcptResult, accepted []int) error {
	if c.opts.Protocol != LMTP {
		rep, err := c.read(ctx, PhaseData)
		if err != nil {
			return err
		}
		if err := acceptance(PhaseData, "the end of the message", rep); err != nil {
			return err
		}
		setAll(results, accepted, rep)
		c.done(rep)
		return nil
	}
	var last Reply
	for _, i := range accepted {
		rep, err := c.read(ctx, PhaseData)
		if err != nil {
			return err
		}
		if err := acceptance(PhaseData, "the end of the message", rep); err != nil {
			// The recipients answered before keep their replies; the
			// others are deferred.
			return err
		}
		setOne(results, i, rep)
		last = rep
	}
	c.done(last)
	return nil
}

func (c *Client) done(last Reply) {
	c.messages++
	if !last.Success() {
		c.dirty = true
	}
}

// readChunk reads up to chunkSize bytes of the normalized body into buf
// (whose capacity is chunkSize). last is true when the body ended within
// them.
func readChunk(r io.Reader, buf []byte) (chunk []byte, last bool, err error) {
	buf = buf[:chunkSize]
	n, err := io.ReadFull(r, buf)
	switch err {
	case nil:
		return buf, false, nil
	case io.EOF, io.ErrUnexpectedEOF:
		return buf[:n], true, nil
	}
	return nil, false, err
}

func setAll(results []RcptResult, idx []int, rep Reply) {
	for _, i := range idx {
		setOne(results, i, rep)
	}
}

// setOne records the reply that decided recipient i: delivered only on a
// 2xx reply (acceptance has made any other positive reply an error before),
// failed on 5xx, deferred otherwise.
func setOne(results []RcptResult, i int, rep Reply) {
	results[i].Reply = rep
	switch {
	case rep.Success():
		results[i].Status = Delivered
	case rep.Class() == PermanentNegative:
		results[i].Status = Failed
	default:
		results[i].Status = Deferred
	}
}

// acceptance checks the reply to a command that only a 2xx reply accepts
// (MAIL, RCPT, a BDAT chunk, the end of the message): a 3xx reply there is
// a protocol error, an answer to something else, and nothing after it can
// be matched to its command.
func acceptance(p Phase, what string, rep Reply) error {
	if rep.Success() || rep.Code >= 400 {
		return nil
	}
	return &Error{Phase: p, Err: fmt.Errorf("%w: %s answered with %s (want 2xx)", ErrProtocol, what, rep)}
}

// dataAcceptance checks the reply to DATA: 354 goes on, 4xx and 5xx refuse,
// and anything else (a 2xx reply, as if the message had been sent, or
// another 3xx) is a protocol error: the message was not sent, whatever
// the server says.
func dataAcceptance(rep Reply) error {
	if rep.Code == 354 || rep.Code >= 400 {
		return nil
	}
	return &Error{Phase: PhaseData, Err: fmt.Errorf("%w: DATA answered with %s (want 354)", ErrProtocol, rep)}
}
