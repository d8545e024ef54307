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

// relayConfig is a config whose smtp app sends everything to the remote
// r (127.0.0.1:relayPort, at most remoteConcurrency connections), with a
// submission port and the queue settings given (lines of the queue
// block).
func relayConfig(admin string, relayPort, remoteConcurrency, submit int, queue string) string {
	return fmt.Sprintf(`{
	admin %s
	smtp {
		hostname out.example.org
		resolver udp://127.0.0.1:1
		next_hop r
		remote r {
			address 127.0.0.1
			port %d
			concurrency %d
		}
		queue {
%s
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
`, admin, relayPort, remoteConcurrency, queue, submit)
}

// TestQueueDestinationDown submits 2,000 messages through the layer4
// handler while the destination (smtp-sink) is down: every one gets
// "250 queued as ID" at once. The queue retries on its schedule (retry 1s
// 2s, the last repeating): each deferral's next_attempt is the schedule's
// delay for its attempt (±10% jitter, or earlier when the dead destination
// is probed again sooner), and no attempt starts before its next_attempt.
// A dead destination costs a few connections, not one per message. Once
// the sink starts, every message arrives exactly once.
func TestQueueDestinationDown(t *testing.T) {
	const clients, perClient = 8, 250
	const total = clients * perClient
	schedule := []time.Duration{time.Second, 2 * time.Second}
	sinkPort, submit := peertest.FreePort(t), peertest.FreePort(t)
	p := startCaddy(t, "Caddyfile", relayConfig("off", sinkPort, 20, submit, "\t\t\tretry 1s 2s\n\t\t\tnotify none\n\t\t\texpire 10m"))

	start := time.Now()
	ids := submitMany(t, fmt.Sprintf("127.0.0.1:%d", submit), "down", clients, perClient)
	accepted := time.Since(start)
	require.Len(t, ids, total, "every message gets 250 queued as ID")
	byID := map[string]string{}
	for marker, id := range ids {
		byID[id] = marker
	}
	require.Len(t, byID, total, "the queue IDs are distinct")
	t.Logf("2,000 messages accepted in %v while the destination is down", accepted.Round(time.Millisecond))

	// Let the queue retry a few times: the first messages are past
	// attempts at 0, 1 and 3 s.
	time.Sleep(4500 * time.Millisecond)
	assert.Zero(t, len(p.queueLog("delivered")))

	sinkStart := time.Now()
	sink := peertest.StartSink(t, peertest.SinkOptions{Port: sinkPort, Backlog: 256})
	msgs := waitSinks(t, total, 90*time.Second, sink)
	drained := time.Since(sinkStart)
	delivered := p.waitQueueLog("delivered", total, 30*time.Second)
	// Anything more would come now.
	time.Sleep(1500 * time.Millisecond)
	msgs = sink.Messages(t)
	t.Logf("all arrived %v after the sink started", drained.Round(time.Millisecond))

	seen := countSubjects(msgs)
	assert.Len(t, msgs, total, "no message twice")
	assert.Len(t, seen, total, "every message")
	for marker := range ids {
		assert.Equal(t, 1, seen[marker], "%s", marker)
	}

	// The log: one "delivered" per message, after its deferrals, each
	// attempt counted, every deferral on the schedule.
	delivered = p.queueLog("delivered")
	assert.Len(t, delivered, total)
	perID := map[string][]logEntry{}
	for _, e := range p.queueLog("") {
		if e.Msg == "deferred" || e.Msg == "delivered" || e.Msg == "failed" || e.Msg == "expired" {
			perID[e.str("id")] = append(perID[e.str("id")], e)
		}
	}
	assert.Len(t, perID, total)
	// The log line is written after the outcome is saved (a commit), a
	// little after the time the next attempt was computed from: slack
	// for the bounds that this delay shortens.
	const slack, saveSlack = 150 * time.Millisecond, 500 * time.Millisecond
	deferrals, connections, maxAttempts := 0, 0, 0
	var lateness []time.Duration
	for id, lines := range perID {
		require.Contains(t, byID, id)
		sort.SliceStable(lines, func(i, j int) bool { return lines[i].int("attempts") < lines[j].int("attempts") })
		last := lines[len(lines)-1]
		if !assert.Equal(t, "delivered", last.Msg, "%s ends delivered", id) {
			continue
		}
		for i, e := range lines {
			if !assert.Equal(t, i+1, e.int("attempts"), "%s: attempt numbers", id) {
				break
			}
			maxAttempts = max(maxAttempts, e.int("attempts"))
			if i > 0 {
				due := lines[i-1].time("next_attempt")
				// The outcome is logged after the attempt, which starts
				// no earlier than it is due.
				assert.False(t, e.TS.Before(due.Add(-slack)), "%s attempt %d at %v, due %v", id, i+1, e.TS, due)
				if e.Msg == "deferred" {
					lateness = append(lateness, e.TS.Sub(due))
				}
			}
			if e.Msg != "deferred" {
				continue
			}
			deferrals++
			assert.Equal(t, "sink@relay.test", e.str("rcpt"))
			assert.True(t, strings.HasPrefix(e.str("reply"), "4"), "a deferral's reply is 4xx: %q", e.str("reply"))
			d := schedule[min(e.int("attempts")-1, len(schedule)-1)]
			next := e.time("next_attempt")
			require.False(t, next.IsZero(), "deferred has next_attempt: %v", e.F)
			delta := next.Sub(e.TS)
			assert.LessOrEqual(t, delta, time.Duration(1.1*float64(d))+slack, "%s attempt %d: next in %v, schedule %v", id, e.int("attempts"), delta, d)
			if strings.Contains(e.str("error"), "is suspended") {
				// Deferred without a connection: due when the dead
				// destination is probed again, no later than its own
				// schedule.
				assert.GreaterOrEqual(t, delta, -saveSlack)
			} else {
				connections++
				assert.GreaterOrEqual(t, delta, time.Duration(0.9*float64(d))-saveSlack, "%s attempt %d: next in %v, schedule %v", id, e.int("attempts"), delta, d)
			}
		}
	}
	sort.Slice(lateness, func(i, j int) bool { return lateness[i] < lateness[j] })
	if len(lateness) > 0 {
		t.Logf("retries: %d deferrals, %d of them with a connection attempt, up to attempt %d; retry lateness median %v, max %v",
			deferrals, connections, maxAttempts, lateness[len(lateness)/2].Round(time.Millisecond), lateness[len(lateness)-1].Round(time.Millisecond))
		assert.Less(t, lateness[len(lateness)/2], 2*time.Second, "retries come about when due")
	}
	assert.GreaterOrEqual(t, maxAttempts, 3, "retried on the schedule while the sink was down")
	assert.Less(t, connections, 100, "a dead destination costs a few connections, not one per message")
}

