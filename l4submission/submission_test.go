package l4submission

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	_ "github.com/caddyserver/caddy/v2/modules/filestorage" // the storage of the lab's config
	_ "github.com/caddyserver/caddy/v2/modules/logging"     // its log file
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/crypto/bcrypt"

	"github.com/seed7b014b84/caddy-smtp/internal/peertest"
	"github.com/seed7b014b84/caddy-smtp/queue"
)

// lab is a running Caddy with the layer4, smtp and tls apps, three
// submission servers on loopback, and the smtp-sinks the smtp app relays
// to.
type lab struct {
	ca *peertest.CA
	// trusted relays for 127.0.0.0/8, offers STARTTLS, takes at most 64 KiB.
	trusted int
	// auth relays for authenticated users only (its relay_networks is not
	// loopback), with STARTTLS.
	auth int
	// closed relays for 192.0.2.0/24 only: no client here may relay.
	closed int
	// short relays for 127.0.0.1 only, with a read timeout of a second
	// and lines of up to 2500 octets.
	short int
	// limits relays for authenticated users only, without TLS, with a
	// read timeout of a second.
	limits int
	// capped relays for 127.0.0.0/8 and serves at most 3 connections.
	capped int
	// good accepts everything; hard refuses recipients with 5xx, soft with
	// 4xx; mixed accepts, for the tests that count copies.
	good, hard, soft, mixed *peertest.Sink
	// log is Caddy's log file (JSON lines).
	log string
}

const (
	labUser     = "alice"
	labPassword = "correct horse battery staple"
)

// startLab starts the sinks and Caddy; Caddy stops when the test ends.
func startLab(t *testing.T) *lab {
	t.Helper()
	peertest.Need(t, "swaks")
	l := &lab{
		ca:    peertest.NewCA(t, "submission test CA"),
		good:  peertest.StartSink(t, peertest.SinkOptions{}),
		hard:  peertest.StartSink(t, peertest.SinkOptions{Flags: []string{"-f", "rcpt"}}),
		soft:  peertest.StartSink(t, peertest.SinkOptions{Flags: []string{"-r", "rcpt"}}),
		mixed: peertest.StartSink(t, peertest.SinkOptions{}),
	}
	leaf := l.ca.Issue(t, "localhost", "127.0.0.1")
	l.trusted, l.auth, l.closed = peertest.FreePort(t), peertest.FreePort(t), peertest.FreePort(t)
	l.short, l.limits, l.capped = peertest.FreePort(t), peertest.FreePort(t), peertest.FreePort(t)
	dir := t.TempDir()
	l.log = filepath.Join(dir, "caddy.log")
	// A cost of 4 keeps the tests fast; `caddy hash-password` uses 14.
	hash, err := bcrypt.GenerateFromPassword([]byte(labPassword), bcrypt.MinCost)
	require.NoError(t, err)

	handler := func(extra map[string]any) map[string]any {
		h := map[string]any{"handler": "smtp_submission", "tls": map[string]any{}}
		for k, v := range extra {
			h[k] = v
		}
		return h
	}
	server := func(port int, h map[string]any) map[string]any {
		return map[string]any{
			"listen": []string{fmt.Sprintf("127.0.0.1:%d", port)},
			"routes": []any{map[string]any{"handle": []any{h}}},
		}
	}
	cfg := map[string]any{
		"admin":   map[string]any{"disabled": true},
		"storage": map[string]any{"module": "file_system", "root": filepath.Join(dir, "storage")},
		"logging": map[string]any{"logs": map[string]any{"default": map[string]any{
			"level":   "DEBUG",
			"writer":  map[string]any{"output": "file", "filename": l.log},
			"encoder": map[string]any{"format": "json"},
		}}},
		"apps": map[string]any{
			"tls": map[string]any{"certificates": map[string]any{
				"load_files": []any{map[string]any{"certificate": leaf.CertFile, "key": leaf.KeyFile}},
			}},
			"smtp": map[string]any{
				"hostname": "relay.test",
				"queue":    map[string]any{"path": filepath.Join(dir, "queue"), "retry": []string{"1s"}},
				"next_hop": []any{
					map[string]any{"if": "rcpt_domain == 'hard.test'", "then": "hard"},
					map[string]any{"if": "rcpt_domain == 'soft.test'", "then": "soft"},
					map[string]any{"if": "rcpt_domain == 'mixed.test'", "then": "mixed"},
					map[string]any{"else": "good"},
				},
				"remotes": map[string]any{
					"good":  map[string]any{"address": "127.0.0.1", "port": l.good.Port},
					"hard":  map[string]any{"address": "127.0.0.1", "port": l.hard.Port},
					"soft":  map[string]any{"address": "127.0.0.1", "port": l.soft.Port},
					"mixed": map[string]any{"address": "127.0.0.1", "port": l.mixed.Port},
				},
			},
			"layer4": map[string]any{"servers": map[string]any{
				"trusted": server(l.trusted, handler(map[string]any{
					"relay_networks": []string{"127.0.0.0/8"}, "max_message_size": 64 << 10,
				})),
				"auth": server(l.auth, handler(map[string]any{
					"users":          []any{map[string]any{"username": labUser, "password": string(hash)}},
					"relay_networks": []string{"192.0.2.0/24"},
				})),
				"closed": server(l.closed, map[string]any{
					"handler": "smtp_submission", "relay_networks": []string{"192.0.2.0/24"},
				}),
				"short": server(l.short, map[string]any{
					"handler": "smtp_submission", "relay_networks": []string{"127.0.0.1/32"},
					"read_timeout": "1s", "max_line_length": 2500,
				}),
				"limits": server(l.limits, map[string]any{
					"handler":             "smtp_submission",
					"users":               []any{map[string]any{"username": labUser, "password": string(hash)}},
					"allow_insecure_auth": true,
					"relay_networks":      []string{"192.0.2.0/24"},
					"read_timeout":        "1s",
				}),
				"capped": server(l.capped, map[string]any{
					"handler": "smtp_submission", "relay_networks": []string{"127.0.0.0/8"},
					"max_connections": 3,
				}),
			}},
		},
	}
	raw, err := json.Marshal(cfg)
	require.NoError(t, err)
	require.NoError(t, caddy.Load(raw, true))
	t.Cleanup(func() { _ = caddy.Stop() })
	return l
}

