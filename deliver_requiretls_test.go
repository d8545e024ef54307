package caddysmtp

import (
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/seed7b014b84/caddy-smtp/internal/peertest"
	"github.com/seed7b014b84/caddy-smtp/transport"
)

// requireTLSServer is a go-smtp server (TLS and REQUIRETLS offered) that
// keeps what it receives: Postfix has no REQUIRETLS, go-smtp has.
type requireTLSServer struct {
	mu   sync.Mutex
	mail []receivedMail
}

type receivedMail struct {
	requireTLS bool
	tls        bool
	body       string
}

type rtSession struct {
	srv  *requireTLSServer
	conn *smtp.Conn
	cur  receivedMail
}

func (s *requireTLSServer) NewSession(c *smtp.Conn) (smtp.Session, error) {
	return &rtSession{srv: s, conn: c}, nil
}

func (s *rtSession) Mail(_ string, opts *smtp.MailOptions) error {
	_, isTLS := s.conn.TLSConnectionState()
	s.cur = receivedMail{requireTLS: opts != nil && opts.RequireTLS, tls: isTLS}
	return nil
}
func (s *rtSession) Rcpt(string, *smtp.RcptOptions) error { return nil }
func (s *rtSession) Data(r io.Reader) error {
	b, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	s.cur.body = string(b)
	s.srv.mu.Lock()
	s.srv.mail = append(s.srv.mail, s.cur)
	s.srv.mu.Unlock()
	return nil
}
func (s *rtSession) Reset()        {}
func (s *rtSession) Logout() error { return nil }

// TestDeliverRequireTLS sends REQUIRETLS messages (RFC 8689): to a DNSSEC-
// secure MX over verified TLS with REQUIRETLS offered, it is delivered and
// the parameter passed on; to an MX looked up insecurely, to a server
// without REQUIRETLS (Postfix), or with certificate checks off, it fails
// with 5.7.30 and nothing is sent.
func TestDeliverRequireTLS(t *testing.T) {
	ca := peertest.NewCA(t, "requiretls test CA")
	leaf := ca.Issue(t, "mx.rtls.test")
	srv := &requireTLSServer{}
	s := smtp.NewServer(srv)
	s.Domain = "mx.rtls.test"
	s.TLSConfig = &tls.Config{Certificates: []tls.Certificate{leaf.Cert}}
	s.EnableREQUIRETLS = true
	s.ReadTimeout, s.WriteTimeout = 10*time.Second, 10*time.Second
	l, err := net.Listen("tcp", "127.87.0.10:25")
	require.NoError(t, err)
	go func() { _ = s.Serve(l) }()
	t.Cleanup(func() { _ = s.Close() })

	pf := peertest.StartPostfix(t, peertest.PostfixOptions{CA: ca, Addr: "127.87.0.11", Port: 25, Hostname: "mx2.rtls.test",
		Domains: []string{"norequire.rtls.test"}})
	knot := peertest.StartKnot(t, peertest.KnotOptions{Zones: []peertest.Zone{
		{Name: "rtls.test", Signed: true, Records: `
@ MX 10 mx
mx A 127.87.0.10
norequire MX 10 mx2
mx2 A 127.87.0.11
lax MX 10 mx
`},
		{Name: "plain.test", Records: "@ MX 10 mx.rtls.test.\n"},
	}})
	unbound := peertest.StartUnbound(t, peertest.UnboundOptions{Knot: knot})
	app := provisioned(t, fmt.Sprintf(`{
		"hostname": "out.example.org",
		"resolver": {"servers": ["udp://%s"]},
		"ip_strategy": "ipv4_only",
		"tls": {"allow_invalid_certs": [{"if": "rcpt_domain == 'lax.rtls.test'", "then": true}, {"else": false}]}
	}`, unbound.Addr))
	app.rootCAs = ca.Pool()

	body := "Subject: requiretls\r\nRequire-Recipient-Valid-Since: x\r\n\r\nsecret\r\n"
	msg := &Message{From: "a@example.org", Body: strings.NewReader(body), Size: int64(len(body)), RequireTLS: true}
	for _, r := range []string{"x@rtls.test", "y@plain.test", "z@norequire.rtls.test", "w@lax.rtls.test"} {
		msg.To = append(msg.To, transport.Recipient{Addr: r})
	}
	report, err := app.Deliver(t.Context(), msg)
	require.NoError(t, err)
	got := byRcpt(report)

	ok := got["x@rtls.test"]
	assert.Equal(t, transport.Delivered, ok.Status, ok.Error)
	assert.NotEmpty(t, ok.TLSVersion)
	srv.mu.Lock()
	require.Len(t, srv.mail, 1, "only the secure, verified, REQUIRETLS-capable host got it")
	assert.True(t, srv.mail[0].requireTLS, "REQUIRETLS passed on")
	assert.True(t, srv.mail[0].tls)
	srv.mu.Unlock()

	for rcpt, why := range map[string]string{
		"y@plain.test":          "not DNSSEC-secure",
		"z@norequire.rtls.test": "the server does not support REQUIRETLS",
		"w@lax.rtls.test":       "certificate verification is turned off",
	} {
		rr := got[rcpt]
		assert.Equal(t, transport.Failed, rr.Status, rcpt)
		require.NotNil(t, rr.Reply, rcpt)
		assert.Equal(t, "5.7.30", rr.Reply.Enhanced, rcpt)
		assert.Contains(t, rr.Reply.Text(), why, rcpt)
	}
	// Close the kept sessions: Postfix logs what each one did.
	app.ConnPool().Drain(t.Context())
	require.Eventually(t, func() bool { return strings.Contains(pf.Log(), "starttls=1") }, 10*time.Second, 50*time.Millisecond)
	assert.NotContains(t, pf.Log(), "mail=", "nothing was sent to the server without REQUIRETLS")
}
