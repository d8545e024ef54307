package transport

import (
	"crypto/tls"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/seed7b014b84/caddy-smtp/internal/peertest"
)

// waitLog waits until Postfix's log contains s.
func waitLog(t *testing.T, p *peertest.Postfix, s string) string {
	t.Helper()
	var log string
	require.Eventually(t, func() bool {
		log = p.Log()
		return strings.Contains(log, s)
	}, 10*time.Second, 50*time.Millisecond, "postfix log has %q", s)
	return log
}

func TestPostfixTLS(t *testing.T) {
	pf := peertest.StartPostfix(t, peertest.PostfixOptions{Mailbox: true})
	verified := &tls.Config{RootCAs: pf.CA.Pool()}
	wrongCA := &tls.Config{RootCAs: peertest.NewCA(t, "another CA").Pool()}

	t.Run("STARTTLS verified with the test CA", func(t *testing.T) {
		initMetrics()
		opened := testutil.ToFloat64(connections.WithLabelValues("opened", "TLS 1.3"))
		c, err := session(t, pf.SMTPAddr, Options{ServerName: pf.Hostname, TLSConfig: verified, StartTLS: TLSRequire})
		require.NoError(t, err)
		require.NotNil(t, c.TLS())
		assert.Equal(t, opened+1, testutil.ToFloat64(connections.WithLabelValues("opened", "TLS 1.3")), "counted by TLS version")
		assert.True(t, c.TLS().HandshakeComplete)
		assert.Equal(t, pf.Hostname, c.TLS().ServerName)
		assert.False(t, c.Capabilities().Has("STARTTLS"), "EHLO again after TLS: STARTTLS is not offered twice")
		res, err := c.Deliver(t.Context(), envelope("a@example.test"), strings.NewReader(testBody))
		require.NoError(t, err)
		assert.Equal(t, Delivered, res[0].Status, res[0].Reply.String())
		require.NoError(t, c.Quit())
	})
	t.Run("a wrong CA fails verification", func(t *testing.T) {
		_, err := session(t, pf.SMTPAddr, Options{ServerName: pf.Hostname, TLSConfig: wrongCA})
		require.Error(t, err)
		var e *Error
		require.ErrorAs(t, err, &e)
		assert.Equal(t, PhaseTLS, e.Phase)
		assert.Contains(t, err.Error(), "certificate signed by unknown authority")
	})
	t.Run("a wrong name fails verification", func(t *testing.T) {
		_, err := session(t, pf.SMTPAddr, Options{ServerName: "other.example.test", TLSConfig: verified})
		require.Error(t, err)
		assert.Contains(t, err.Error(), "other.example.test")
	})
	t.Run("allow_invalid_certs accepts the wrong CA", func(t *testing.T) {
		c, err := session(t, pf.SMTPAddr, Options{ServerName: pf.Hostname, TLSConfig: wrongCA, AllowInvalidCerts: true})
		require.NoError(t, err)
		require.NotNil(t, c.TLS())
		require.NoError(t, c.Quit())
	})
	t.Run("implicit TLS", func(t *testing.T) {
		c, err := session(t, pf.SMTPSAddr, Options{ServerName: pf.Hostname, TLSConfig: verified, ImplicitTLS: true})
		require.NoError(t, err)
		require.NotNil(t, c.TLS())
		res, err := c.Deliver(t.Context(), envelope("b@example.test"), strings.NewReader(testBody))
		require.NoError(t, err)
		assert.Equal(t, Delivered, res[0].Status)
		require.NoError(t, c.Quit())
	})
	t.Run("starttls disable stays in plain text", func(t *testing.T) {
		c, err := session(t, pf.SMTPAddr, Options{StartTLS: TLSDisable})
		require.NoError(t, err)
		assert.Nil(t, c.TLS())
		require.NoError(t, c.Quit())
	})
}

func TestPostfixRequireTLSWithoutSTARTTLS(t *testing.T) {
	pf := peertest.StartPostfix(t, peertest.PostfixOptions{NoTLS: true})
	_, err := session(t, pf.SMTPAddr, Options{ServerName: pf.Hostname, StartTLS: TLSRequire})
	require.Error(t, err)
	var e *Error
	require.ErrorAs(t, err, &e)
	assert.Equal(t, PhaseTLS, e.Phase)
	assert.Contains(t, err.Error(), "STARTTLS is required, and the server does not offer it")
	log := waitLog(t, pf, "disconnect from")
	assert.NotContains(t, log, "mail=", "no MAIL was sent")
}

