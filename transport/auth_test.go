package transport

import (
	"crypto/tls"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/seed7b014b84/caddy-smtp/internal/peertest"
)

// TestPostfixAuth relays through a Postfix that relays only for
// authenticated clients, and offers AUTH only after STARTTLS.
func TestPostfixAuth(t *testing.T) {
	pf := peertest.StartPostfix(t, peertest.PostfixOptions{Users: map[string]string{"mailer": "s3cret"}, AuthOnlyTLS: true, Mailbox: true})
	tlsCfg := &tls.Config{RootCAs: pf.CA.Pool()}
	relay := func(t *testing.T, opts Options) {
		t.Helper()
		c, err := session(t, pf.SMTPAddr, opts)
		require.NoError(t, err)
		res, err := c.Deliver(t.Context(), envelope("someone@other.example"), strings.NewReader(testBody))
		require.NoError(t, err)
		assert.Equal(t, Delivered, res[0].Status, res[0].Reply.String())
		require.NoError(t, c.Quit())
	}
	for _, mech := range []string{"PLAIN", "LOGIN"} {
		t.Run(mech, func(t *testing.T) {
			relay(t, Options{ServerName: pf.Hostname, TLSConfig: tlsCfg, Auth: &Auth{Username: "mailer", Password: "s3cret", Mechanism: mech}})
		})
	}
	t.Run("best mechanism", func(t *testing.T) {
		relay(t, Options{ServerName: pf.Hostname, TLSConfig: tlsCfg, Auth: &Auth{Username: "mailer", Password: "s3cret"}})
	})
	t.Run("wrong password", func(t *testing.T) {
		_, err := session(t, pf.SMTPAddr, Options{ServerName: pf.Hostname, TLSConfig: tlsCfg, Auth: &Auth{Username: "mailer", Password: "nope"}})
		require.Error(t, err)
		var e *Error
		require.ErrorAs(t, err, &e)
		assert.Equal(t, PhaseAuth, e.Phase)
		require.NotNil(t, e.Reply)
		assert.Equal(t, 535, e.Reply.Code)
		assert.True(t, IsPermanent(err))
		assert.NotContains(t, err.Error(), "nope")
	})
	t.Run("never over plain text", func(t *testing.T) {
		_, err := session(t, pf.SMTPAddr, Options{StartTLS: TLSDisable, Auth: &Auth{Username: "mailer", Password: "s3cret"}})
		require.Error(t, err)
		assert.Contains(t, err.Error(), "smtp auth: refusing to send credentials without TLS")
	})
	t.Run("without auth the relay refuses", func(t *testing.T) {
		c, err := session(t, pf.SMTPAddr, Options{ServerName: pf.Hostname, TLSConfig: tlsCfg})
		require.NoError(t, err)
		res, err := c.Deliver(t.Context(), envelope("someone@other.example"), strings.NewReader(testBody))
		require.NoError(t, err)
		assert.Equal(t, Failed, res[0].Status)
		assert.Contains(t, res[0].Reply.Text(), "Relay access denied")
		require.NoError(t, c.Quit())
	})
	assert.Len(t, pf.WaitMessages(t, 3, 10*time.Second), 3)
}

// TestRoundTrips counts the round trips per message on a reused session
// through a proxy that delays each direction: one per message with
// PIPELINING and CHUNKING (Postfix), two with PIPELINING only (smtp-sink,
// which has no CHUNKING: DATA must wait for its 354).
func TestRoundTrips(t *testing.T) {
	pf := peertest.StartPostfix(t, peertest.PostfixOptions{})
	sink := peertest.StartSink(t, peertest.SinkOptions{})
	tests := []struct {
		name   string
		target string
		opts   Options
		want   int
	}{
		{"postfix: PIPELINING and CHUNKING", pf.SMTPAddr, Options{ServerName: pf.Hostname, TLSConfig: &tls.Config{RootCAs: pf.CA.Pool()}}, 1},
		{"smtp-sink: PIPELINING only", sink.Addr, Options{}, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			proxy := peertest.StartDelayProxy(t, tt.target, 5*time.Millisecond)
			c, err := session(t, proxy.Addr, tt.opts)
			require.NoError(t, err)
			deliver := func() {
				res, err := c.Deliver(t.Context(), envelope("a@example.test", "b@example.test"), strings.NewReader(testBody))
				require.NoError(t, err)
				require.Equal(t, Delivered, res[0].Status)
			}
			deliver()
			c.dirty = true // as a session taken from the pool: RSET first
			proxy.ResetCounters()
			const n = 10
			for range n {
				deliver()
			}
			t.Logf("%d messages, %d round trips", n, proxy.Turns())
			assert.Equal(t, n*tt.want, proxy.Turns())
			require.NoError(t, c.Quit())
		})
	}
}