// swaksResult is what a swaks run showed.
type swaksResult struct {
	out  string
	exit int
}

// replies returns the server's replies, one string per reply line as the
// server sent it ("250 2.0.0 ..."), in order.
func (r swaksResult) replies() []string {
	var out []string
	sc := bufio.NewScanner(strings.NewReader(r.out))
	for sc.Scan() {
		line := sc.Text()
		// swaks marks what it received with "<-" (plain) or "<~" (TLS),
		// and error replies with "<**" or "<~*".
		for _, p := range []string{"<** ", "<~* ", "<-  ", "<~  "} {
			if rest, ok := strings.CutPrefix(line, p); ok {
				out = append(out, rest)
			}
		}
	}
	return out
}

// dataReply returns the reply to the end of the data: the last reply line
// before the one to QUIT.
func (r swaksResult) dataReply() string {
	rs := r.replies()
	for i := len(rs) - 1; i >= 0; i-- {
		if !strings.HasPrefix(rs[i], "221") {
			return rs[i]
		}
	}
	return ""
}

// has reports whether some reply line starts with prefix.
func (r swaksResult) has(prefix string) bool {
	for _, l := range r.replies() {
		if strings.HasPrefix(l, prefix) {
			return true
		}
	}
	return false
}

// swaks runs swaks against a port of the lab with args after the common
// ones, and returns what it showed.
func (l *lab) swaks(t *testing.T, port int, args ...string) swaksResult {
	t.Helper()
	argv := append([]string{
		"--server", "127.0.0.1", "--port", strconv.Itoa(port),
		"--helo", "client.test", "--from", "sender@example.org", "--timeout", "20",
	}, args...)
	cmd := exec.Command("swaks", argv...)
	out, err := cmd.CombinedOutput()
	res := swaksResult{out: string(out)}
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		res.exit = exit.ExitCode()
	} else {
		require.NoError(t, err, "running swaks")
	}
	return res
}

