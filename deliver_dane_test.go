package caddysmtp

import (
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
	lab := startDANELab(t, "127.86.0.10")
	pf := lab.mx
	unbound := peertest.StartUnbound(t, peertest.UnboundOptions{Knot: lab.knot, Stubs: []peertest.Stub{lab.bogus.Stub()}})

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