// waitAllDelivered waits until the queue has logged "delivered" for every
// queue ID of ids (over every run of the process), then a little longer
// for anything more, and returns the sinks' messages.
func waitAllDelivered(t *testing.T, p *caddyProc, ids map[string]string, timeout time.Duration, sinks ...*peertest.Sink) []peertest.SinkMessage {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		done := map[string]bool{}
		for _, e := range p.queueLog("delivered") {
			done[e.str("id")] = true
		}
		missing := 0
		for _, id := range ids {
			if !done[id] {
				missing++
			}
		}
		if missing == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d messages not delivered after %v", missing, len(ids), timeout)
		}
		time.Sleep(250 * time.Millisecond)
	}
	time.Sleep(1500 * time.Millisecond)
	var msgs []peertest.SinkMessage
	for _, s := range sinks {
		msgs = append(msgs, s.Messages(t)...)
	}
	return msgs
}

// waitArrivedAndQuiet waits until every marker of ids has arrived at the
// sinks, and then until neither the sinks nor the queue's log have
// changed for 2 s (the queue has nothing left to do), and returns the
// sinks' messages.
func waitArrivedAndQuiet(t *testing.T, p *caddyProc, ids map[string]string, timeout time.Duration, sinks ...*peertest.Sink) []peertest.SinkMessage {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var msgs []peertest.SinkMessage
	for {
		msgs = msgs[:0]
		for _, s := range sinks {
			msgs = append(msgs, s.Messages(t)...)
		}
		seen := countSubjects(msgs)
		missing := 0
		for marker := range ids {
			if seen[marker] == 0 {
				missing++
			}
		}
		if missing == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d messages have not arrived after %v", missing, len(ids), timeout)
		}
		time.Sleep(500 * time.Millisecond)
	}
	state := func() [2]int {
		n := 0
		for _, s := range sinks {
			n += dumpCount(s)
		}
		return [2]int{n, len(p.queueLog(""))}
	}
	last, since := state(), time.Now()
	for time.Since(since) < 2*time.Second {
		if time.Now().After(deadline) {
			t.Fatalf("the queue is still busy after %v", timeout)
		}
		time.Sleep(250 * time.Millisecond)
		if now := state(); now != last {
			last, since = now, time.Now()
		}
	}
	msgs = msgs[:0]
	for _, s := range sinks {
		msgs = append(msgs, s.Messages(t)...)
	}
	return msgs
}

