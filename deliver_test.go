package caddysmtp

import (
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/seed7b014b84/caddy-smtp/internal/peertest"
	"github.com/seed7b014b84/caddy-smtp/transport"
)

// deliveryLab is a small Internet on loopback: Knot serving mail.test
// behind a validating unbound, smtp-sink MX hosts on port 25 of their own
// loopback addresses, a relay (smtp-sink), and Dovecot LMTP as the
// message store.
type deliveryLab struct {
	unbound *peertest.Unbound
	mx1     *peertest.Sink
	mx2     *peertest.Sink
	relay   *peertest.Sink
	store   *peertest.Dovecot
}

func startDeliveryLab(t *testing.T, relayFlags ...string) *deliveryLab {
	t.Helper()
	knot := peertest.StartKnot(t, peertest.KnotOptions{Zones: []peertest.Zone{{Name: "mail.test", Records: `
good MX 10 mx1.good
mx1.good A 127.83.0.10
failover MX 10 dead.failover
failover MX 20 mx.failover
dead.failover A 127.83.0.11
mx.failover A 127.83.0.12
nullmx MX 0 .
down MX 10 mx.down
mx.down A 127.83.0.13
`}}})
	l := &deliveryLab{
		unbound: peertest.StartUnbound(t, peertest.UnboundOptions{Knot: knot}),
		mx1:     peertest.StartSink(t, peertest.SinkOptions{Addr: "127.83.0.10", Port: 25}),
		mx2:     peertest.StartSink(t, peertest.SinkOptions{Addr: "127.83.0.12", Port: 25}),
		relay:   peertest.StartSink(t, peertest.SinkOptions{Flags: relayFlags}),
		store:   peertest.StartDovecot(t, peertest.DovecotOptions{Users: []string{"alice@foobar.net"}}),
	}
	return l
}

func (l *deliveryLab) config() string {
	_, relayPort, _ := net.SplitHostPort(l.relay.Addr)
	_, storePort, _ := net.SplitHostPort(l.store.LMTPAddr)
	return fmt.Sprintf(`{
		"hostname": "out.example.org",
		"resolver": {"servers": ["udp://%s"]},
		"ip_strategy": "ipv4_only",
		"next_hop": [
			{"if": "rcpt_domain", "in_list": "list/local", "then": "store"},
			{"if": "rcpt_domain == 'relay.test'", "then": "relay"},
			{"else": false}
		],
		"lists": {"local": ["foobar.net"]},
		"remotes": {
			"store": {"address": "127.0.0.1", "port": %s, "protocol": "lmtp", "tls": {"allow_invalid_certs": true}},
			"relay": {"address": "127.0.0.1", "port": %s, "concurrency": 2}
		}
	}`, l.unbound.Addr, storePort, relayPort)
}

func byRcpt(r *Report) map[string]RecipientReport {
	out := map[string]RecipientReport{}
	for _, rr := range r.Recipients {
		out[rr.Rcpt] = rr
	}
	return out
}

