package e2e

import (
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/seed7b014b84/caddy-smtp/internal/peertest"
)

// TestQueueOutcomes sends one message with three recipients, each to a
// remote of its own: one that refuses it for good (smtp-sink -f rcpt),
// one that defers it on the first attempt (smtp-sink -r rcpt; the next
// attempt goes to a normal sink, by a next_hop rule on retry_num), and one
// that always defers it, with the message expiring after 4 s (retry 1s).
// Each recipient's log lines say its states in order, with the queue ID,
// its attempts, replies and times, as the schedule says; and each outcome
// is an event (Caddy's events app logs every event it emits at debug
// level, on the logger "events").
func TestQueueOutcomes(t *testing.T) {
	perm := peertest.StartSink(t, peertest.SinkOptions{Flags: []string{"-f", "rcpt"}})
	flaky := peertest.StartSink(t, peertest.SinkOptions{Flags: []string{"-r", "rcpt"}})
	good := peertest.StartSink(t, peertest.SinkOptions{})
	never := peertest.StartSink(t, peertest.SinkOptions{Flags: []string{"-r", "rcpt"}})
	submit := peertest.FreePort(t)
	remote := func(name string, port int) string {
		return fmt.Sprintf("\t\tremote %s {\n\t\t\taddress 127.0.0.1\n\t\t\tport %d\n\t\t}\n", name, port)
	}
	caddyfile := fmt.Sprintf(`{
	admin off
	debug
	smtp {
		hostname out.example.org
		resolver udp://127.0.0.1:1
		next_hop {
			if "rcpt_domain == 'perm.test'" perm
			if "rcpt_domain == 'flaky.test' && retry_num == 0" flaky
			if "rcpt_domain == 'flaky.test'" good
			else never
		}
%s%s%s%s		queue {
			retry 1s
			expire 4s
			notify none
		}
	}
	layer4 {
		127.0.0.1:%d {
			route {
				smtp_submission {
					relay_networks 127.0.0.0/8
				}
			}
		}
	}
}
`, remote("perm", perm.Port), remote("flaky", flaky.Port), remote("good", good.Port), remote("never", never.Port), submit)
	// The events app is configured (with no handler) so that the smtp app
	// emits its events; Caddy logs them at debug level.
	config := adaptJSON(t, caddyfile, func(cfg map[string]any) {
		cfg["apps"].(map[string]any)["events"] = map[string]any{}
	})
	p := startCaddy(t, "caddy.json", config)

	s, err := dialSubmitter(fmt.Sprintf("127.0.0.1:%d", submit))
	require.NoError(t, err)
	rcpts := []string{"p@perm.test", "f@flaky.test", "x@expire.test"}
	code, text, err := s.send("app@example.org", rcpts, markedMessage("outcomes"))
	s.close()
	require.NoError(t, err)
	id, ok := queuedID(code, text)
	require.True(t, ok, "%d %s", code, text)

	// Wait for the last outcome: the expiry.
	deadline := time.Now().Add(30 * time.Second)
	for len(linesOf(p, id, "expired")) == 0 {
		require.True(t, time.Now().Before(deadline), "the message did not expire")
		time.Sleep(200 * time.Millisecond)
	}
	time.Sleep(500 * time.Millisecond)

	queued := linesOf(p, id, "queued")
	require.Len(t, queued, 1)
	assert.ElementsMatch(t, rcpts, queued[0].F["to"])
	arrived := queued[0].TS
	byRcpt := map[string][]logEntry{}
	for _, e := range linesOf(p, id, "") {
		if r := e.str("rcpt"); r != "" {
			byRcpt[r] = append(byRcpt[r], e)
		}
	}
	states := func(rcpt string) []string {
		var out []string
		for _, e := range byRcpt[rcpt] {
			out = append(out, fmt.Sprintf("%s/%d", e.Msg, e.int("attempts")))
		}
		return out
	}

	// The permanent failure: failed at the first attempt with the
	// server's 5xx, no retry.
	assert.Equal(t, []string{"failed/1"}, states("p@perm.test"))
	if l := byRcpt["p@perm.test"]; len(l) == 1 {
		assert.Regexp(t, `^5\d\d `, l[0].str("reply"))
		assert.Equal(t, "remote:perm", l[0].str("destination"))
	}
	assert.Empty(t, perm.Messages(t))

	// The deferral, then the success on the schedule's next attempt.
	assert.Equal(t, []string{"deferred/1", "delivered/2"}, states("f@flaky.test"))
	if l := byRcpt["f@flaky.test"]; len(l) == 2 {
		assert.Regexp(t, `^4\d\d `, l[0].str("reply"))
		next := l[0].time("next_attempt")
		// retry 1s, ±10%; the line is written a little after (the
		// result is saved first).
		in := next.Sub(l[0].TS)
		assert.LessOrEqual(t, in, 1100*time.Millisecond, "retry 1s (±10%%)")
		assert.GreaterOrEqual(t, in, 400*time.Millisecond, "retry 1s (±10%%)")
		assert.False(t, l[1].TS.Before(next), "the retry is not early")
		assert.Less(t, l[1].TS.Sub(next), 3*time.Second, "the retry comes when due")
		assert.Equal(t, "remote:good", l[1].str("destination"))
		assert.Regexp(t, `^250 `, l[1].str("reply"))
	}
	assert.Empty(t, flaky.Messages(t))
	got := good.Messages(t)
	if assert.Len(t, got, 1) {
		assert.Equal(t, []string{"f@flaky.test"}, got[0].To)
		assert.Equal(t, "outcomes", subjectOf(got[0]))
	}

	// The expiry: deferred at each retry until 4 s after the arrival,
	// then expired with the last reply.
	exp := byRcpt["x@expire.test"]
	require.NotEmpty(t, exp)
	last := exp[len(exp)-1]
	assert.Equal(t, "expired", last.Msg, "%v", states("x@expire.test"))
	for i, e := range exp[:len(exp)-1] {
		assert.Equal(t, "deferred", e.Msg)
		assert.Equal(t, i+1, e.int("attempts"))
	}
	assert.GreaterOrEqual(t, len(exp), 4, "retried every second until it expired: %v", states("x@expire.test"))
	age := last.TS.Sub(arrived)
	assert.GreaterOrEqual(t, age, 4*time.Second-150*time.Millisecond, "expired at 4s, not before")
	assert.Less(t, age, 7*time.Second, "expired soon after 4s")
	assert.True(t, strings.HasPrefix(last.str("reply"), "550 5.4.7"), last.str("reply"))
	assert.Contains(t, last.str("reply"), "450", "the expiry names the last reply")
	assert.Empty(t, never.Messages(t))
	t.Logf("expire.test: %v, expired at %v", states("x@expire.test"), age.Round(time.Millisecond))

	// Each outcome is an event with the same data.
	var events []string
	for _, e := range p.entries() {
		if e.Logger != "events" || e.Msg != "event" {
			continue
		}
		data, _ := e.F["data"].(map[string]any)
		if data["id"] != id {
			continue
		}
		rcpt, _ := data["rcpt"].(string)
		events = append(events, fmt.Sprintf("%s %s", e.str("name"), rcpt))
		switch e.str("name") {
		case "smtp.deferred":
			assert.NotEmpty(t, data["next_attempt"], "smtp.deferred has next_attempt")
		case "smtp.queued":
			assert.ElementsMatch(t, rcpts, data["to"])
		}
	}
	want := []string{"smtp.queued ", "smtp.failed p@perm.test", "smtp.deferred f@flaky.test", "smtp.delivered f@flaky.test",
		"smtp.expired x@expire.test"}
	for range exp[:len(exp)-1] {
		want = append(want, "smtp.deferred x@expire.test")
	}
	sort.Strings(events)
	sort.Strings(want)
	assert.Equal(t, want, events)
}

// linesOf returns the queue's log lines of message id with msg (all for
// "").
func linesOf(p *caddyProc, id, msg string) []logEntry {
	var out []logEntry
	for _, e := range p.queueLog(msg) {
		if e.str("id") == id {
			out = append(out, e)
		}
	}
	return out
}
