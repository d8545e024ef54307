package caddysmtp

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/seed7b014b84/caddy-smtp/internal/peertest"
	"github.com/seed7b014b84/caddy-smtp/rules"
	"github.com/seed7b014b84/caddy-smtp/strategy"
	"github.com/seed7b014b84/caddy-smtp/transport"
)

// TestDeliverDANE delivers by MX to a private Postfix on port 25 of its
// own loopback address, under the TLSA records of a signed zone (Knot,
// validated by unbound): a matching DANE-EE record and a DANE-TA record
// deliver under the DANE policy; a wrong digest defers without a plain
// text fallback; TLSA in an unsigned zone are ignored; a bogus zone
// defers.
func TestDeliverDANE(t *testing.T) {
	ca := peertest.NewCA(t, "dane test CA")
	pf := peertest.StartPostfix(t, peertest.PostfixOptions{CA: ca, Addr: "127.86.0.10", Port: 25, Hostname: "mx.ta.dane.test", Mailbox: true,
		Domains: []string{"good.dane.test", "bad.dane.test", "ta.dane.test", "unsigned.test", "pkix.dane.test"}})
	spki := sha256.Sum256(pf.Leaf.SPKI)
	caDigest := sha256.Sum256(ca.Cert.Raw)
	knot := peertest.StartKnot(t, peertest.KnotOptions{Zones: []peertest.Zone{
		{Name: "dane.test", Signed: true, Records: fmt.Sprintf(`
good MX 10 mx.good
mx.good A 127.86.0.10
_25._tcp.mx.good TLSA 3 1 1 %s
bad MX 10 mx.bad
mx.bad A 127.86.0.10
_25._tcp.mx.bad TLSA 3 1 1 %s
ta MX 10 mx.ta
mx.ta A 127.86.0.10
_25._tcp.mx.ta TLSA 2 0 1 %s
pkix MX 10 mx.pkix
mx.pkix A 127.86.0.10
_25._tcp.mx.pkix TLSA 1 1 1 %s
`, hex.EncodeToString(spki[:]), strings.Repeat("ab", 32), hex.EncodeToString(caDigest[:]), strings.Repeat("ef", 32))},
		{Name: "unsigned.test", Records: fmt.Sprintf(`
@ MX 10 mx
mx A 127.86.0.10
_25._tcp.mx TLSA 3 1 1 %s
`, strings.Repeat("cd", 32))},
	}})
	bogus := peertest.StartBogusZone(t, "bogus.test", "@ MX 10 mx\nmx A 127.86.0.10\n")
	unbound := peertest.StartUnbound(t, peertest.UnboundOptions{Knot: knot, Stubs: []peertest.Stub{bogus.Stub()}})

	app := provisioned(t, fmt.Sprintf(`{
		"hostname": "out.example.org",
		"resolver": {"servers": ["udp://%s"]},
		"ip_strategy": "ipv4_only",
		"tls": {"allow_invalid_certs": [{"if": "rcpt_domain in ['unsigned.test', 'pkix.dane.test']", "then": true}, {"else": false}]}
	}`, unbound.Addr))
	body := "Subject: dane\r\n\r\nhello\r\n"
	msg := &Message{From: "a@example.org", Body: strings.NewReader(body), Size: int64(len(body))}
	for _, r := range []string{"x@good.dane.test", "x@bad.dane.test", "x@ta.dane.test", "x@unsigned.test", "x@bogus.test", "x@pkix.dane.test"} {
		msg.To = append(msg.To, transport.Recipient{Addr: r})
	}
	report, err := app.Deliver(t.Context(), msg)
	require.NoError(t, err)
	got := byRcpt(report)

	good := got["x@good.dane.test"]
	assert.Equal(t, transport.Delivered, good.Status, good.Error)
	assert.Equal(t, PolicyDANE, good.TLSPolicy)
	assert.NotEmpty(t, good.TLSVersion)

	ta := got["x@ta.dane.test"]
	assert.Equal(t, transport.Delivered, ta.Status, ta.Error)
	assert.Equal(t, PolicyDANE, ta.TLSPolicy)

	bad := got["x@bad.dane.test"]
	assert.Equal(t, transport.Deferred, bad.Status, "a DANE failure is temporary, and never plain text")
	assert.Contains(t, bad.Error, "no TLSA record matches")

	unsigned := got["x@unsigned.test"]
	assert.Equal(t, transport.Delivered, unsigned.Status, unsigned.Error)
	assert.Equal(t, PolicyOpportunistic, unsigned.TLSPolicy, "TLSA of an unsigned zone are ignored")

	pkix := got["x@pkix.dane.test"]
	assert.Equal(t, transport.Delivered, pkix.Status, pkix.Error)
	assert.Equal(t, PolicyOpportunistic, pkix.TLSPolicy, "no usable TLSA record (PKIX-EE): the other policies apply")

	bog := got["x@bogus.test"]
	assert.Equal(t, transport.Deferred, bog.Status)
	assert.Contains(t, bog.Error, "bogus")

	// caddy smtp-plan shows the same policy, sending nothing.
	plan, err := app.Planner().Plan(t.Context(), strategy.Destination{Domain: "good.dane.test"}, rules.Vars{})
	require.NoError(t, err)
	assert.Equal(t, PolicyDANE, app.tlsPlan(t.Context(), plan, &plan.Hosts[0], nil, nil, &rules.Vars{MX: plan.Hosts[0].Name}).Policy)

	msgs := pf.WaitMessages(t, 4, 10*time.Second)
	assert.Len(t, msgs, 4, "good, ta, unsigned and pkix: nothing for bad.dane.test")
	for _, m := range msgs {
		assert.NotContains(t, string(m), "x@bad.dane.test")
	}
}
