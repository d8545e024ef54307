package e2e

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/crypto/bcrypt"

	"github.com/seed7b014b84/caddy-smtp/internal/peertest"
)

// Queue management (issue 13) against the built binary: the admin API
// (admin.api.smtp under /smtp/queue), `caddy smtp-queue` run as a
// subprocess against the binary's admin endpoint, the queue page
// (http.handlers.smtp_queue) in headless Chromium behind basic_auth, and
// the access rules of both doors.

// mgmtE2EMsg is a message the test submitted, and what it expects of it.
type mgmtE2EMsg struct {
	group  string // a, b, c, m, p, h (see TestMgmtE2EQueue)
	marker string // the Subject, and the recipients' local part
	from   string
	to     []string
	api    bool // submitted through the admin API (source "sendmail"), not SMTP
	id     string
}

func (m *mgmtE2EMsg) hasDomain(domain string) bool {
	return slices.ContainsFunc(m.to, func(r string) bool { return strings.HasSuffix(r, "@"+domain) })
}

// mgmtE2EView is a message as the list and show answers give it.
type mgmtE2EView struct {
	ID          string    `json:"id"`
	From        string    `json:"from"`
	State       string    `json:"state"`
	Source      string    `json:"source"`
	HoldReason  string    `json:"hold_reason"`
	NextAttempt time.Time `json:"next_attempt"`
	Recipients  []struct {
		Addr      string `json:"addr"`
		State     string `json:"state"`
		Attempts  int    `json:"attempts"`
		LastError string `json:"last_error"`
		LastReply *struct {
			Code int `json:"code"`
		} `json:"last_reply"`
	} `json:"recipients"`
}

// mgmtE2EAPI calls the admin API of a running binary.
type mgmtE2EAPI struct {
	t    *testing.T
	base string // http://127.0.0.1:PORT
	// header is sent with every request (an Origin, basic auth).
	header http.Header
}

// with returns the API for a subtest (whose failures end it, not its
// parent).
func (a *mgmtE2EAPI) with(t *testing.T) *mgmtE2EAPI {
	c := *a
	c.t = t
	return &c
}