// messagesTo returns the sink's messages whose envelope has rcpt.
func messagesTo(t *testing.T, s *peertest.Sink, rcpt string) []peertest.SinkMessage {
	t.Helper()
	var out []peertest.SinkMessage
	for _, m := range s.Messages(t) {
		for _, to := range m.To {
			if to == rcpt {
				out = append(out, m)
			}
		}
	}
	return out
}

// queuedID returns the queue ID of the reply to the data.
func queuedID(t *testing.T, r swaksResult) string {
	t.Helper()
	id, ok := strings.CutPrefix(r.dataReply(), "250 2.0.0 queued as ")
	require.True(t, ok, "want 250 queued as ID, got %q\n%s", r.dataReply(), r.out)
	require.True(t, queue.ValidID(id), id)
	return id
}

// queued returns the queued message id, or nil when it is not queued.
func (l *lab) queued(t *testing.T, id string) *queue.Message {
	t.Helper()
	app, err := caddy.ActiveContext().App("smtp")
	require.NoError(t, err)
	m, err := app.(interface{ QueueRunning() *queue.Queue }).QueueRunning().Store().Get(t.Context(), id)
	if errors.Is(err, queue.ErrNotFound) {
		return nil
	}
	require.NoError(t, err)
	return m
}

// waitGone waits for message id to leave the queue.
func (l *lab) waitGone(t *testing.T, id string) {
	t.Helper()
	require.Eventually(t, func() bool { return l.queued(t, id) == nil }, 10*time.Second, 20*time.Millisecond, "message %s still queued", id)
}

// waitLog waits for the queue's log line msg ("delivered", "deferred",
// "failed") about message id, and returns it.
func (l *lab) waitLog(t *testing.T, msg, id string) map[string]any {
	t.Helper()
	var found map[string]any
	require.Eventually(t, func() bool {
		b, err := os.ReadFile(l.log)
		require.NoError(t, err)
		for _, line := range strings.Split(string(b), "\n") {
			var e map[string]any
			if json.Unmarshal([]byte(line), &e) == nil && e["msg"] == msg && e["id"] == id {
				found = e
				return true
			}
		}
		return false
	}, 10*time.Second, 20*time.Millisecond, "no %q log line for %s", msg, id)
	return found
}

// dataFile writes a whole message for swaks --data, to send the same
// bytes more than once (swaks's own message has a new Date each time).
func dataFile(t *testing.T, size int) string {
	t.Helper()
	var b strings.Builder
	b.WriteString("From: sender@example.org\r\nTo: someone@example.net\r\nSubject: submission test\r\n")
	// A Message-ID of its own: the handler remembers messages it
	// answered 451 for, and a run with -count=2 must not find the last
	// run's.
	fmt.Fprintf(&b, "Date: Mon, 02 Jan 2006 15:04:05 +0000\r\nMessage-ID: <%d@example.org>\r\n\r\n", time.Now().UnixNano())
	for b.Len() < size {
		b.WriteString("All work and no play makes Jack a dull boy.\r\n")
	}
	p := filepath.Join(t.TempDir(), "message.eml")
	require.NoError(t, os.WriteFile(p, []byte(b.String()), 0o644))
	return p
}