func TestPostfixChunkingAndPipelining(t *testing.T) {
	pf := peertest.StartPostfix(t, peertest.PostfixOptions{Mailbox: true})
	c, err := session(t, pf.SMTPAddr, Options{ServerName: pf.Hostname, TLSConfig: &tls.Config{RootCAs: pf.CA.Pool()}})
	require.NoError(t, err)
	require.True(t, c.Capabilities().Has("CHUNKING"))
	var sent []string
	c.trace = func(dir, line string) {
		if dir == "C" {
			sent = append(sent, line)
		}
	}
	res, err := c.Deliver(t.Context(), envelope("a@example.test", "b@example.test"), strings.NewReader(testBody))
	require.NoError(t, err)
	for _, r := range res {
		assert.Equal(t, Delivered, r.Status, r.Reply.String())
	}
	assert.Equal(t, []string{fmt.Sprintf("MAIL FROM:<sender@example.org> SIZE=%d", len(testBody)), "RCPT TO:<a@example.test>", "RCPT TO:<b@example.test>", fmt.Sprintf("BDAT %d LAST", len(testBody))},
		sent[:4], "one batch: MAIL, RCPT, BDAT LAST")

	// A big message goes in several chunks.
	big := testBody + strings.Repeat(strings.Repeat("x", 998)+"\r\n", 600)
	res, err = c.Deliver(t.Context(), envelope("c@example.test"), strings.NewReader(big))
	require.NoError(t, err)
	assert.Equal(t, Delivered, res[0].Status, res[0].Reply.String())
	require.NoError(t, c.Quit())

	log := waitLog(t, pf, "bdat=")
	assert.Contains(t, log, "mail=2 rcpt=3 bdat=4", "Postfix counted the BDAT commands: 1, then 3 chunks of at most 256 KiB")
	assert.NotContains(t, log, "data=")
	msgs := pf.WaitMessages(t, 3, 10*time.Second)
	var found bool
	for _, m := range msgs {
		if strings.Contains(string(m), strings.Repeat("x", 998)) {
			found = true
			assert.Equal(t, 600, strings.Count(string(m), strings.Repeat("x", 998)+"\n"))
		}
	}
	assert.True(t, found)
}

func TestPostfixSMTPUTF8(t *testing.T) {
	pf := peertest.StartPostfix(t, peertest.PostfixOptions{Mailbox: true, Domains: []string{"example.test", "exämple.test"}})
	c, err := session(t, pf.SMTPAddr, Options{ServerName: pf.Hostname, TLSConfig: &tls.Config{RootCAs: pf.CA.Pool()}})
	require.NoError(t, err)
	require.True(t, c.Capabilities().Has("SMTPUTF8"))
	var mail string
	c.trace = func(dir, line string) {
		if strings.HasPrefix(line, "MAIL") {
			mail = line
		}
	}
	res, err := c.Deliver(t.Context(), &Envelope{From: "sénder@example.org", To: []Recipient{{Addr: "jösé@example.test"}}, EightBit: true},
		strings.NewReader("Subject: caf\xc3\xa9\r\n\r\nbody\r\n"))
	require.NoError(t, err)
	assert.Equal(t, Delivered, res[0].Status, res[0].Reply.String())
	assert.Contains(t, mail, " SMTPUTF8")
	assert.Contains(t, mail, " BODY=8BITMIME")
	msgs := pf.WaitMessages(t, 1, 10*time.Second)
	assert.Contains(t, string(msgs[0]), "jösé@example.test")
}