func (a *mgmtE2EAPI) do(method, path string, body io.Reader, header http.Header) (int, []byte) {
	a.t.Helper()
	req, err := http.NewRequest(method, a.base+path, body)
	require.NoError(a.t, err)
	for k, v := range a.header {
		req.Header[k] = v
	}
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := (&http.Client{Timeout: 30 * time.Second}).Do(req)
	require.NoError(a.t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(a.t, err)
	return resp.StatusCode, b
}

// obj calls the API and decodes a JSON object answer.
func (a *mgmtE2EAPI) obj(method, path string) (int, map[string]any) {
	a.t.Helper()
	code, b := a.do(method, path, nil, nil)
	var out map[string]any
	require.NoError(a.t, json.Unmarshal(b, &out), "%s %s: %d %s", method, path, code, b)
	return code, out
}

// list returns every message the filter (a query string) selects, a page
// of 100 at a time through the cursor; no message is on two pages.
func (a *mgmtE2EAPI) list(query string) []mgmtE2EView {
	a.t.Helper()
	var all []mgmtE2EView
	seen := map[string]bool{}
	cursor := ""
	for page := 0; ; page++ {
		require.Less(a.t, page, 100, "the cursor ends")
		q, err := url.ParseQuery(query)
		require.NoError(a.t, err)
		q.Set("limit", "100")
		if cursor != "" {
			q.Set("cursor", cursor)
		}
		code, b := a.do(http.MethodGet, "/smtp/queue?"+q.Encode(), nil, nil)
		require.Equal(a.t, http.StatusOK, code, "list %s: %s", query, b)
		var out struct {
			Messages []mgmtE2EView `json:"messages"`
			Next     string        `json:"next"`
		}
		require.NoError(a.t, json.Unmarshal(b, &out))
		require.LessOrEqual(a.t, len(out.Messages), 100)
		for _, m := range out.Messages {
			require.False(a.t, seen[m.ID], "%s listed twice (%s)", m.ID, query)
			seen[m.ID] = true
		}
		all = append(all, out.Messages...)
		if out.Next == "" {
			return all
		}
		cursor = out.Next
	}
}

// submit posts a message through the admin API (as `caddy sendmail` does).
func (a *mgmtE2EAPI) submit(m *mgmtE2EMsg) {
	a.t.Helper()
	q := url.Values{"from": {m.from}, "to": m.to}
	code, b := a.do(http.MethodPost, "/smtp/queue?"+q.Encode(), strings.NewReader(mgmtE2EBody(m)),
		http.Header{"Content-Type": {"message/rfc822"}})
	require.Equal(a.t, http.StatusAccepted, code, "%s", b)
	var out map[string]string
	require.NoError(a.t, json.Unmarshal(b, &out))
	m.id = out["id"]
	require.Len(a.t, m.id, 20)
}

func mgmtE2EIDs(views []mgmtE2EView) []string {
	ids := make([]string, len(views))
	for i, v := range views {
		ids[i] = v.ID
	}
	return ids
}

func mgmtE2EBody(m *mgmtE2EMsg) string {
	return fmt.Sprintf("From: %s\r\nTo: %s\r\nSubject: %s\r\nMessage-ID: <%s@client.example.org>\r\n\r\nbody of %s\r\n",
		m.from, strings.Join(m.to, ", "), m.marker, m.marker, m.marker)
}

// mgmtE2ESubmit submits the messages through the submission port, over 6
// connections, and records their queue IDs.
func mgmtE2ESubmit(t *testing.T, addr string, msgs []*mgmtE2EMsg) {
	t.Helper()
	const conns = 6
	var wg sync.WaitGroup
	errs := make(chan error, conns)
	for c := range conns {
		wg.Go(func() {
			s, err := dialSubmitter(addr)
			if err != nil {
				errs <- err
				return
			}
			defer s.close()
			for i := c; i < len(msgs); i += conns {
				m := msgs[i]
				code, text, err := s.send(m.from, m.to, mgmtE2EBody(m))
				id, ok := queuedID(code, text)
				if err != nil || !ok {
					errs <- fmt.Errorf("%s: %d %s %v", m.marker, code, text, err)
					return
				}
				m.id = id
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("submission: %v", err)
	}
	if t.Failed() {
		t.FailNow()
	}
}

// mgmtE2ECLI runs `caddy smtp-queue ARGS` with env added to an isolated
// environment, and returns its output and exit status.
func mgmtE2ECLI(t *testing.T, env []string, args ...string) (stdout, stderr string, status int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, caddyBin, append([]string{"smtp-queue"}, args...)...)
	cmd.Dir = t.TempDir()
	cmd.Env = append(isolatedEnv(t), env...)
	var out, errb strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	var exit *exec.ExitError
	switch {
	case errors.As(err, &exit):
		status = exit.ExitCode()
	case err != nil:
		t.Fatalf("caddy smtp-queue %v: %v", args, err)
	}
	return out.String(), errb.String(), status
}

// mgmtE2ECLIList runs `caddy smtp-queue list --json` with the flags.
func mgmtE2ECLIList(t *testing.T, address string, flags ...string) []string {
	t.Helper()
	out, stderr, status := mgmtE2ECLI(t, nil, append([]string{"list", "--address", address, "--json"}, flags...)...)
	require.Zero(t, status, "list %v: %s", flags, stderr)
	var res struct {
		Messages []mgmtE2EView `json:"messages"`
	}
	require.NoError(t, json.Unmarshal([]byte(out), &res), "%s", out)
	return mgmtE2EIDs(res.Messages)
}

// mgmtE2EEvent is an event the binary logged (Caddy's events app logs
// each event it emits, at debug level, on the logger "events").
type mgmtE2EEvent struct{ name, id string }

func mgmtE2EEvents(p *caddyProc) []mgmtE2EEvent {
	var out []mgmtE2EEvent
	for _, e := range p.entries() {
		if e.Logger != "events" || e.Msg != "event" {
			continue
		}
		data, _ := e.F["data"].(map[string]any)
		id, _ := data["id"].(string)
		out = append(out, mgmtE2EEvent{name: e.str("name"), id: id})
	}
	return out
}

// mgmtE2EWaitEvents waits (at most 10 s) until the events logged after
// the first mark ones include as many named name as want holds, and
// checks they are exactly the messages of want.
func mgmtE2EWaitEvents(t *testing.T, p *caddyProc, mark int, name string, want []string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		var got []string
		for _, e := range mgmtE2EEvents(p)[mark:] {
			if e.name == name {
				got = append(got, e.id)
			}
		}
		if len(got) >= len(want) || time.Now().After(deadline) {
			assert.ElementsMatch(t, want, got, "%s events", name)
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// mgmtE2EHeldAsQueued checks that the messages were held as they were
// queued: their "queued" log line (and smtp.queued event) says held.
func mgmtE2EHeldAsQueued(t *testing.T, p *caddyProc, msgs []*mgmtE2EMsg) {
	t.Helper()
	want := map[string]bool{}
	for _, m := range msgs {
		want[m.id] = true
	}
	held := map[string]bool{}
	deadline := time.Now().Add(5 * time.Second)
	for len(held) < len(want) && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
		for _, e := range p.queueLog("queued") {
			if want[e.str("id")] && e.F["held"] == true {
				held[e.str("id")] = true
			}
		}
	}
	assert.Len(t, held, len(want), "messages held as they were queued")
}

// mgmtE2EModel is what the test expects the queue to hold: each message's
// state ("pending", "deferred", "held"; absent: not in the queue).
type mgmtE2EModel struct {
	msgs  []*mgmtE2EMsg
	byID  map[string]*mgmtE2EMsg
	state map[string]string
}

func (m *mgmtE2EModel) add(state string, msgs ...*mgmtE2EMsg) {
	for _, msg := range msgs {
		m.msgs = append(m.msgs, msg)
		m.byID[msg.id] = msg
		m.state[msg.id] = state
	}
}

// sel returns the IDs of the queued messages pick selects.
func (m *mgmtE2EModel) sel(pick func(*mgmtE2EMsg) bool) []string {
	var ids []string
	for _, msg := range m.msgs {
		if _, queued := m.state[msg.id]; queued && pick(msg) {
			ids = append(ids, msg.id)
		}
	}
	return ids
}

func (m *mgmtE2EModel) set(state string, ids ...string) {
	for _, id := range ids {
		if state == "" {
			delete(m.state, id)
		} else {
			m.state[id] = state
		}
	}
}

// check compares the queue (every message but the notices) with the
// model: an action changed exactly the messages it selected.
func (m *mgmtE2EModel) check(t *testing.T, api *mgmtE2EAPI, after string) {
	t.Helper()
	assert.Empty(t, m.diff(api), "after %s, the queue differs from what the test expects", after)
}

// settle waits, at most 10 s, for the queue to match the model (for
// deliveries the sinks have seen, whose results the queue is recording),
// then checks it.
func (m *mgmtE2EModel) settle(t *testing.T, api *mgmtE2EAPI, after string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for len(m.diff(api)) > 0 && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	m.check(t, api, after)
}

// diff says how the queue differs from the model (at most 10 lines).
func (m *mgmtE2EModel) diff(api *mgmtE2EAPI) []string {
	got := map[string]string{}
	for _, v := range api.list("") {
		if v.Source != "dsn" {
			got[v.ID] = v.State
		}
	}
	var diffs []string
	for id, want := range m.state {
		if got[id] != want {
			diffs = append(diffs, fmt.Sprintf("%s (%s): %q, want %q", id, m.byID[id].marker, got[id], want))
		}
	}
	for id, st := range got {
		if _, ok := m.state[id]; !ok {
			marker := "not submitted by the test"
			if msg := m.byID[id]; msg != nil {
				marker = msg.marker
			}
			diffs = append(diffs, fmt.Sprintf("%s (%s): %q, want gone", id, marker, st))
		}
	}
	slices.Sort(diffs)
	if len(diffs) > 10 {
		diffs = append(diffs[:10], fmt.Sprintf("... %d more", len(diffs)-10))
	}
	return diffs
}

// mgmtE2EConfig is the binary's config for TestMgmtE2EQueue: mail for
// alpha.test, delta.test and held.test goes to the sink good, for
// beta.test to soft and for gamma.test to soft2 (both defer every
// recipient: smtp-sink -r rcpt, 450 4.3.0), and anything else (the
// notices to the senders) to notices. Events are logged (the events app
// logs each at debug level; only its logger is at debug).
func mgmtE2EConfig(t *testing.T, admin, submit int, good, soft, soft2, notices *peertest.Sink) string {
	remote := func(name string, s *peertest.Sink) string {
		return fmt.Sprintf("\t\tremote %s {\n\t\t\taddress 127.0.0.1\n\t\t\tport %d\n\t\t}\n", name, s.Port)
	}
	caddyfile := fmt.Sprintf(`{
	admin 127.0.0.1:%d
	smtp {
		hostname out.example.org
		resolver udp://127.0.0.1:1
		next_hop {
			if "rcpt_domain == 'beta.test'" soft
			if "rcpt_domain == 'gamma.test'" soft2
			if "rcpt_domain == 'alpha.test' || rcpt_domain == 'delta.test' || rcpt_domain == 'held.test'" good
			else notices
		}
%s%s%s%s		queue {
			retry 1h
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
`, admin, remote("good", good), remote("soft", soft), remote("soft2", soft2), remote("notices", notices), submit)
	return adaptJSON(t, caddyfile, func(cfg map[string]any) {
		cfg["apps"].(map[string]any)["events"] = map[string]any{}
		cfg["logging"] = map[string]any{"logs": map[string]any{
			"default": map[string]any{"level": "INFO", "exclude": []string{"events"}},
			"events":  map[string]any{"level": "DEBUG", "include": []string{"events"}},
		}}
	})
}

// TestMgmtE2EQueue fills the queue of the binary with a few hundred
// messages to several destinations (delivered, deferred by a sink that
// answers 450, pending while delivery is paused, held by a hold rule) and
// manages it through the admin API and `caddy smtp-queue`: every filter
// selects exactly the messages it names; every action (retry, hold,
// release, bounce, delete; on one message, on a filter, on all) changes
// exactly those and emits its events; a bounce mails the sender a
// failure notice, a delete does not; the summary counts by destination;
// a hold rule holds queued and new messages (also after a config reload)
// and its removal releases them; nothing is delivered while paused, and
// everything due is after resume.
func TestMgmtE2EQueue(t *testing.T) {
	good := peertest.StartSink(t, peertest.SinkOptions{Backlog: 256})
	soft := peertest.StartSink(t, peertest.SinkOptions{Flags: []string{"-r", "rcpt"}, Backlog: 256})
	soft2 := peertest.StartSink(t, peertest.SinkOptions{Flags: []string{"-r", "rcpt"}, Backlog: 256})
	notices := peertest.StartSink(t, peertest.SinkOptions{})
	adminPort, submitPort := freePort(t), freePort(t)
	p := startCaddy(t, "caddy.json", mgmtE2EConfig(t, adminPort, submitPort, good, soft, soft2, notices))
	address := fmt.Sprintf("127.0.0.1:%d", adminPort)
	submitAddr := fmt.Sprintf("127.0.0.1:%d", submitPort)
	api := &mgmtE2EAPI{t: t, base: "http://" + address}
	started := time.Now()

	senders := []string{"app@senders.test", "news@lists.senders.test", "billing@senders.test"}
	n := 0
	// newGroup makes count messages to each of the domains, numbered
	// from first, their senders in turn.
	newGroup := func(group string, first, count int, domains ...string) []*mgmtE2EMsg {
		var out []*mgmtE2EMsg
		for i := range count {
			m := &mgmtE2EMsg{group: group, marker: fmt.Sprintf("%s%d", group, first+i), from: senders[n%len(senders)]}
			n++
			for _, d := range domains {
				m.to = append(m.to, m.marker+"@"+d)
			}
			out = append(out, m)
		}
		return out
	}
	// a: delivered at once; b, c: deferred (soft, soft2); m: both.
	groupA := newGroup("a", 0, 60, "alpha.test")
	groupB := newGroup("b", 0, 80, "beta.test")
	groupC := newGroup("c", 0, 60, "gamma.test")
	groupM := newGroup("m", 0, 10, "beta.test", "gamma.test")
	first := slices.Concat(groupA, groupB, groupC, groupM)
	mgmtE2ESubmit(t, submitAddr, first)
	waitSinks(t, len(groupA), 30*time.Second, good)
	deferred := len(groupB) + len(groupC) + len(groupM)
	deadline := time.Now().Add(30 * time.Second)
	for len(api.list("state=deferred")) < deferred {
		require.True(t, time.Now().Before(deadline), "the deferrals within 30s")
		time.Sleep(200 * time.Millisecond)
	}
	model := &mgmtE2EModel{byID: map[string]*mgmtE2EMsg{}, state: map[string]string{}}
	model.add("deferred", slices.Concat(groupB, groupC, groupM)...)
	for _, m := range groupA {
		model.byID[m.id] = m
	}

	// Pause (through the CLI), then queue more: p (delta.test, through
	// SMTP and the admin API) stays pending, h1 (held.test) too until the
	// hold rule holds it; h2 is held as it arrives.
	time.Sleep(1200 * time.Millisecond)
	ageMark := time.Now()
	time.Sleep(1200 * time.Millisecond)
	out, stderr, status := mgmtE2ECLI(t, nil, "pause", "--address", address)
	require.Zero(t, status, stderr)
	assert.Equal(t, "delivery is paused\n", out)
	groupP := newGroup("p", 0, 60, "delta.test")
	for _, m := range groupP[50:] {
		m.api = true
		api.submit(m)
	}
	groupH1 := newGroup("h", 0, 20, "held.test")
	mgmtE2ESubmit(t, submitAddr, slices.Concat(groupP[:50], groupH1))
	model.add("pending", groupP...)
	model.add("pending", groupH1...)
	model.check(t, api, "pausing and queueing p and h1")

	mark := len(mgmtE2EEvents(p))
	code, b := api.do(http.MethodPost, "/smtp/queue/holds", strings.NewReader(`{"recipient_domain": "held.test", "comment": "block"}`),
		http.Header{"Content-Type": {"application/json"}})
	require.Equal(t, http.StatusCreated, code, "%s", b)
	var added struct {
		Hold struct {
			ID string `json:"id"`
		} `json:"hold"`
		Touched int `json:"touched"`
	}
	require.NoError(t, json.Unmarshal(b, &added))
	rule := added.Hold.ID
	require.NotEmpty(t, rule)
	assert.Equal(t, len(groupH1), added.Touched, "the rule holds the queued messages it matches")
	mgmtE2EWaitEvents(t, p, mark, "smtp.held", model.sel(func(m *mgmtE2EMsg) bool { return m.group == "h" }))
	model.set("held", model.sel(func(m *mgmtE2EMsg) bool { return m.group == "h" })...)
	groupH2 := newGroup("h", 20, 20, "held.test")
	mgmtE2ESubmit(t, submitAddr, groupH2)
	model.add("held", groupH2...)
	mgmtE2EHeldAsQueued(t, p, groupH2)
	model.check(t, api, "the hold rule")
	reasons := map[string]int{}
	for _, v := range api.list("to=%40held.test") {
		reasons[v.HoldReason]++
	}
	assert.Equal(t, map[string]int{"hold rule " + rule + ": block": len(groupH1) + len(groupH2)}, reasons, "the hold reasons")
	// Nothing went out while paused.
	time.Sleep(time.Second)
	assert.Equal(t, len(groupA), dumpCount(good), "nothing delivered while paused")

	t.Run("filters", func(t *testing.T) {
		api := api.with(t)
		inQueue := func(m *mgmtE2EMsg) bool { return true }
		youngerThan := func() string { return fmt.Sprintf("%dms", time.Since(ageMark).Milliseconds()) }
		b7, c3 := groupB[7], groupC[3]
		for _, c := range []struct {
			name  string
			query func() string   // the API's query
			flags func() []string // the CLI's flags; nil: the CLI has none
			want  func(*mgmtE2EMsg) bool
		}{
			{"everything", func() string { return "" }, func() []string { return nil }, inQueue},
			{"domain", func() string { return "domain=beta.test" }, func() []string { return []string{"--domain", "BETA.test"} },
				func(m *mgmtE2EMsg) bool { return m.hasDomain("beta.test") }},
			{"domain of the second recipient", func() string { return "domain=gamma.test" }, func() []string { return []string{"--domain", "gamma.test"} },
				func(m *mgmtE2EMsg) bool { return m.hasDomain("gamma.test") }},
			{"recipient", func() string { return "to=" + url.QueryEscape(b7.to[0]) }, func() []string { return []string{"--to", b7.to[0]} },
				func(m *mgmtE2EMsg) bool { return m == b7 }},
			{"recipient @domain", func() string { return "to=%40held.test" }, func() []string { return []string{"--to", "@held.test"} },
				func(m *mgmtE2EMsg) bool { return m.hasDomain("held.test") }},
			{"sender", func() string { return "from=news%40lists.senders.test" }, func() []string { return []string{"--from", "news@lists.senders.test"} },
				func(m *mgmtE2EMsg) bool { return m.from == "news@lists.senders.test" }},
			{"sender @domain", func() string { return "from=%40senders.test" }, func() []string { return []string{"--from", "@senders.test"} },
				func(m *mgmtE2EMsg) bool { return strings.HasSuffix(m.from, "@senders.test") }},
			{"destination tried", func() string { return "destination=remote%3Asoft2" }, func() []string { return []string{"--destination", "remote:soft2"} },
				func(m *mgmtE2EMsg) bool { return m.hasDomain("gamma.test") }},
			{"destination not tried yet", func() string { return "destination=delta.test" }, func() []string { return []string{"--destination", "delta.test"} },
				func(m *mgmtE2EMsg) bool { return m.group == "p" }},
			{"state deferred", func() string { return "state=deferred" }, func() []string { return []string{"--state", "deferred"} },
				func(m *mgmtE2EMsg) bool { return strings.Contains("bcm", m.group) }},
			{"state pending", func() string { return "state=pending" }, func() []string { return []string{"--state", "pending"} },
				func(m *mgmtE2EMsg) bool { return m.group == "p" }},
			{"state held", func() string { return "state=held" }, func() []string { return []string{"--state", "held"} },
				func(m *mgmtE2EMsg) bool { return m.group == "h" }},
			{"state failed", func() string { return "state=failed" }, func() []string { return []string{"--state", "failed"} },
				func(m *mgmtE2EMsg) bool { return false }},
			{"held", func() string { return "held=true" }, func() []string { return []string{"--held", "true"} },
				func(m *mgmtE2EMsg) bool { return m.group == "h" }},
			{"not held", func() string { return "held=false" }, func() []string { return []string{"--held", "false"} },
				func(m *mgmtE2EMsg) bool { return m.group != "h" }},
			{"younger than", func() string { return "younger_than=" + youngerThan() }, func() []string { return []string{"--younger-than", youngerThan()} },
				func(m *mgmtE2EMsg) bool { return m.group == "p" || m.group == "h" }},
			{"older than", func() string { return "older_than=" + youngerThan() }, func() []string { return []string{"--older-than", youngerThan()} },
				func(m *mgmtE2EMsg) bool { return strings.Contains("bcm", m.group) }},
			{"next attempt within 10m", func() string { return "next_before=10m&held=false" }, func() []string { return []string{"--next-before", "10m", "--held", "false"} },
				func(m *mgmtE2EMsg) bool { return m.group == "p" }},
			{"next attempt within 2h", func() string { return "next_before=2h&held=false" }, func() []string { return []string{"--next-before", "2h", "--held", "false"} },
				func(m *mgmtE2EMsg) bool { return m.group != "h" }},
			{"ids", func() string { return "id=" + b7.id + "&id=" + c3.id }, func() []string { return []string{"--id", b7.id, "--id", c3.id} },
				func(m *mgmtE2EMsg) bool { return m == b7 || m == c3 }},
			{"sender and domain", func() string { return "from=news%40lists.senders.test&domain=beta.test" },
				func() []string { return []string{"--from", "news@lists.senders.test", "--domain", "beta.test"} },
				func(m *mgmtE2EMsg) bool { return m.from == "news@lists.senders.test" && m.hasDomain("beta.test") }},
			{"source sendmail", func() string { return "source=sendmail" }, nil, func(m *mgmtE2EMsg) bool { return m.api }},
			{"source smtp", func() string { return "source=smtp&domain=delta.test" }, nil, func(m *mgmtE2EMsg) bool { return m.group == "p" && !m.api }},
		} {
			want := model.sel(c.want)
			assert.ElementsMatch(t, want, mgmtE2EIDs(api.list(c.query())), "API: %s (%s)", c.name, c.query())
			if c.flags != nil {
				assert.ElementsMatch(t, want, mgmtE2ECLIList(t, address, c.flags()...), "CLI: %s (%v)", c.name, c.flags())
			}
		}
		assert.Len(t, model.sel(inQueue), 250)

		// The CLI's table, as mailq prints it.
		out, stderr, status := mgmtE2ECLI(t, nil, "list", "--address", address, "--domain", "gamma.test")
		require.Zero(t, status, stderr)
		for _, id := range model.sel(func(m *mgmtE2EMsg) bool { return m.hasDomain("gamma.test") }) {
			assert.Contains(t, out, id)
		}
		assert.Contains(t, out, "450 4.3.0")
		assert.Contains(t, out, "Kbytes in 70 Requests.")
		assert.Len(t, mgmtE2ECLIList(t, address, "--limit", "7"), 7)

		// A page through the API, and a bad filter.
		code, page := api.obj(http.MethodGet, "/smtp/queue?limit=30&state=deferred")
		require.Equal(t, http.StatusOK, code)
		assert.Len(t, page["messages"], 30)
		assert.NotEmpty(t, page["next"])
		code, bad := api.obj(http.MethodGet, "/smtp/queue?state=stuck")
		assert.Equal(t, http.StatusBadRequest, code)
		assert.Contains(t, bad["error"], "state")
		_, stderr, status = mgmtE2ECLI(t, nil, "list", "--address", address, "--older-than", "yesterday")
		assert.Equal(t, 64, status, "a bad filter is a usage error (EX_USAGE)")
		assert.Contains(t, stderr, "older_than")

		// One message: show (API and CLI) and its body.
		code, shown := api.obj(http.MethodGet, "/smtp/queue/"+b7.id)
		require.Equal(t, http.StatusOK, code)
		assert.Equal(t, "deferred", shown["state"])
		assert.Equal(t, b7.from, shown["from"])
		r := shown["recipients"].([]any)[0].(map[string]any)
		assert.Equal(t, b7.to[0], r["addr"])
		assert.EqualValues(t, 1, r["attempts"])
		assert.EqualValues(t, 450, r["last_reply"].(map[string]any)["code"])
		out, stderr, status = mgmtE2ECLI(t, nil, "show", b7.id, "--address", address)
		require.Zero(t, status, stderr)
		assert.Regexp(t, `state:\s+deferred\n`, out)
		assert.Contains(t, out, b7.to[0])
		assert.Contains(t, out, "450 4.3.0")
		code, body := api.do(http.MethodGet, "/smtp/queue/"+b7.id+"/body", nil, nil)
		require.Equal(t, http.StatusOK, code)
		assert.Contains(t, string(body), "Subject: "+b7.marker+"\r\n")
		_, _, status = mgmtE2ECLI(t, nil, "show", "00000000000000000000", "--address", address)
		assert.Equal(t, 65, status, "no such message (EX_DATAERR)")
	})

	t.Run("summary", func(t *testing.T) {
		api := api.with(t)
		want := map[string]int{
			"remote:soft":   len(model.sel(func(m *mgmtE2EMsg) bool { return m.hasDomain("beta.test") })),
			"remote:soft2":  len(model.sel(func(m *mgmtE2EMsg) bool { return m.hasDomain("gamma.test") })),
			"mx:delta.test": len(groupP),
			"mx:held.test":  len(groupH1) + len(groupH2),
		}
		assert.Equal(t, map[string]int{"remote:soft": 90, "remote:soft2": 70, "mx:delta.test": 60, "mx:held.test": 40}, want)
		type summary struct {
			Messages     int `json:"messages"`
			Destinations []struct {
				Destination string `json:"destination"`
				Messages    int    `json:"messages"`
				Ages        []int  `json:"ages"`
				LastError   string `json:"last_error"`
				Suspended   bool   `json:"suspended"`
			} `json:"destinations"`
		}
		check := func(from string, raw []byte) {
			var s summary
			require.NoError(t, json.Unmarshal(raw, &s), "%s", raw)
			assert.Equal(t, 250, s.Messages, from)
			got := map[string]int{}
			for _, d := range s.Destinations {
				got[d.Destination] = d.Messages
				if assert.Len(t, d.Ages, 8, from) {
					assert.Equal(t, d.Messages, d.Ages[0], "%s: %s, all younger than 5m", from, d.Destination)
				}
				assert.False(t, d.Suspended, "%s: %s", from, d.Destination)
				if strings.HasPrefix(d.Destination, "remote:soft") {
					assert.Contains(t, d.LastError, "450 4.3.0", "%s: %s", from, d.Destination)
				}
			}
			assert.Equal(t, want, got, from)
		}
		code, raw := api.do(http.MethodGet, "/smtp/queue/summary", nil, nil)
		require.Equal(t, http.StatusOK, code)
		check("API", raw)
		// The CLI, finding the admin endpoint through CADDY_ADMIN.
		out, stderr, status := mgmtE2ECLI(t, []string{"CADDY_ADMIN=" + address}, "summary", "--json")
		require.Zero(t, status, stderr)
		check("CLI", []byte(out))
		out, stderr, status = mgmtE2ECLI(t, nil, "summary", "--address", address)
		require.Zero(t, status, stderr)
		assert.Regexp(t, `\n\s*TOTAL\s+250\s+250\s+0\s+0\s+0\s+0\s+0\s+0\s+0\s*\n`, out,
			"TOTAL: 250 messages, all in 0-5m (each once, also those with recipients at two destinations)")
		assert.Regexp(t, `\n\s*remote:soft\s+90\s+90\s+0\s`, out)
		assert.Contains(t, out, "remote:soft2: 450 4.3.0")
	})

	// The actions, while delivery is paused (so that nothing else
	// changes the queue): after each, the queue is exactly the model.
	retried := map[string]bool{}
	var noticed []*mgmtE2EMsg // the bounced messages, a notice each
	t.Run("actions", func(t *testing.T) {
		api := api.with(t)
		var singles []*mgmtE2EMsg
		for _, m := range groupB {
			if m.from == "app@senders.test" && len(singles) < 4 {
				singles = append(singles, m)
			}
		}
		touched := func(raw []byte) int {
			var res struct {
				Touched  int `json:"touched"`
				Deferred int `json:"deferred"`
			}
			require.NoError(t, json.Unmarshal(raw, &res), "%s", raw)
			assert.Zero(t, res.Deferred, "nothing is in delivery while paused")
			return res.Touched
		}
		cli := func(args ...string) string {
			t.Helper()
			out, stderr, status := mgmtE2ECLI(t, nil, append(args, "--address", address)...)
			require.Zero(t, status, "%v: %s", args, stderr)
			return out
		}
		api1 := func(method, path string) int {
			t.Helper()
			code, raw := api.do(method, path, nil, nil)
			require.Equal(t, http.StatusOK, code, "%s %s: %s", method, path, raw)
			return touched(raw)
		}
		ids := func(msgs []*mgmtE2EMsg) []string {
			var out []string
			for _, m := range msgs {
				out = append(out, m.id)
			}
			return out
		}

		// Hold one (API), release it (CLI).
		b0 := singles[0]
		mark := len(mgmtE2EEvents(p))
		assert.Equal(t, 1, api1(http.MethodPost, "/smtp/queue/"+b0.id+"/hold?reason=looking+into+it"))
		model.set("held", b0.id)
		mgmtE2EWaitEvents(t, p, mark, "smtp.held", []string{b0.id})
		model.check(t, api, "holding one message")
		_, shown := api.obj(http.MethodGet, "/smtp/queue/"+b0.id)
		assert.Equal(t, "looking into it", shown["hold_reason"])
		mark = len(mgmtE2EEvents(p))
		assert.Equal(t, "1 message\n", cli("release", b0.id))
		model.set("deferred", b0.id)
		retried[b0.id] = true // a release makes it due now
		mgmtE2EWaitEvents(t, p, mark, "smtp.released", []string{b0.id})
		model.check(t, api, "releasing one message")

		// Hold by a filter (CLI), release by the same filter (API).
		news := model.sel(func(m *mgmtE2EMsg) bool { return m.from == "news@lists.senders.test" && m.hasDomain("beta.test") })
		require.Len(t, news, 30)
		mark = len(mgmtE2EEvents(p))
		assert.Equal(t, "30 messages\n", cli("hold", "--from", "news@lists.senders.test", "--domain", "beta.test", "--reason", "spam run"))
		model.set("held", news...)
		mgmtE2EWaitEvents(t, p, mark, "smtp.held", news)
		model.check(t, api, "holding by a filter")
		reasons := map[string]int{}
		for _, v := range api.list("state=held&from=news%40lists.senders.test&domain=beta.test") {
			reasons[v.HoldReason]++
		}
		assert.Equal(t, map[string]int{"spam run": len(news)}, reasons, "the hold reasons")
		mark = len(mgmtE2EEvents(p))
		assert.Equal(t, len(news), api1(http.MethodPost, "/smtp/queue/release?from=news%40lists.senders.test&domain=beta.test"))
		model.set("deferred", news...)
		for _, id := range news {
			retried[id] = true
		}
		mgmtE2EWaitEvents(t, p, mark, "smtp.released", news)
		model.check(t, api, "releasing by a filter")

		// Retry by a filter (API) and one (CLI); a retry leaves held
		// messages alone (CLI).
		gamma := model.sel(func(m *mgmtE2EMsg) bool { return m.hasDomain("gamma.test") })
		assert.Equal(t, len(gamma), api1(http.MethodPost, "/smtp/queue/retry?domain=gamma.test"))
		for _, id := range gamma {
			retried[id] = true
		}
		b1 := singles[1]
		assert.Equal(t, "1 message\n", cli("retry", b1.id))
		retried[b1.id] = true
		assert.Equal(t, "0 messages\n", cli("retry", "--to", "@held.test"))
		model.check(t, api, "retrying")
		// Exactly the retried messages (and the pending ones) are due now.
		var due []string
		for id := range retried {
			due = append(due, id)
		}
		due = append(due, model.sel(func(m *mgmtE2EMsg) bool { return m.group == "p" })...)
		assert.ElementsMatch(t, due, mgmtE2EIDs(api.list("next_before=1m&held=false")), "the messages due now")
		var logged []string
		for deadline := time.Now().Add(5 * time.Second); len(logged) < len(gamma)+1 && time.Now().Before(deadline); {
			time.Sleep(50 * time.Millisecond)
			logged = nil
			for _, e := range p.entries() {
				if e.Msg == "queue action" && e.str("action") == "retry" {
					logged = append(logged, e.str("id"))
				}
			}
		}
		assert.ElementsMatch(t, append(gamma, b1.id), logged, "each retry is logged")

		// Bounce one (API) and by a filter (CLI): gone, a notice each.
		b2 := singles[2]
		mark = len(mgmtE2EEvents(p))
		assert.Equal(t, 1, api1(http.MethodPost, "/smtp/queue/"+b2.id+"/bounce?reason=bad+list"))
		model.set("", b2.id)
		noticed = append(noticed, b2)
		mgmtE2EWaitEvents(t, p, mark, "smtp.bounced", []string{b2.id})
		model.check(t, api, "bouncing one message")
		var billing []*mgmtE2EMsg
		for _, m := range slices.Concat(groupC, groupM) {
			if m.from == "billing@senders.test" {
				billing = append(billing, m)
			}
		}
		mark = len(mgmtE2EEvents(p))
		assert.Equal(t, fmt.Sprintf("%d messages\n", len(billing)), cli("bounce", "--from", "billing@senders.test", "--domain", "gamma.test"))
		model.set("", ids(billing)...)
		noticed = append(noticed, billing...)
		mgmtE2EWaitEvents(t, p, mark, "smtp.bounced", ids(billing))
		model.check(t, api, "bouncing by a filter")

		// Delete one (API) and by a filter (CLI): gone, no notice.
		b3 := singles[3]
		mark = len(mgmtE2EEvents(p))
		assert.Equal(t, 1, api1(http.MethodDelete, "/smtp/queue/"+b3.id))
		model.set("", b3.id)
		mgmtE2EWaitEvents(t, p, mark, "smtp.deleted", []string{b3.id})
		code, _ := api.do(http.MethodGet, "/smtp/queue/"+b3.id, nil, nil)
		assert.Equal(t, http.StatusNotFound, code)
		var appP []*mgmtE2EMsg
		for _, m := range groupP {
			if m.from == "app@senders.test" {
				appP = append(appP, m)
			}
		}
		mark = len(mgmtE2EEvents(p))
		assert.Equal(t, fmt.Sprintf("%d messages\n", len(appP)), cli("delete", "--domain", "delta.test", "--from", "app@senders.test"))
		model.set("", ids(appP)...)
		mgmtE2EWaitEvents(t, p, mark, "smtp.deleted", ids(appP))
		model.check(t, api, "deleting")

		// Every message only when asked for.
		_, stderr, status := mgmtE2ECLI(t, nil, "delete", "--address", address)
		assert.Equal(t, 64, status, "delete without a filter is a usage error")
		assert.Contains(t, stderr, "--all")
		code, raw := api.do(http.MethodPost, "/smtp/queue/bounce", nil, nil)
		assert.Equal(t, http.StatusBadRequest, code)
		assert.Contains(t, string(raw), "all=true")
		model.check(t, api, "bulk actions without a filter")

		// The notices wait in the queue too, one per bounced message.
		var to []string
		for _, v := range api.list("source=dsn") {
			assert.Equal(t, "", v.From, "a notice comes from the null sender")
			assert.Equal(t, "pending", v.State)
			for _, r := range v.Recipients {
				to = append(to, r.Addr)
			}
		}
		var wantTo []string
		for _, m := range noticed {
			wantTo = append(wantTo, m.from)
		}
		assert.ElementsMatch(t, wantTo, to, "a notice to each bounced message's sender")
	})

	t.Run("pause and resume", func(t *testing.T) {
		api := api.with(t)
		// All this while, nothing went out.
		assert.Equal(t, len(groupA), dumpCount(good), "nothing delivered while paused")
		assert.Zero(t, dumpCount(notices), "nothing delivered while paused")
		paused := time.Since(ageMark)
		code, out := api.obj(http.MethodPost, "/smtp/queue/resume")
		require.Equal(t, http.StatusOK, code)
		assert.Equal(t, false, out["paused"])
		t.Logf("paused for %v", paused.Round(time.Millisecond))

		pending := model.sel(func(m *mgmtE2EMsg) bool { return m.group == "p" })
		msgs := waitSinks(t, len(groupA)+len(pending), 30*time.Second, good)
		waitSinks(t, len(noticed), 30*time.Second, notices)
		model.set("", pending...)
		// The retried messages are tried again (and deferred again);
		// the others wait for their next attempt in an hour.
		deadline := time.Now().Add(30 * time.Second)
		for {
			again := map[string]bool{}
			for _, e := range p.queueLog("deferred") {
				if e.int("attempts") == 2 {
					again[e.str("id")] = true
				}
			}
			missing := 0
			for id := range retried {
				if model.state[id] != "" && !again[id] {
					missing++
				}
			}
			if missing == 0 {
				break
			}
			require.True(t, time.Now().Before(deadline), "%d retried messages not tried again within 30s", missing)
			time.Sleep(250 * time.Millisecond)
		}
		time.Sleep(time.Second) // anything more would come now
		msgs = good.Messages(t)
		assert.Len(t, msgs, len(groupA)+len(pending), "the pending messages, once each")
		for _, m := range msgs {
			for _, r := range m.To {
				assert.NotContains(t, r, "@held.test", "a held message was delivered")
			}
		}
		for _, v := range api.list("") {
			msg := model.byID[v.ID]
			require.NotNil(t, msg, "%s", v.ID)
			want := 1
			if retried[v.ID] {
				want = 2
			}
			for _, r := range v.Recipients {
				if v.State == "deferred" {
					assert.Equal(t, want, r.Attempts, "%s (%s) %s", v.ID, msg.marker, r.Addr)
				}
			}
		}
		model.settle(t, api, "resuming")

		// The notices: one per bounced message, to its sender, naming
		// its recipients (with the bounce's reason); none for a deleted
		// message.
		got := notices.Messages(t)
		assert.Len(t, got, len(noticed))
		named := map[string][]string{} // by sender: the recipients the notices name
		reasons := 0
		for _, m := range got {
			assert.Equal(t, "", m.From, "a notice comes from the null sender")
			require.Len(t, m.To, 1)
			assert.Contains(t, string(m.Header), "Content-Type: multipart/report; report-type=delivery-status")
			for _, line := range strings.Split(string(m.Body), "\n") {
				if r, ok := strings.CutPrefix(line, "Final-Recipient: rfc822;"); ok {
					named[m.To[0]] = append(named[m.To[0]], strings.TrimSpace(r))
				}
			}
			if strings.Contains(string(m.Body), "Diagnostic-Code: smtp; 550 5.0.0 bounced by an administrator: bad list") {
				reasons++
			}
		}
		want := map[string][]string{}
		for _, m := range noticed {
			want[m.from] = append(want[m.from], m.to...)
		}
		assert.Len(t, named, len(want))
		for sender, rcpts := range want {
			assert.ElementsMatch(t, rcpts, named[sender], "the recipients named in the notices to %s", sender)
		}
		assert.Equal(t, 1, reasons, "the reason of the bounce (?reason=) is in its notice")
	})

	t.Run("hold rule", func(t *testing.T) {
		api := api.with(t)
		// The rule is in the store: a config reload keeps it, and it
		// holds new messages after the reload too.
		patchConfig(t, adminPort, "apps/smtp/hostname", `"out2.example.org"`)
		groupH3 := newGroup("h", 40, 5, "held.test")
		mgmtE2ESubmit(t, submitAddr, groupH3)
		model.add("held", groupH3...)
		mgmtE2EHeldAsQueued(t, p, groupH3)
		model.check(t, api, "a config reload and new messages for held.test")

		out, stderr, status := mgmtE2ECLI(t, nil, "holds", "--address", address, "--json")
		require.Zero(t, status, stderr)
		var rules struct {
			Holds []map[string]any `json:"holds"`
		}
		require.NoError(t, json.Unmarshal([]byte(out), &rules), "%s", out)
		require.Len(t, rules.Holds, 1)
		assert.Equal(t, rule, rules.Holds[0]["id"])
		assert.Equal(t, "held.test", rules.Holds[0]["recipient_domain"])

		held := model.sel(func(m *mgmtE2EMsg) bool { return m.group == "h" })
		require.Len(t, held, 45)
		before := dumpCount(good)
		mark := len(mgmtE2EEvents(p))
		out, stderr, status = mgmtE2ECLI(t, nil, "holds", "delete", rule, "--address", address)
		require.Zero(t, status, stderr)
		assert.Equal(t, "45 messages\n", out, "removing the rule releases what it held")
		mgmtE2EWaitEvents(t, p, mark, "smtp.released", held)
		waitSinks(t, before+len(held), 30*time.Second, good)
		model.set("", held...)
		model.settle(t, api, "removing the hold rule")
		out, _, _ = mgmtE2ECLI(t, nil, "holds", "--address", address)
		assert.Equal(t, "no hold rules\n", out)
	})

	t.Run("all", func(t *testing.T) {
		api := api.with(t)
		rest := model.sel(func(*mgmtE2EMsg) bool { return true })
		require.NotEmpty(t, rest)
		mark := len(mgmtE2EEvents(p))
		code, out := api.obj(http.MethodPost, "/smtp/queue/hold?all=true")
		require.Equal(t, http.StatusOK, code, "%v", out)
		assert.EqualValues(t, len(rest), out["touched"])
		mgmtE2EWaitEvents(t, p, mark, "smtp.held", rest)
		model.set("held", rest...)
		model.check(t, api, "holding all")
		mark = len(mgmtE2EEvents(p))
		stdout, stderr, status := mgmtE2ECLI(t, nil, "delete", "--all", "--address", address)
		require.Zero(t, status, stderr)
		assert.Equal(t, fmt.Sprintf("%d messages\n", len(rest)), stdout)
		mgmtE2EWaitEvents(t, p, mark, "smtp.deleted", rest)
		model.set("", rest...)
		model.check(t, api, "deleting all")
		code, sum := api.obj(http.MethodGet, "/smtp/queue/summary")
		require.Equal(t, http.StatusOK, code)
		assert.EqualValues(t, 0, sum["messages"])
		assert.Empty(t, sum["destinations"])
		stdout, _, _ = mgmtE2ECLI(t, nil, "list", "--address", address)
		assert.Equal(t, "Mail queue is empty\n", stdout)
	})
	t.Logf("%d messages submitted; the test took %v", n, time.Since(started).Round(time.Millisecond))
}

// mgmtE2EUser and mgmtE2EPassword are the queue page's credentials.
const (
	mgmtE2EUser     = "admin"
	mgmtE2EPassword = "queue page password"
)

func mgmtE2EAuth() string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(mgmtE2EUser+":"+mgmtE2EPassword))
}

// mgmtE2EPageSite runs the binary with the queue page behind basic_auth
// under /queue/ on an HTTP site, the admin endpoint (adminOptions, given
// its port, go in its block) and an smtp app that defers everything (its one remote
// answers 450 to every recipient). It returns the site's base URL and the
// admin API.
func mgmtE2EPageSite(t *testing.T, adminOptions func(port int) string, adminHeader http.Header) (string, *mgmtE2EAPI, *caddyProc) {
	t.Helper()
	soft := peertest.StartSink(t, peertest.SinkOptions{Flags: []string{"-r", "rcpt"}})
	adminPort, httpPort := freePort(t), freePort(t)
	hash, err := bcrypt.GenerateFromPassword([]byte(mgmtE2EPassword), bcrypt.MinCost)
	require.NoError(t, err)
	p := startCaddy(t, "Caddyfile", fmt.Sprintf(`{
	admin 127.0.0.1:%d {
%s
	}
	smtp {
		hostname out.example.org
		resolver udp://127.0.0.1:1
		next_hop soft
		remote soft {
			address 127.0.0.1
			port %d
		}
		queue {
			retry 1h
		}
	}
}

http://127.0.0.1:%d {
	bind 127.0.0.1
	handle_path /queue/* {
		basic_auth {
			%s %s
		}
		smtp_queue
	}
}
`, adminPort, adminOptions(adminPort), soft.Port, httpPort, mgmtE2EUser, hash))
	api := &mgmtE2EAPI{t: t, base: fmt.Sprintf("http://127.0.0.1:%d", adminPort), header: adminHeader}
	return fmt.Sprintf("http://127.0.0.1:%d", httpPort), api, p
}

// mgmtE2EQueueDeferred submits messages through the admin API and waits
// until all are deferred.
func mgmtE2EQueueDeferred(t *testing.T, api *mgmtE2EAPI, msgs ...*mgmtE2EMsg) {
	t.Helper()
	for _, m := range msgs {
		api.submit(m)
	}
	deadline := time.Now().Add(30 * time.Second)
	for len(api.list("state=deferred")) < len(msgs) {
		require.True(t, time.Now().Before(deadline), "the deferrals within 30s")
		time.Sleep(100 * time.Millisecond)
	}
}

// mgmtE2EArtifactDir is where a failed test's screenshot goes:
// E2E_LOGDIR, else SMTP_TEST_ARTIFACTS, else the temporary folder.
func mgmtE2EArtifactDir() string {
	for _, v := range []string{"E2E_LOGDIR", "SMTP_TEST_ARTIFACTS"} {
		if d := os.Getenv(v); d != "" {
			return d
		}
	}
	return os.TempDir()
}

// TestMgmtE2EPageInChromium opens the queue page through the binary in
// headless Chromium: without credentials it is 401; with them, the page
// lists the queue, filters it, holds a message from its row and shows it
// held, and the admin API says that exactly that message is held. A
// screenshot is kept when the test fails.
func TestMgmtE2EPageInChromium(t *testing.T) {
	peertest.Need(t, "/usr/bin/chromium")
	base, api, _ := mgmtE2EPageSite(t, func(int) string { return "" }, nil)
	var msgs []*mgmtE2EMsg
	for i := range 4 {
		msgs = append(msgs, &mgmtE2EMsg{marker: fmt.Sprintf("u%d", i), from: "app@example.org", to: []string{fmt.Sprintf("u%d@soft.test", i)}})
	}
	x := &mgmtE2EMsg{marker: "x", from: "app@example.org", to: []string{"x@other.test"}}
	y := &mgmtE2EMsg{marker: "y", from: "news@example.org", to: []string{"y@other.test"}}
	msgs = append(msgs, x, y)
	mgmtE2EQueueDeferred(t, api, msgs...)

	// Without credentials (or with wrong ones): 401, also for the API.
	for _, c := range []struct{ path, auth string }{
		{"/queue/", ""}, {"/queue/api/", ""}, {"/queue/", "Basic " + base64.StdEncoding.EncodeToString([]byte("admin:wrong"))},
	} {
		req, err := http.NewRequest(http.MethodGet, base+c.path, nil)
		require.NoError(t, err)
		if c.auth != "" {
			req.Header.Set("Authorization", c.auth)
		}
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		resp.Body.Close()
		assert.Equal(t, http.StatusUnauthorized, resp.StatusCode, "%s %q", c.path, c.auth)
		assert.Contains(t, resp.Header.Get("WWW-Authenticate"), "Basic")
	}

	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath("/usr/bin/chromium"), chromedp.NoSandbox, chromedp.Headless, chromedp.DisableGPU,
		chromedp.Flag("disable-background-networking", true), chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true), chromedp.Flag("no-first-run", true), chromedp.Flag("disable-quic", true),
		chromedp.WindowSize(1280, 1000), chromedp.UserDataDir(t.TempDir()))
	// Not t.Context(): it ends before the cleanups, and the screenshot
	// is taken in one.
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	t.Cleanup(cancelAlloc)
	bctx, cancelBrowser := chromedp.NewContext(actx)
	t.Cleanup(cancelBrowser)
	ctx, cancel := context.WithTimeout(bctx, 60*time.Second)
	t.Cleanup(cancel)
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		sctx, scancel := context.WithTimeout(bctx, 10*time.Second)
		defer scancel()
		png, err := chromedp.Run(sctx, chromedp.CaptureScreenshot())
		if err != nil {
			t.Logf("no screenshot: %v", err)
			return
		}
		path := filepath.Join(mgmtE2EArtifactDir(), "TestMgmtE2EPageInChromium.png")
		if err := os.WriteFile(path, png, 0o644); err != nil {
			t.Logf("screenshot: %v", err)
			return
		}
		t.Logf("screenshot: %s", path)
	})

	// The browser without credentials gets no page: headless Chromium,
	// which cannot ask anyone for them, ends the load with
	// ERR_INVALID_AUTH_CREDENTIALS (or shows the 401).
	resp, err := chromedp.RunResponse(ctx, chromedp.Navigate(base+"/queue/"))
	if err == nil {
		require.NotNil(t, resp)
		assert.EqualValues(t, http.StatusUnauthorized, resp.Status)
	} else {
		assert.ErrorContains(t, err, "ERR_INVALID_AUTH_CREDENTIALS")
	}

	rowState := func(id string) string {
		return fmt.Sprintf(`(document.querySelector('#messages tr[data-id=%q] td.state') || {}).textContent || ""`, id)
	}
	// poll waits, at most 20 seconds, for a JavaScript condition.
	poll := func(expr string) chromedp.Action[chromedp.Void] { return peertest.PollJS(expr, 20*time.Second) }
	err = chromedp.Do(ctx,
		chromedp.Func(func(ctx context.Context, _ *chromedp.Target) error {
			_, err := chromedp.Call(ctx, network.SetExtraHTTPHeaders, network.SetExtraHTTPHeadersParams{
				Headers: network.Headers{"Authorization": mgmtE2EAuth()}})
			return err
		}),
		chromedp.Navigate(base+"/queue/"),
		poll(`document.querySelectorAll('#messages tbody tr').length === 6`),
		poll(`[...document.querySelectorAll('#summary tbody tr')].some((r) => r.textContent.startsWith("remote:soft6"))`),
		chromedp.SendKeys(chromedp.CSS(`#filters input[name=domain]`), "other.test"),
		chromedp.Click(chromedp.CSS(`#filters button[type=submit]`)),
		poll(`document.querySelectorAll('#messages tbody tr').length === 2`),
		chromedp.Click(chromedp.CSS(fmt.Sprintf(`#messages tr[data-id=%q] button[data-action=hold]`, x.id))),
		poll("("+rowState(x.id)+`) === "held"`),
	)
	require.NoError(t, err)
	shown, err := chromedp.Run(ctx, chromedp.Evaluate[[]string](
		`[...document.querySelectorAll('#messages tbody tr')].map((r) => r.dataset.id + " " + r.querySelector('td.state').textContent)`))
	require.NoError(t, err)
	assert.ElementsMatch(t, []string{x.id + " held", y.id + " deferred"}, shown, "the filter shows the two messages to other.test")
	said, err := chromedp.Run(ctx, chromedp.Evaluate[string](`document.querySelector('#message').textContent`))
	require.NoError(t, err)
	assert.Equal(t, "1 message", said)

	// The hold is real: the admin API says exactly x is held.
	assert.Equal(t, []string{x.id}, mgmtE2EIDs(api.list("state=held")))
	assert.Len(t, api.list("state=deferred"), len(msgs)-1)
}

