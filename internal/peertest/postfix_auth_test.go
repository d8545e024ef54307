package peertest

import (
	"crypto/tls"
	"net/smtp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// authUsers are the SASL users of the AUTH tests; the second one has a
// domain and capitals, to show that names are taken exactly.
var authUsers = map[string]string{
	"alice":           "s3cret",
	"Bob@example.org": "pa55-w0rd!",
}

// storedFor waits until the maildir holds a message delivered to rcpt and
// returns it.
func storedFor(t *testing.T, p *Postfix, rcpt string) []byte {
	t.Helper()
	return waitFor(t, 10*time.Second, func() []byte {
		for _, m := range p.Messages(t) {
			if strings.Contains(string(m), "Delivered-To: "+rcpt+"\n") {
				return m
			}
		}
		return nil
	})
}

func TestPostfixAuth(t *testing.T) {
	t.Parallel()
	ca := NewCA(t, "postfix auth test CA")
	p := StartPostfix(t, PostfixOptions{CA: ca, Mailbox: true, Users: authUsers})
	require.NotEmpty(t, p.SASLSocket)

	// swaks with STARTTLS verified under the CA, plus args.
	tlsSwaks := func(t *testing.T, args ...string) (string, error) {
		t.Helper()
		return swaks(t, append([]string{"--server", p.SMTPAddr, "--tls", "--tls-verify", "--tls-ca-path", ca.CertFile,
			"--from", "a@example.org"}, args...)...)
	}

	t.Run("EHLO advertises AUTH PLAIN LOGIN before STARTTLS", func(t *testing.T) {
		cl := ehlo(t, p.SMTPAddr)
		ok, mechs := cl.Extension("AUTH")
		require.True(t, ok, "AUTH not advertised")
		assert.ElementsMatch(t, []string{"PLAIN", "LOGIN"}, strings.Fields(mechs))
		_ = cl.Quit()
	})

	t.Run("AUTH PLAIN after STARTTLS relays to another domain", func(t *testing.T) {
		out, err := tlsSwaks(t, "--auth", "PLAIN", "--auth-user", "alice", "--auth-password", "s3cret",
			"--to", "x@other.example", "--body", "relayed plain")
		require.NoError(t, err, out)
		assert.Contains(t, out, "235 2.7.0 Authentication successful")
		m := storedFor(t, p, "x@other.example")
		assert.Contains(t, string(m), "(Authenticated sender: alice)", "the Received header names the user")
		assert.Contains(t, string(m), "relayed plain")
	})

	t.Run("AUTH LOGIN relays", func(t *testing.T) {
		out, err := tlsSwaks(t, "--auth", "LOGIN", "--auth-user", "Bob@example.org", "--auth-password", "pa55-w0rd!",
			"--to", "y@other.example", "--body", "relayed login")
		require.NoError(t, err, out)
		assert.Contains(t, out, "AUTH LOGIN")
		m := storedFor(t, p, "y@other.example")
		assert.Contains(t, string(m), "(Authenticated sender: Bob@example.org)")
	})

	t.Run("AUTH without TLS works when AuthOnlyTLS is off", func(t *testing.T) {
		out, err := swaks(t, "--server", p.SMTPAddr, "--auth", "PLAIN", "--auth-user", "alice",
			"--auth-password", "s3cret", "--from", "a@example.org", "--to", "plain@other.example")
		require.NoError(t, err, out)
		storedFor(t, p, "plain@other.example")
	})

	t.Run("AUTH on the implicit TLS listener", func(t *testing.T) {
		out, err := swaks(t, "--server", p.SMTPSAddr, "--tlsc", "--tls-verify", "--tls-ca-path", ca.CertFile,
			"--auth", "PLAIN", "--auth-user", "alice", "--auth-password", "s3cret",
			"--from", "a@example.org", "--to", "smtps@other.example")
		require.NoError(t, err, out)
		storedFor(t, p, "smtps@other.example")
	})

	t.Run("bad credentials get 535", func(t *testing.T) {
		tests := []struct{ name, mech, user, pass string }{
			{"wrong password", "PLAIN", "alice", "wrong"},
			{"wrong password with LOGIN", "LOGIN", "alice", "S3CRET"},
			{"unknown user", "PLAIN", "mallory", "s3cret"},
			{"user name case matters", "PLAIN", "ALICE", "s3cret"},
			{"another user's password", "PLAIN", "Bob@example.org", "s3cret"},
		}
		for _, tc := range tests {
			start := time.Now()
			out, err := tlsSwaks(t, "--auth", tc.mech, "--auth-user", tc.user, "--auth-password", tc.pass,
				"--to", "never@other.example")
			require.Error(t, err, "%s: %s", tc.name, out)
			assert.Contains(t, out, "535 5.7.8", tc.name)
			// No auth penalty for 127.0.0.1 (2 s and more from the
			// second failure on), only Dovecot 2.3's 500 ms failure timer.
			assert.Less(t, time.Since(start), 1800*time.Millisecond, "%s: failures are not delayed", tc.name)
		}
		// Failures do not hold up the next success from the same address.
		start := time.Now()
		out, err := tlsSwaks(t, "--auth", "PLAIN", "--auth-user", "alice", "--auth-password", "s3cret",
			"--to", "after-failures@other.example")
		require.NoError(t, err, out)
		assert.Less(t, time.Since(start), 1800*time.Millisecond, "no auth penalty after failures")
	})

	t.Run("without AUTH, relaying is refused, also from loopback", func(t *testing.T) {
		out, err := tlsSwaks(t, "--to", "z@other.example")
		require.Error(t, err, out)
		assert.Contains(t, out, "554 5.7.1")
		assert.Contains(t, out, "Relay access denied")
	})

	t.Run("without AUTH, our own domains are still accepted", func(t *testing.T) {
		out, err := tlsSwaks(t, "--to", "local@example.test", "--body", "no auth needed")
		require.NoError(t, err, out)
		m := storedFor(t, p, "local@example.test")
		assert.NotContains(t, string(m), "Authenticated sender")
	})

	t.Run("net/smtp PlainAuth", func(t *testing.T) {
		cl := ehlo(t, p.SMTPAddr)
		require.NoError(t, cl.StartTLS(&tls.Config{RootCAs: ca.Pool(), ServerName: "localhost"}))
		require.NoError(t, cl.Auth(smtp.PlainAuth("", "alice", "s3cret", "127.0.0.1")))
		require.NoError(t, cl.Mail("a@example.org"))
		require.NoError(t, cl.Rcpt("gosmtp@other.example"))
		_ = cl.Quit()
	})
}

func TestPostfixAuthOnlyTLS(t *testing.T) {
	t.Parallel()
	ca := NewCA(t, "postfix auth-only-TLS test CA")
	p := StartPostfix(t, PostfixOptions{CA: ca, Users: map[string]string{"carol": "pw"}, AuthOnlyTLS: true})

	t.Run("AUTH only after STARTTLS", func(t *testing.T) {
		cl := ehlo(t, p.SMTPAddr)
		ok, _ := cl.Extension("AUTH")
		assert.False(t, ok, "AUTH advertised before STARTTLS")
		ok, _ = cl.Extension("STARTTLS")
		require.True(t, ok)
		// net/smtp says EHLO again after STARTTLS.
		require.NoError(t, cl.StartTLS(&tls.Config{RootCAs: ca.Pool(), ServerName: "localhost"}))
		ok, mechs := cl.Extension("AUTH")
		require.True(t, ok, "AUTH not advertised after STARTTLS")
		assert.ElementsMatch(t, []string{"PLAIN", "LOGIN"}, strings.Fields(mechs))
		require.NoError(t, cl.Auth(smtp.PlainAuth("", "carol", "pw", "127.0.0.1")))
		require.NoError(t, cl.Mail("a@example.org"))
		require.NoError(t, cl.Rcpt("x@other.example"), "authenticated: relaying allowed")
		_ = cl.Quit()
	})

	t.Run("swaks without TLS cannot authenticate", func(t *testing.T) {
		out, err := swaks(t, "--server", p.SMTPAddr, "--auth", "PLAIN", "--auth-user", "carol",
			"--auth-password", "pw", "--from", "a@example.org", "--to", "x@other.example")
		require.Error(t, err, out)
		assert.Contains(t, out, "Host did not advertise authentication")
	})

	t.Run("swaks with STARTTLS authenticates and relays", func(t *testing.T) {
		out, err := swaks(t, "--server", p.SMTPAddr, "--tls", "--tls-verify", "--tls-ca-path", ca.CertFile,
			"--auth", "LOGIN", "--auth-user", "carol", "--auth-password", "pw",
			"--from", "a@example.org", "--to", "x@other.example")
		require.NoError(t, err, out)
	})

	t.Run("the implicit TLS listener offers AUTH", func(t *testing.T) {
		out, err := swaks(t, "--server", p.SMTPSAddr, "--tlsc", "--tls-verify", "--tls-ca-path", ca.CertFile,
			"--auth", "PLAIN", "--auth-user", "carol", "--auth-password", "pw",
			"--from", "a@example.org", "--to", "x@other.example")
		require.NoError(t, err, out)
	})
}

func TestPostfixAuthBadUser(t *testing.T) {
	t.Parallel()
	for _, users := range []map[string]string{
		{"a:b": "pw"},
		{"alice": "with space"},
		{"alice": ""},
		{"": "pw"},
		{"alice": "new\nline"},
	} {
		ft := &fakeT{TB: t}
		ft.do(func() { StartPostfix(ft, PostfixOptions{Users: users}) })
		require.True(t, ft.failed, "%q must be refused", users)
		assert.Contains(t, ft.msg, "bad SASL user")
	}
}