func TestSubmission(t *testing.T) {
	l := startLab(t)

	t.Run("relay network, no TLS", func(t *testing.T) {
		r := l.swaks(t, l.trusted, "--to", "plain@good.test", "--header", "Subject: plain")
		require.Equal(t, 0, r.exit, r.out)
		assert.True(t, r.has("220 relay.test ESMTP"), "greets with the smtp app's hostname:\n%s", r.out)
		assert.Regexp(t, `^250 2\.0\.0 queued as [0-9a-z]{20}$`, r.dataReply())
		msgs := l.good.WaitMessages(t, 1, 5*time.Second)
		got := messagesTo(t, l.good, "plain@good.test")
		require.Len(t, got, 1, "%d messages in the sink", len(msgs))
		m := got[0]
		assert.Equal(t, "sender@example.org", m.From)
		assert.Equal(t, "relay.test", m.Helo, "the smtp app greets the sink")
		assert.Contains(t, string(m.Header), "Subject: plain")
		assert.Regexp(t, `^Received: from client\.test \(\[127\.0\.0\.1\]\)\n\tby relay\.test \(caddy-smtp\) with ESMTP id [0-9a-z]{20}\n\tfor <plain@good\.test>;`, string(m.Header))
	})

	t.Run("STARTTLS with the tls app's certificate", func(t *testing.T) {
		r := l.swaks(t, l.trusted, "--to", "tls@good.test", "--tls", "--tls-verify", "--tls-ca-path", l.ca.CertFile)
		require.Equal(t, 0, r.exit, r.out)
		assert.Contains(t, r.out, "TLS started")
		assert.True(t, strings.HasPrefix(r.dataReply(), "250 2.0.0 queued as "), r.dataReply())
		l.good.WaitMessages(t, 2, 5*time.Second)
		got := messagesTo(t, l.good, "tls@good.test")
		require.Len(t, got, 1)
		assert.Contains(t, string(got[0].Header), "with ESMTPS id")
	})

	t.Run("STARTTLS with a client that offers ALPN", func(t *testing.T) {
		peertest.Need(t, "openssl")
		cmd := exec.Command("openssl", "s_client", "-connect", fmt.Sprintf("127.0.0.1:%d", l.trusted),
			"-starttls", "smtp", "-alpn", "smtp,x-unknown", "-CAfile", l.ca.CertFile)
		cmd.Stdin = strings.NewReader("QUIT\r\n")
		out, err := cmd.CombinedOutput()
		require.NoError(t, err, "%s", out)
		assert.Contains(t, string(out), "Verify return code: 0 (ok)")
		assert.Contains(t, string(out), "No ALPN negotiated", "Caddy's h2 and http/1.1 are not offered to mail clients")
	})

	for _, mech := range []string{"PLAIN", "LOGIN"} {
		t.Run("AUTH "+mech+" after STARTTLS", func(t *testing.T) {
			rcpt := "auth-" + strings.ToLower(mech) + "@good.test"
			r := l.swaks(t, l.auth, "--to", rcpt, "--tls", "--auth", mech, "--auth-user", labUser, "--auth-password", labPassword)
			require.Equal(t, 0, r.exit, r.out)
			assert.True(t, r.has("235 2.0.0"), r.out)
			assert.True(t, strings.HasPrefix(r.dataReply(), "250 2.0.0 queued as "), r.dataReply())
			require.Eventually(t, func() bool { return len(messagesTo(t, l.good, rcpt)) == 1 }, 5*time.Second, 20*time.Millisecond)
			assert.Contains(t, string(messagesTo(t, l.good, rcpt)[0].Header), "with ESMTPSA id")
		})
	}

	t.Run("wrong password", func(t *testing.T) {
		r := l.swaks(t, l.auth, "--to", "x@good.test", "--tls", "--auth", "PLAIN", "--auth-user", labUser, "--auth-password", "wrong")
		assert.NotEqual(t, 0, r.exit)
		assert.True(t, r.has("535 5.7.8"), r.out)
	})

	t.Run("no AUTH without TLS", func(t *testing.T) {
		r := l.swaks(t, l.auth, "--quit-after", "EHLO")
		require.Equal(t, 0, r.exit, r.out)
		assert.True(t, r.has("250-STARTTLS"), r.out)
		assert.NotContains(t, r.out, "AUTH PLAIN")
		assert.True(t, r.has("250-SIZE 26214400"), "the default max_message_size:\n%s", r.out)
		assert.True(t, r.has("250 LIMITS RCPTMAX=100"), "the default max_recipients:\n%s", r.out)
		r = l.swaks(t, l.auth, "--quit-after", "EHLO", "--tls")
		require.Equal(t, 0, r.exit, r.out)
		assert.True(t, r.has("250-AUTH PLAIN LOGIN"), r.out)
		assert.True(t, r.has("250-REQUIRETLS"), "REQUIRETLS is offered over TLS:\n%s", r.out)
	})

	t.Run("unauthenticated relay refused", func(t *testing.T) {
		r := l.swaks(t, l.auth, "--to", "x@good.test", "--tls")
		assert.NotEqual(t, 0, r.exit)
		assert.True(t, r.has("530 5.7.0 authentication required"), r.out)
		r = l.swaks(t, l.closed, "--to", "x@good.test")
		assert.NotEqual(t, 0, r.exit)
		assert.True(t, r.has("550 5.7.1 relay access denied: 127.0.0.1 may not relay"), r.out)
		assert.Empty(t, messagesTo(t, l.good, "x@good.test"))
	})

	t.Run("message too big", func(t *testing.T) {
		r := l.swaks(t, l.trusted, "--to", "big@good.test", "--data", "@"+dataFile(t, 100<<10))
		assert.NotEqual(t, 0, r.exit)
		assert.True(t, r.has("552 5.3.4"), r.out)
		assert.Empty(t, messagesTo(t, l.good, "big@good.test"))
	})

	t.Run("recipient refused for good: queued, then failed", func(t *testing.T) {
		r := l.swaks(t, l.trusted, "--to", "x@hard.test")
		require.Equal(t, 0, r.exit, r.out)
		id := queuedID(t, r)
		e := l.waitLog(t, "failed", id)
		assert.Equal(t, "x@hard.test", e["rcpt"])
		assert.Equal(t, "500 5.3.0 Error: command failed", e["reply"], "the sink's own reply")
		l.waitGone(t, id)
	})

	t.Run("recipient deferred: queued, and retried", func(t *testing.T) {
		r := l.swaks(t, l.trusted, "--to", "x@soft.test")
		require.Equal(t, 0, r.exit, r.out)
		id := queuedID(t, r)
		e := l.waitLog(t, "deferred", id)
		assert.Equal(t, "450 4.3.0 Error: command failed", e["reply"])
		m := l.queued(t, id)
		require.NotNil(t, m, "the message stays in the queue")
		assert.Equal(t, queue.Deferred, m.Recipients[0].State)
		assert.Equal(t, 450, m.Recipients[0].LastReply.Code)
		require.Eventually(t, func() bool {
			m := l.queued(t, id)
			return m != nil && m.Recipients[0].Attempts >= 2
		}, 10*time.Second, 50*time.Millisecond, "retried on the schedule (1s)")
	})

	t.Run("delivered and deferred: one copy", func(t *testing.T) {
		r := l.swaks(t, l.trusted, "--to", "one@mixed.test,two@soft.test")
		require.Equal(t, 0, r.exit, r.out)
		id := queuedID(t, r)
		require.Eventually(t, func() bool { return len(messagesTo(t, l.mixed, "one@mixed.test")) == 1 }, 5*time.Second, 20*time.Millisecond)
		require.Eventually(t, func() bool {
			m := l.queued(t, id)
			return m != nil && m.Recipients[1].Attempts >= 2
		}, 10*time.Second, 50*time.Millisecond, "the deferred one is retried")
		m := l.queued(t, id)
		assert.Equal(t, queue.Delivered, m.Recipients[0].State)
		assert.Equal(t, 1, m.Recipients[0].Attempts, "the delivered one is not tried again")
		assert.Len(t, messagesTo(t, l.mixed, "one@mixed.test"), 1)
	})

	t.Run("delivered and failed", func(t *testing.T) {
		r := l.swaks(t, l.trusted, "--to", "three@mixed.test,four@hard.test")
		require.Equal(t, 0, r.exit, r.out)
		id := queuedID(t, r)
		l.waitLog(t, "failed", id)
		l.waitGone(t, id)
		assert.Len(t, messagesTo(t, l.mixed, "three@mixed.test"), 1)
	})

	t.Run("a message larger than a queue row", func(t *testing.T) {
		data := dataFile(t, 300<<10)
		r := l.swaks(t, l.auth, "--to", "large@good.test", "--tls", "--auth", "PLAIN",
			"--auth-user", labUser, "--auth-password", labPassword, "--data", "@"+data)
		require.Equal(t, 0, r.exit, r.out[:min(len(r.out), 3000)])
		require.Eventually(t, func() bool { return len(messagesTo(t, l.good, "large@good.test")) == 1 }, 10*time.Second, 20*time.Millisecond)
		got := messagesTo(t, l.good, "large@good.test")
		want, err := os.ReadFile(data)
		require.NoError(t, err)
		// smtp-sink stores LF line endings; the Received header comes first.
		_, body, _ := strings.Cut(string(want), "\r\n\r\n")
		// swaks ends the data with an empty line of its own.
		wantBody := strings.ReplaceAll(body, "\r\n", "\n") + "\n"
		assert.Equal(t, len(wantBody), len(got[0].Body), "body length")
		assert.True(t, wantBody == string(got[0].Body), "the body arrives whole")
		assert.Contains(t, string(got[0].Header), "Subject: submission test")
	})

	t.Run("one log line per session", func(t *testing.T) {
		b, err := os.ReadFile(l.log)
		require.NoError(t, err)
		var sessions []map[string]any
		for _, line := range strings.Split(string(b), "\n") {
			var e map[string]any
			if json.Unmarshal([]byte(line), &e) == nil && e["msg"] == "smtp session" {
				sessions = append(sessions, e)
			}
		}
		require.NotEmpty(t, sessions)
		var authed map[string]any
		for _, e := range sessions {
			if e["user"] == labUser {
				authed = e
			}
		}
		require.NotNil(t, authed, "a session line names the authenticated user")
		assert.Equal(t, "layer4.handlers.smtp_submission", authed["logger"])
		assert.Equal(t, "client.test", authed["helo"])
		assert.Equal(t, "TLS 1.3", authed["tls"])
		assert.Equal(t, "127.0.0.1", authed["remote"])
		assert.EqualValues(t, 1, authed["queued"])
	})

	t.Run("metrics", func(t *testing.T) {
		ctx := caddy.ActiveContext()
		families, err := ctx.GetMetricsRegistry().Gather()
		require.NoError(t, err)
		counts := map[string]float64{}
		for _, f := range families {
			for _, m := range f.GetMetric() {
				name := f.GetName()
				for _, lp := range m.GetLabel() {
					name += "/" + lp.GetValue()
				}
				counts[name] = m.GetCounter().GetValue()
			}
		}
		assert.GreaterOrEqual(t, counts["caddy_smtp_submission_messages_total/queued"], 8.0)
		assert.GreaterOrEqual(t, counts["caddy_smtp_submission_messages_total/refused"], 1.0)
		assert.GreaterOrEqual(t, counts["caddy_smtp_submission_auth_total/failure"], 1.0)
		assert.GreaterOrEqual(t, counts["caddy_smtp_submission_sessions_total"], 10.0)
	})

	// Last: it unloads the config.
	t.Run("unloading the config ends idle sessions", func(t *testing.T) {
		conn, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", l.trusted))
		require.NoError(t, err)
		defer conn.Close()
		require.NoError(t, conn.SetDeadline(time.Now().Add(10*time.Second)))
		rd := bufio.NewReader(conn)
		greeting, err := rd.ReadString('\n')
		require.NoError(t, err)
		require.True(t, strings.HasPrefix(greeting, "220 "), greeting)
		require.NoError(t, caddy.Stop())
		bye, err := rd.ReadString('\n')
		require.NoError(t, err)
		assert.True(t, strings.HasPrefix(bye, "421 4.4.2"), bye)
		_, err = rd.ReadString('\n')
		assert.ErrorIs(t, err, io.EOF, "then the connection is closed")
	})
}