func TestDeliverRoutes(t *testing.T) {
	l := startDeliveryLab(t)
	app := provisioned(t, l.config())
	body := "From: a@example.org\r\nSubject: routes\r\n\r\nhello\r\n"
	msg := &Message{
		From: "a@example.org",
		Body: strings.NewReader(body),
		Size: int64(len(body)),
	}
	for _, r := range []string{"x@good.mail.test", "y@failover.mail.test", "alice@foobar.net", "nobody@foobar.net",
		"z@relay.test", "n@nullmx.mail.test", "q@nothere.mail.test", "d@down.mail.test", "s@servfail.example"} {
		msg.To = append(msg.To, transport.Recipient{Addr: r})
	}
	report, err := app.Deliver(t.Context(), msg)
	require.NoError(t, err)
	got := byRcpt(report)

	good := got["x@good.mail.test"]
	assert.Equal(t, transport.Delivered, good.Status, good.Error)
	assert.Equal(t, "mx", good.Route)
	assert.Equal(t, "mx1.good.mail.test", good.Host)
	assert.Equal(t, "127.83.0.10:25", good.Address)
	require.NotNil(t, good.Reply)
	assert.Equal(t, 250, good.Reply.Code)

	fo := got["y@failover.mail.test"]
	assert.Equal(t, transport.Delivered, fo.Status, "the first MX refuses: the second takes it (%s)", fo.Error)
	assert.Equal(t, "mx.failover.mail.test", fo.Host)

	alice := got["alice@foobar.net"]
	assert.Equal(t, transport.Delivered, alice.Status, alice.Error)
	assert.Equal(t, "store", alice.Route)
	assert.NotEmpty(t, alice.TLSVersion, "STARTTLS to Dovecot")
	nobody := got["nobody@foobar.net"]
	assert.Equal(t, transport.Failed, nobody.Status)
	assert.Equal(t, 550, nobody.Reply.Code)

	relay := got["z@relay.test"]
	assert.Equal(t, transport.Delivered, relay.Status, relay.Error)
	assert.Equal(t, "relay", relay.Route)

	// Outcomes no server replied to carry a code of this app's (issue 10,
	// item 17), marked local.
	for _, c := range []struct {
		rcpt     string
		status   transport.Status
		code     int
		enhanced string
		why      string
	}{
		{"n@nullmx.mail.test", transport.Failed, 556, "5.1.10", "null MX"},
		{"q@nothere.mail.test", transport.Failed, 550, "5.1.2", "no such domain"},
		{"s@servfail.example", transport.Deferred, 451, "4.4.3", "refused"},
		{"d@down.mail.test", transport.Deferred, 451, "4.4.1", "connection refused"},
	} {
		rr := got[c.rcpt]
		assert.Equal(t, c.status, rr.Status, c.rcpt)
		assert.Contains(t, rr.Error, c.why, c.rcpt)
		if assert.NotNil(t, rr.Reply, c.rcpt) {
			assert.Equal(t, c.code, rr.Reply.Code, c.rcpt)
			assert.Equal(t, c.enhanced, rr.Reply.Enhanced, c.rcpt)
			assert.True(t, rr.Reply.Local, "%s: a reply of this app's, not a server's", c.rcpt)
		}
	}
	assert.False(t, nobody.Reply.Local, "Dovecot's own reply")

	d, def, f := report.Counts()
	assert.Equal(t, [3]int{4, 2, 3}, [3]int{d, def, f})

	assert.Len(t, l.mx1.WaitMessages(t, 1, 5*time.Second), 1)
	assert.Len(t, l.mx2.WaitMessages(t, 1, 5*time.Second), 1)
	assert.Len(t, l.relay.WaitMessages(t, 1, 5*time.Second), 1)
	assert.Len(t, l.store.WaitMessages(t, "alice@foobar.net", 1, 5*time.Second), 1)
	assert.Equal(t, "out.example.org", l.mx1.Messages(t)[0].Helo)

	// The next message reuses the kept connections.
	opened := app.ConnPool().Idle()
	assert.Positive(t, opened)
	report, err = app.Deliver(t.Context(), &Message{From: "a@example.org", To: []transport.Recipient{{Addr: "x2@good.mail.test"}},
		Body: strings.NewReader(body), Size: int64(len(body))})
	require.NoError(t, err)
	assert.Equal(t, transport.Delivered, report.Recipients[0].Status)
	assert.Len(t, l.mx1.WaitMessages(t, 2, 5*time.Second), 2)
}

func TestDeliverDeferred(t *testing.T) {
	l := startDeliveryLab(t, "-r", "rcpt")
	app := provisioned(t, l.config())
	body := "Subject: x\r\n\r\ny\r\n"
	report, err := app.Deliver(t.Context(), &Message{From: "a@example.org", To: []transport.Recipient{{Addr: "z@relay.test"}},
		Body: strings.NewReader(body), Size: int64(len(body))})
	require.NoError(t, err)
	rr := report.Recipients[0]
	assert.Equal(t, transport.Deferred, rr.Status)
	assert.Equal(t, 4, rr.Reply.Code/100)
}

func TestDeliverBadMessage(t *testing.T) {
	app := provisioned(t, `{}`)
	_, err := app.Deliver(t.Context(), &Message{From: "a@example.org"})
	require.Error(t, err)
	_, err = app.Deliver(t.Context(), &Message{From: "a@example.org", Body: strings.NewReader("x")})
	require.ErrorContains(t, err, "no recipients")
	_, err = app.Deliver(t.Context(), &Message{From: "a@b>\r\nRCPT TO:<c@d", Body: strings.NewReader("x"), To: []transport.Recipient{{Addr: "x@y"}}})
	require.ErrorContains(t, err, "malformed sender")
}