func TestPostfixSizeRefusedBeforeSending(t *testing.T) {
	pf := peertest.StartPostfix(t, peertest.PostfixOptions{MessageSizeLimit: 2000})
	c, err := session(t, pf.SMTPAddr, Options{ServerName: pf.Hostname, TLSConfig: &tls.Config{RootCAs: pf.CA.Pool()}})
	require.NoError(t, err)
	assert.Equal(t, int64(2000), c.Capabilities().Size())
	env := envelope("a@example.test", "b@example.test")
	env.Size = 5000
	res, err := c.Deliver(t.Context(), env, strings.NewReader(strings.Repeat("x", 5000)))
	require.NoError(t, err)
	for _, r := range res {
		assert.Equal(t, Failed, r.Status)
		// The body gets its final CRLF on the wire: 5002 octets.
		assert.Equal(t, "552 5.3.4 message size 5002 exceeds the server's limit of 2000", r.Reply.String())
	}
	require.NoError(t, c.Quit())
	log := waitLog(t, pf, "disconnect from")
	assert.NotContains(t, log, "mail=", "nothing was sent")
}

// TestPostfixBodyExact sends a body with bare LF, bare CR, leading dots and
// the sequences SMTP smuggling uses: it arrives whole, as one message, with
// every line break normalized (Postfix stores LF).
func TestPostfixBodyExact(t *testing.T) {
	pf := peertest.StartPostfix(t, peertest.PostfixOptions{Mailbox: true})
	body := "Subject: smuggling\r\n\r\nline one\nline two\rline three\r\n.leading dot\r\n..two dots\r\n" +
		"x\n.\nMAIL FROM:<evil@example.org>\r\n" +
		"y\r.\rRCPT TO:<victim@example.test>\r\n" +
		"z\r\n.\r\nDATA\r\nlast line"
	want := "\nline one\nline two\nline three\n.leading dot\n..two dots\n" +
		"x\n.\nMAIL FROM:<evil@example.org>\n" +
		"y\n.\nRCPT TO:<victim@example.test>\n" +
		"z\n.\nDATA\nlast line\n"
	for _, chunking := range []bool{false, true} {
		c, err := session(t, pf.SMTPAddr, Options{ServerName: pf.Hostname, TLSConfig: &tls.Config{RootCAs: pf.CA.Pool()}})
		require.NoError(t, err)
		if !chunking {
			delete(c.caps, "CHUNKING") // DATA with dot-stuffing
		}
		res, err := c.Deliver(t.Context(), envelope("exact@example.test"), strings.NewReader(body))
		require.NoError(t, err)
		require.Equal(t, Delivered, res[0].Status, res[0].Reply.String())
		require.NoError(t, c.Quit())
	}
	msgs := pf.WaitMessages(t, 2, 10*time.Second)
	require.Len(t, msgs, 2, "two messages, not more: nothing was smuggled")
	for _, m := range msgs {
		// Postfix adds Message-Id, Date and From to the header; the body,
		// after the empty line, is compared.
		_, stored, ok := strings.Cut(string(m), "\n\n")
		require.True(t, ok)
		assert.Equal(t, want, "\n"+stored)
	}
}

func TestDovecotLMTP(t *testing.T) {
	dc := peertest.StartDovecot(t, peertest.DovecotOptions{Users: []string{"alice@foobar.net", "bob@foobar.net"}})
	for _, chunking := range []bool{true, false} {
		c, err := session(t, dc.LMTPAddr, Options{Protocol: LMTP, ServerName: dc.Hostname, TLSConfig: &tls.Config{RootCAs: dc.CA.Pool()}})
		require.NoError(t, err)
		require.NotNil(t, c.TLS(), "Dovecot offers STARTTLS")
		if !chunking {
			delete(c.caps, "CHUNKING")
		}
		res, err := c.Deliver(t.Context(), envelope("alice@foobar.net", "nobody@foobar.net", "bob@foobar.net"), strings.NewReader(testBody))
		require.NoError(t, err)
		assert.Equal(t, Delivered, res[0].Status, res[0].Reply.String())
		assert.Equal(t, Failed, res[1].Status)
		assert.Equal(t, 550, res[1].Reply.Code)
		assert.Equal(t, "5.1.1", res[1].Reply.Enhanced)
		assert.Equal(t, Delivered, res[2].Status, res[2].Reply.String())
		assert.NotEqual(t, res[0].Reply.Text(), res[2].Reply.Text(), "one reply per recipient")
		require.NoError(t, c.Quit())
	}
	assert.Len(t, dc.WaitMessages(t, "alice@foobar.net", 2, 10*time.Second), 2)
	assert.Len(t, dc.WaitMessages(t, "bob@foobar.net", 2, 10*time.Second), 2)
}
