package caddysmtp

import (
	"fmt"
	"net/smtp"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/seed7b014b84/caddy-smtp/internal/peertest"
	"github.com/seed7b014b84/caddy-smtp/transport"
)

// TestDANEAgreesWithPostfix runs the cases of TestDeliverDANE through
// Postfix as a second, independent DANE implementation, and checks that
// both senders reach the same verdict for every recipient.
//
// The receiving MX is a private Postfix on port 25 of 127.88.0.10 (other
// addresses than TestDeliverDANE's), named by MX and TLSA records in a
// zone that Knot signs and unbound validates. The sending Postfix relays
// by MX with smtp_tls_security_level = dane and smtp_dns_support_level =
// dnssec; its smtp(8) client runs chrooted in its queue directory, whose
// etc/resolv.conf names only this unbound (on port 53 of 127.88.0.53),
// so it resolves through the same validating resolver as our app without
// touching the machine's /etc/resolv.conf.
//
// Our app's "delivered" must be Postfix's "status=sent" and our
// "deferred" its "status=deferred". Each verdict is also pinned to what
// DANE requires, so that the two cannot agree by both being wrong; and
// Postfix's TLS log line shows that it, too, verified the certificate by
// DANE where our app reports the DANE policy, and did not verify it where
// our app reports the opportunistic policy.
func TestDANEAgreesWithPostfix(t *testing.T) {
	lab := startDANELab(t, "127.88.0.10")
	mx := lab.mx
	// Port 53 of an address of its own: a resolv.conf line has no port.
	unbound := peertest.StartUnbound(t, peertest.UnboundOptions{Knot: lab.knot, Stubs: []peertest.Stub{lab.bogus.Stub()},
		Addr: "127.88.0.53", Port: 53})

	sender := peertest.StartPostfix(t, peertest.PostfixOptions{Hostname: "out.example.org", Domains: []string{"example.org"},
		Nameserver: unbound.Host,
		Extra: map[string]string{
			// Relay for loopback clients, by MX, through smtp(8).
			"smtpd_relay_restrictions": "permit_mynetworks, reject_unauth_destination",
			"default_transport":        "smtp",
			"relay_transport":          "smtp",
			// DANE, with the DNSSEC status taken from unbound's AD bit.
			"smtp_dns_support_level":  "dnssec",
			"smtp_tls_security_level": "dane",
			"dnssec_probe":            "soa:dane.test",
			"smtp_tls_loglevel":       "1",
			"smtp_address_preference": "ipv4",
			"smtp_connect_timeout":    "5s",
		}})

	app := provisioned(t, fmt.Sprintf(`{
		"hostname": "out.example.org",
		"resolver": {"servers": ["udp://%s"]},
		"ip_strategy": "ipv4_only",
		"tls": {"allow_invalid_certs": [{"if": "rcpt_domain == 'unsigned.test'", "then": true}, {"else": false}]}
	}`, unbound.Addr))

	cases := []struct {
		rcpt string
		// want is the verdict DANE requires, for both senders.
		want transport.Status
		// policy is our app's TLS policy for a delivered recipient, and
		// postfixTLS the start of Postfix's matching TLS log line.
		policy     string
		postfixTLS string
		// reason is in Postfix's deferral reason.
		reason string
	}{
		{rcpt: "x@good.dane.test", want: transport.Delivered, policy: PolicyDANE, postfixTLS: "Verified TLS connection established to mx.good.dane.test"},
		{rcpt: "x@ta.dane.test", want: transport.Delivered, policy: PolicyDANE, postfixTLS: "Verified TLS connection established to mx.ta.dane.test"},
		{rcpt: "x@unsigned.test", want: transport.Delivered, policy: PolicyOpportunistic, postfixTLS: "Untrusted TLS connection established to mx.unsigned.test"},
		{rcpt: "x@bad.dane.test", want: transport.Deferred, reason: "Server certificate not verified"},
		{rcpt: "x@bogus.test", want: transport.Deferred, reason: "Host or domain name not found"},
	}

	body := "Subject: dane agreement\r\n\r\nhello\r\n"
	msg := &Message{From: "a@example.org", Body: strings.NewReader(body), Size: int64(len(body))}
	for _, c := range cases {
		msg.To = append(msg.To, transport.Recipient{Addr: c.rcpt})
	}
	report, err := app.Deliver(t.Context(), msg)
	require.NoError(t, err)
	ours := byRcpt(report)

	// One message per case into the sending Postfix, which then delivers
	// (or defers) each on its own.
	for _, c := range cases {
		injectPlain(t, sender.SMTPAddr, "a@example.org", c.rcpt, "Subject: dane agreement "+c.rcpt+"\r\n\r\nhello\r\n")
	}
	theirs := postfixVerdicts(t, sender, len(cases), 20*time.Second)

	postfixStatus := map[transport.Status]string{transport.Delivered: "sent", transport.Deferred: "deferred"}
	for _, c := range cases {
		our := ours[c.rcpt]
		their, ok := theirs[c.rcpt]
		require.True(t, ok, "Postfix logged no verdict for %s\n%s", c.rcpt, sender.Log())
		assert.Equal(t, c.want, our.Status, "our app, %s: %s", c.rcpt, our.Error)
		assert.Equal(t, postfixStatus[c.want], their.status, "Postfix, %s: %s", c.rcpt, their.line)
		assert.Equal(t, postfixStatus[our.Status], their.status,
			"the verdicts differ for %s: our app %s (%s), Postfix %s", c.rcpt, our.Status, our.Error, their.line)
		if c.want == transport.Delivered {
			assert.Equal(t, c.policy, our.TLSPolicy, c.rcpt)
			assert.Contains(t, sender.Log(), c.postfixTLS, c.rcpt)
		} else {
			assert.Contains(t, their.line, c.reason, c.rcpt)
		}
	}

	// Three copies from each sender: good, ta and unsigned, all over TLS;
	// nothing for bad.dane.test, which neither sent in plain text.
	msgs := mx.WaitMessages(t, 6, 10*time.Second)
	assert.Len(t, msgs, 6)
	fromPostfix := 0
	for _, m := range msgs {
		s := string(m)
		assert.NotContains(t, s, "x@bad.dane.test")
		assert.Contains(t, s, "(using TLS")
		if strings.Contains(s, "Subject: dane agreement x@") {
			fromPostfix++
		}
	}
	assert.Equal(t, 3, fromPostfix)
}