// TestMgmtE2EAccess: the queue's admin routes follow the admin endpoint's
// origin checks (admin { origins ... enforce_origin }): a foreign Origin,
// a missing one or a foreign Host is 403 and changes nothing; an allowed
// Origin, and `caddy smtp-queue` (which sends the endpoint's own), pass.
// The queue page refuses a request that changes the queue without its
// Smtp-Queue-Request header or from another site's Origin.
func TestMgmtE2EAccess(t *testing.T) {
	const allowed = "http://ops.example.test"
	var adminAddr string
	// The allowed origins: the operators' page, and the listen address
	// (which `caddy smtp-queue` sends as its Origin).
	base, api, _ := mgmtE2EPageSite(t, func(port int) string {
		adminAddr = fmt.Sprintf("127.0.0.1:%d", port)
		return fmt.Sprintf("\t\torigins %s %s\n\t\tenforce_origin", adminAddr, allowed)
	}, http.Header{"Origin": {allowed}})
	var msgs []*mgmtE2EMsg
	for i := range 3 {
		msgs = append(msgs, &mgmtE2EMsg{marker: fmt.Sprintf("v%d", i), from: "app@example.org", to: []string{fmt.Sprintf("v%d@soft.test", i)}})
	}
	mgmtE2EQueueDeferred(t, api, msgs...)
	state := func(t *testing.T, m *mgmtE2EMsg) string {
		t.Helper()
		code, out := api.with(t).obj(http.MethodGet, "/smtp/queue/"+m.id)
		require.Equal(t, http.StatusOK, code, "%v", out)
		return out["state"].(string)
	}

	t.Run("admin API", func(t *testing.T) {
		api := api.with(t)
		for _, c := range []struct {
			name   string
			method string
			path   string
			header http.Header
			want   int
		}{
			{"allowed origin", http.MethodGet, "/smtp/queue", nil, http.StatusOK},
			{"the endpoint's own origin", http.MethodGet, "/smtp/queue/summary", http.Header{"Origin": {"http://" + adminAddr}}, http.StatusOK},
			{"no origin", http.MethodGet, "/smtp/queue", http.Header{"Origin": nil}, http.StatusForbidden},
			{"foreign origin", http.MethodGet, "/smtp/queue", http.Header{"Origin": {"http://evil.example.test"}}, http.StatusForbidden},
			{"foreign origin, https", http.MethodGet, "/smtp/queue", http.Header{"Origin": {"https://ops.example.test"}}, http.StatusForbidden},
			{"foreign origin, action", http.MethodPost, "/smtp/queue/" + msgs[0].id + "/hold", http.Header{"Origin": {"http://evil.example.test"}}, http.StatusForbidden},
			{"foreign origin, bulk", http.MethodDelete, "/smtp/queue?all=true", http.Header{"Origin": {"http://evil.example.test"}}, http.StatusForbidden},
			{"foreign origin, pause", http.MethodPost, "/smtp/queue/pause", http.Header{"Origin": {"http://evil.example.test"}}, http.StatusForbidden},
			{"no origin, action", http.MethodPost, "/smtp/queue/" + msgs[0].id + "/bounce", http.Header{"Origin": nil}, http.StatusForbidden},
			{"referer of another site", http.MethodPost, "/smtp/queue/" + msgs[0].id + "/hold",
				http.Header{"Origin": nil, "Referer": {"http://evil.example.test/page"}}, http.StatusForbidden},
		} {
			code, body := api.do(c.method, c.path, nil, c.header)
			assert.Equal(t, c.want, code, "%s: %s %s: %s", c.name, c.method, c.path, body)
		}
		// A request naming another host (DNS rebinding) is refused too.
		req, err := http.NewRequest(http.MethodGet, api.base+"/smtp/queue", nil)
		require.NoError(t, err)
		req.Host = "evil.example.test"
		req.Header.Set("Origin", allowed)
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		resp.Body.Close()
		assert.Equal(t, http.StatusForbidden, resp.StatusCode, "a foreign Host")

		// Nothing changed; an allowed origin can act.
		for _, m := range msgs {
			assert.Equal(t, "deferred", state(t, m))
		}
		_, sum := api.obj(http.MethodGet, "/smtp/queue/summary")
		assert.EqualValues(t, len(msgs), sum["messages"])
		code, out := api.obj(http.MethodPost, "/smtp/queue/"+msgs[0].id+"/hold")
		require.Equal(t, http.StatusOK, code, "%v", out)
		assert.EqualValues(t, 1, out["touched"])
		assert.Equal(t, "held", state(t, msgs[0]))

		// The CLI sends the endpoint's own address as its Origin.
		ids := mgmtE2ECLIList(t, adminAddr)
		assert.ElementsMatch(t, []string{msgs[0].id, msgs[1].id, msgs[2].id}, ids)
		out2, stderr, status := mgmtE2ECLI(t, nil, "release", msgs[0].id, "--address", adminAddr)
		require.Zero(t, status, stderr)
		assert.Equal(t, "1 message\n", out2)
		assert.Equal(t, "deferred", state(t, msgs[0]))
		// Through a name the origins do not list, the CLI is refused
		// like anyone (EX_NOPERM), and nothing changes.
		_, stderr, status = mgmtE2ECLI(t, nil, "hold", msgs[0].id, "--address", strings.Replace(adminAddr, "127.0.0.1", "localhost", 1))
		assert.Equal(t, 77, status, "refused by the endpoint's origin checks (EX_NOPERM): %s", stderr)
		assert.Contains(t, stderr, "403")
		assert.Equal(t, "deferred", state(t, msgs[0]))
	})

	t.Run("queue page", func(t *testing.T) {
		page := func(method, path string, header http.Header) int {
			t.Helper()
			req, err := http.NewRequest(method, base+path, nil)
			require.NoError(t, err)
			for k, v := range header {
				req.Header[k] = v
			}
			resp, err := http.DefaultClient.Do(req)
			require.NoError(t, err)
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			return resp.StatusCode
		}
		auth := mgmtE2EAuth()
		self := base // the page's own origin
		m := msgs[1]
		for _, c := range []struct {
			name   string
			method string
			path   string
			header http.Header
			want   int
		}{
			{"no credentials", http.MethodPost, "/queue/api/" + m.id + "/hold", http.Header{"Smtp-Queue-Request": {"1"}, "Origin": {self}}, http.StatusUnauthorized},
			{"no header", http.MethodPost, "/queue/api/" + m.id + "/hold", http.Header{"Authorization": {auth}, "Origin": {self}}, http.StatusForbidden},
			{"no header, delete", http.MethodDelete, "/queue/api/" + m.id, http.Header{"Authorization": {auth}}, http.StatusForbidden},
			{"no header, bulk", http.MethodPost, "/queue/api/bounce?all=true", http.Header{"Authorization": {auth}}, http.StatusForbidden},
			{"foreign origin", http.MethodPost, "/queue/api/" + m.id + "/hold",
				http.Header{"Authorization": {auth}, "Smtp-Queue-Request": {"1"}, "Origin": {"http://evil.example.test"}}, http.StatusForbidden},
			{"another port of this host, delete", http.MethodDelete, "/queue/api/" + m.id,
				http.Header{"Authorization": {auth}, "Smtp-Queue-Request": {"1"}, "Origin": {"http://127.0.0.1:1"}}, http.StatusForbidden},
			{"reading needs no header", http.MethodGet, "/queue/api/summary", http.Header{"Authorization": {auth}}, http.StatusOK},
		} {
			assert.Equal(t, c.want, page(c.method, c.path, c.header), c.name)
		}
		for _, mm := range msgs {
			assert.Equal(t, "deferred", state(t, mm), "a refused request changed nothing")
		}
		assert.Equal(t, http.StatusOK, page(http.MethodPost, "/queue/api/"+m.id+"/hold",
			http.Header{"Authorization": {auth}, "Smtp-Queue-Request": {"1"}, "Origin": {self}}))
		assert.Equal(t, "held", state(t, m))
		assert.Equal(t, http.StatusOK, page(http.MethodPost, "/queue/api/"+m.id+"/release",
			http.Header{"Authorization": {auth}, "Smtp-Queue-Request": {"1"}}), "no Origin (not a browser): the header is enough")
		assert.Equal(t, "deferred", state(t, m))
	})
}