// TestQueueKill9 kills Caddy with SIGKILL while 2,000 queued messages
// drain to a slow sink (smtp-sink -W .:1: every end of data waits a
// second for its reply, so that the transactions in flight at the kill
// have their message sent but no answer), starts it again on the same
// queue, and checks that every message arrives, and that the duplicates
// are no more than the transactions in flight at the kill (counted as
// Caddy's connections to the sink, and bounded by
// destination_concurrency).
func TestQueueKill9(t *testing.T) {
	const clients, perClient = 8, 250
	const total = clients * perClient
	const destConcurrency = 100
	sink := peertest.StartSink(t, peertest.SinkOptions{Backlog: 256, Flags: []string{"-W", ".:1"}})
	submit := peertest.FreePort(t)
	p := startCaddy(t, "Caddyfile", relayConfig("off", sink.Port, destConcurrency, submit,
		fmt.Sprintf("\t\t\tretry 1s\n\t\t\tnotify none\n\t\t\tconcurrency 200\n\t\t\tdestination_concurrency %d", destConcurrency)))

	ids := submitMany(t, fmt.Sprintf("127.0.0.1:%d", submit), "kill", clients, perClient)
	require.Len(t, ids, total)

	// Kill it in the middle of the drain.
	deadline := time.Now().Add(60 * time.Second)
	for dumpCount(sink) < 300 {
		require.True(t, time.Now().Before(deadline), "the drain did not start")
		time.Sleep(50 * time.Millisecond)
	}
	loggedBefore := len(p.queueLog("delivered"))
	inflight := 0
	for range 3 {
		inflight = max(inflight, establishedTo(p.pid(), sink.Port))
		time.Sleep(2 * time.Millisecond)
	}
	p.kill()
	killedAt := time.Now()
	atKill := dumpCount(sink)
	t.Logf("killed with %d messages at the sink, %d logged delivered, %d connections to the sink open", atKill, loggedBefore, inflight)
	require.Less(t, atKill, total-200, "killed in the middle of the drain")

	p.start()
	restarted := time.Since(killedAt)
	// Not by the "delivered" lines: the kill may fall between a result's
	// commit and its log line.
	msgs := waitArrivedAndQuiet(t, p, ids, 120*time.Second, sink)
	t.Logf("restarted in %v; drained %v after the kill", restarted.Round(time.Millisecond), time.Since(killedAt).Round(time.Millisecond))

	seen := countSubjects(msgs)
	for marker := range ids {
		assert.GreaterOrEqual(t, seen[marker], 1, "%s arrived", marker)
	}
	assert.Len(t, seen, total, "nothing else arrived")
	dups := 0
	for _, n := range seen {
		dups += n - 1
	}
	t.Logf("%d messages at the sink, %d duplicates; %d transactions could be in flight at the kill", len(msgs), dups, inflight)
	assert.LessOrEqual(t, dups, inflight, "duplicates are at most the transactions in flight at the kill")
	assert.LessOrEqual(t, dups, destConcurrency)

	// The attempt cut by the kill was recorded before it connected: the
	// message came back as its second attempt, not as a first one.
	delivered := map[string]logEntry{}
	for _, e := range p.queueLog("delivered") {
		delivered[e.str("id")] = e
	}
	for marker, n := range seen {
		if n > 1 {
			assert.GreaterOrEqual(t, delivered[ids[marker]].int("attempts"), 2, "%s: the attempt in flight at the kill counts", marker)
		}
	}
}