// postfixVerdict is the first delivery attempt Postfix logged for one
// recipient.
type postfixVerdict struct {
	status string // sent, deferred, bounced
	line   string
}

var postfixStatusLine = regexp.MustCompile(`to=<([^>]+)>.* status=(\w+)`)

// postfixVerdicts waits until Postfix's maillog holds a verdict for n
// recipients and returns the first verdict of each.
func postfixVerdicts(t *testing.T, p *peertest.Postfix, n int, timeout time.Duration) map[string]postfixVerdict {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		got := map[string]postfixVerdict{}
		for _, l := range strings.Split(p.Log(), "\n") {
			m := postfixStatusLine.FindStringSubmatch(l)
			if m == nil {
				continue
			}
			if _, seen := got[m[1]]; !seen {
				got[m[1]] = postfixVerdict{status: m[2], line: l}
			}
		}
		if len(got) >= n {
			return got
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d Postfix verdicts after %v\n%s", len(got), n, timeout, p.Log())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// injectPlain submits one message without STARTTLS: the hop from the test
// to the sending Postfix is not under test, and net/smtp would check the
// instance's certificate against the system's roots.
func injectPlain(t *testing.T, addr, from, rcpt, body string) {
	t.Helper()
	c, err := smtp.Dial(addr)
	require.NoError(t, err)
	defer c.Close()
	require.NoError(t, c.Hello("test.example.org"))
	require.NoError(t, c.Mail(from))
	require.NoError(t, c.Rcpt(rcpt))
	w, err := c.Data()
	require.NoError(t, err)
	_, err = w.Write([]byte(body))
	require.NoError(t, err)
	require.NoError(t, w.Close())
	require.NoError(t, c.Quit())
}
