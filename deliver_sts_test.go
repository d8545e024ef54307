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
	"github.com/seed7b014b84/caddy-smtp/tlsrpt"
	"github.com/seed7b014b84/caddy-smtp/transport"
)

// TestDeliverMTASTS delivers by MX under MTA-STS policies served over
// HTTPS by openssl s_server (Knot for DNS): in enforce mode the MX the
// policy names gets the message over verified TLS and one it does not name
// is never used; in testing mode the message goes anyway, and the
// mismatch is counted for TLS reporting; the policy is kept in Caddy's
// storage.
func TestDeliverMTASTS(t *testing.T) {
	ca := peertest.NewCA(t, "mta-sts test CA")
	pf := peertest.StartPostfix(t, peertest.PostfixOptions{CA: ca, Addr: "127.89.0.10", Port: 25, Hostname: "mx1.enforce.sts.test", Mailbox: true,
		Domains: []string{"enforce.sts.test", "testing.sts.test", "onlyrogue.sts.test", "testing2.sts.test", "enforce2.sts.test"}})
	rogue := peertest.StartSink(t, peertest.SinkOptions{Addr: "127.89.0.11", Port: 25})
	port := peertest.FreePort(t)
	policy := func(mode, mx string) []byte {
		return peertest.HTTPResponse(200, []string{"Content-Type: text/plain"},
			[]byte("version: STSv1\nmode: "+mode+"\nmx: "+mx+"\nmax_age: 86400\n"))
	}
	for i, d := range []struct{ domain, mode, mx string }{
		{"enforce", "enforce", "mx1.enforce.sts.test"},
		{"testing", "testing", "mx1.enforce.sts.test"},
		{"onlyrogue", "enforce", "mx1.enforce.sts.test"},
		{"testing2", "testing", "*.testing2.sts.test"},
		{"enforce2", "enforce", "*.enforce2.sts.test"},
	} {
		peertest.StartHTTPS(t, peertest.HTTPSOptions{Host: fmt.Sprintf("127.89.0.%d", i+1), Port: port,
			Leaf:      ca.Issue(t, "mta-sts."+d.domain+".sts.test"),
			Responses: map[string][]byte{"/.well-known/mta-sts.txt": policy(d.mode, d.mx)}})
	}
	knot := peertest.StartKnot(t, peertest.KnotOptions{Zones: []peertest.Zone{{Name: "sts.test", Records: `
_mta-sts.enforce TXT "v=STSv1; id=1;"
mta-sts.enforce A 127.89.0.1
enforce MX 10 mx1.enforce
enforce MX 20 rogue
mx1.enforce A 127.89.0.10
rogue A 127.89.0.11
_mta-sts.testing TXT "v=STSv1; id=1;"
mta-sts.testing A 127.89.0.2
testing MX 10 rogue
_mta-sts.onlyrogue TXT "v=STSv1; id=1;"
mta-sts.onlyrogue A 127.89.0.3
onlyrogue MX 10 rogue
_mta-sts.testing2 TXT "v=STSv1; id=1;"
mta-sts.testing2 A 127.89.0.4
testing2 MX 10 mx.testing2
mx.testing2 A 127.89.0.10
_mta-sts.enforce2 TXT "v=STSv1; id=1;"
mta-sts.enforce2 A 127.89.0.5
enforce2 MX 10 mx.enforce2
mx.enforce2 A 127.89.0.10
`}}})
	unbound := peertest.StartUnbound(t, peertest.UnboundOptions{Knot: knot})
	app := provisioned(t, fmt.Sprintf(`{
		"hostname": "out.example.org",
		"resolver": {"servers": ["udp://%s"]},
		"ip_strategy": "ipv4_only"
	}`, unbound.Addr))
	app.rootCAs = ca.Pool()
	app.sts.port = port

	body := "Subject: mta-sts\r\n\r\nhello\r\n"
	msg := &Message{From: "a@example.org", Body: strings.NewReader(body), Size: int64(len(body))}
	for _, r := range []string{"a@enforce.sts.test", "b@onlyrogue.sts.test", "c@testing.sts.test", "d@testing2.sts.test", "e@enforce2.sts.test"} {
		msg.To = append(msg.To, transport.Recipient{Addr: r})
	}
	report, err := app.Deliver(t.Context(), msg)
	require.NoError(t, err)
	got := byRcpt(report)

	enforce := got["a@enforce.sts.test"]
	assert.Equal(t, transport.Delivered, enforce.Status, enforce.Error)
	assert.Equal(t, PolicyMTASTS, enforce.TLSPolicy)
	assert.Equal(t, "mx1.enforce.sts.test", enforce.Host)
	assert.NotEmpty(t, enforce.TLSVersion)

	only := got["b@onlyrogue.sts.test"]
	assert.Equal(t, transport.Deferred, only.Status)
	assert.Contains(t, only.Error, "not an MX host of onlyrogue.sts.test's MTA-STS policy")

	testing := got["c@testing.sts.test"]
	assert.Equal(t, transport.Delivered, testing.Status, testing.Error)
	assert.Equal(t, "rogue.sts.test", testing.Host, "testing mode: delivered all the same")

	// Testing mode, and a certificate that is not for the MX's name:
	// delivered all the same, the failure counted.
	t2 := got["d@testing2.sts.test"]
	assert.Equal(t, transport.Delivered, t2.Status, t2.Error)
	assert.NotEmpty(t, t2.TLSVersion)

	// Enforce mode, and a certificate that is not for the MX's name: not
	// sent there, and counted.
	e2 := got["e@enforce2.sts.test"]
	assert.Equal(t, transport.Deferred, e2.Status)
	assert.Contains(t, e2.Error, "smtp tls")

	assert.Len(t, pf.WaitMessages(t, 2, 10*time.Second), 2)
	msgs := rogue.WaitMessages(t, 1, 10*time.Second)
	require.Len(t, msgs, 1, "the rogue MX got only the testing-mode message")
	assert.Equal(t, []string{"c@testing.sts.test"}, msgs[0].To)

	reports := map[string]tlsrpt.Summary{}
	for _, s := range app.TLSReports() {
		reports[s.Domain+"/"+s.Policy] = s
	}
	assert.Equal(t, 1, reports["enforce.sts.test/sts"].Success)
	assert.Equal(t, 1, reports["onlyrogue.sts.test/sts"].Failures[tlsrpt.ValidationFailure])
	assert.Equal(t, 1, reports["testing.sts.test/sts"].Failures[tlsrpt.ValidationFailure])
	assert.Equal(t, 1, reports["testing2.sts.test/sts"].Failures[tlsrpt.CertificateHostMismatch])
	assert.Equal(t, 1, reports["enforce2.sts.test/sts"].Failures[tlsrpt.CertificateHostMismatch])

	// caddy smtp-plan shows the same policy, sending nothing.
	plan, err := app.Planner().Plan(t.Context(), strategy.Destination{Domain: "enforce.sts.test"}, rules.Vars{})
	require.NoError(t, err)
	sts, err := app.stsPolicy(t.Context(), plan, &rules.Vars{})
	require.NoError(t, err)
	for i := range plan.Hosts {
		tp := app.tlsPlan(t.Context(), plan, &plan.Hosts[i], nil, sts, &rules.Vars{MX: plan.Hosts[i].Name})
		if plan.Hosts[i].Name == "mx1.enforce.sts.test" {
			assert.Equal(t, PolicyMTASTS, tp.Policy)
		} else {
			assert.Contains(t, plan.Hosts[i].Error, "not an MX host")
		}
	}

	keys, err := app.ctx.Storage().List(t.Context(), "smtp/mta-sts", false)
	require.NoError(t, err)
	assert.Contains(t, keys, "smtp/mta-sts/enforce.sts.test.json", "the policy is kept in Caddy's storage")
}