// TestQueueReloadDuringDrain queues 2,000 messages for two relays behind
// a delaying proxy each (so that the drain takes seconds), and changes
// the config 10 times through the admin API while the queue drains them
// (next_hop between the relays, the queue's retry schedule and
// destination_concurrency, a timeout): every message arrives exactly
// once, and both relays got some.
func TestQueueReloadDuringDrain(t *testing.T) {
	const clients, perClient = 8, 250
	const total = clients * perClient
	sinkA := peertest.StartSink(t, peertest.SinkOptions{Backlog: 256})
	sinkB := peertest.StartSink(t, peertest.SinkOptions{Backlog: 256})
	proxyA := peertest.StartDelayProxy(t, sinkA.Addr, 20*time.Millisecond)
	proxyB := peertest.StartDelayProxy(t, sinkB.Addr, 20*time.Millisecond)
	portOf := func(addr string) string { return addr[strings.LastIndexByte(addr, ':')+1:] }
	admin, submit := peertest.FreePort(t), peertest.FreePort(t)
	p := startCaddy(t, "Caddyfile", fmt.Sprintf(`{
	admin 127.0.0.1:%d
	smtp {
		hostname out.example.org
		resolver udp://127.0.0.1:1
		next_hop a
		remote a {
			address 127.0.0.1
			port %s
			concurrency 30
		}
		remote b {
			address 127.0.0.1
			port %s
			concurrency 30
		}
		timeouts {
			data 10m
		}
		queue {
			retry 1s
			notify none
			destination_concurrency 20
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
`, admin, portOf(proxyA.Addr), portOf(proxyB.Addr), submit))

	ids := submitMany(t, fmt.Sprintf("127.0.0.1:%d", submit), "reload", clients, perClient)
	require.Len(t, ids, total)

	patches := []struct{ path, value string }{
		{"apps/smtp/next_hop", `"b"`}, {"apps/smtp/queue/destination_concurrency", `10`}, {"apps/smtp/next_hop", `"a"`},
		{"apps/smtp/queue/retry", `[2000000000, 3000000000]`}, {"apps/smtp/next_hop", `"b"`}, {"apps/smtp/timeouts/data", `"5m"`},
		{"apps/smtp/queue/destination_concurrency", `30`}, {"apps/smtp/next_hop", `"a"`}, {"apps/smtp/queue/retry", `[1000000000]`},
		{"apps/smtp/next_hop", `"b"`},
	}
	before := dumpCount(sinkA) + dumpCount(sinkB)
	start := time.Now()
	for _, pt := range patches {
		time.Sleep(250 * time.Millisecond)
		began := time.Now()
		patchConfig(t, admin, pt.path, pt.value)
		assert.Less(t, time.Since(began), 5*time.Second, "the admin API is not blocked by the drain")
	}
	after := dumpCount(sinkA) + dumpCount(sinkB)
	t.Logf("10 reloads in %v, while the relays went from %d to %d messages", time.Since(start).Round(time.Millisecond), before, after)
	require.Less(t, after, total, "the reloads happened during the drain")

	msgs := waitAllDelivered(t, p, ids, 90*time.Second, sinkA, sinkB)
	seen := countSubjects(msgs)
	assert.Len(t, msgs, total, "no message twice")
	assert.Len(t, seen, total, "every message")
	for marker := range ids {
		assert.Equal(t, 1, seen[marker], "%s", marker)
	}
	a, b := len(sinkA.Messages(t)), len(sinkB.Messages(t))
	t.Logf("relay a got %d, relay b got %d, in %v", a, b, time.Since(start).Round(time.Millisecond))
	assert.Positive(t, a)
	assert.Positive(t, b, "the next_hop changes took effect")
}
