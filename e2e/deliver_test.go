package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/seed7b014b84/caddy-smtp/internal/peertest"
)

// mailLab is the world the end-to-end deliveries go to: Knot serving
// mail.test behind unbound, an MX host (smtp-sink on port 25 of its own
// loopback address), a relay (smtp-sink) and a message store (Dovecot
// LMTP).
type mailLab struct {
	unbound *peertest.Unbound
	mx      *peertest.Sink
	relay   *peertest.Sink
	store   *peertest.Dovecot
}

func startMailLab(t *testing.T) *mailLab {
	t.Helper()
	knot := peertest.StartKnot(t, peertest.KnotOptions{Zones: []peertest.Zone{{Name: "mail.test", Records: `
good MX 10 mx1.good
mx1.good A 127.84.0.10
down MX 10 mx1.down
mx1.down A 127.84.0.11
nullmx MX 0 .
`}}})
	return &mailLab{
		unbound: peertest.StartUnbound(t, peertest.UnboundOptions{Knot: knot}),
		mx:      peertest.StartSink(t, peertest.SinkOptions{Addr: "127.84.0.10", Port: 25}),
		relay:   peertest.StartSink(t, peertest.SinkOptions{}),
		store:   peertest.StartDovecot(t, peertest.DovecotOptions{Users: []string{"alice@foobar.net"}}),
	}
}

// smtpOption is the smtp global option for the lab.
func (l *mailLab) smtpOption() string {
	return fmt.Sprintf(`	smtp {
		hostname out.example.org
		resolver udp://%s
		ip_strategy ipv4_only
		next_hop {
			if rcpt_domain in_list local store
			if "rcpt_domain == 'relay.test'" relay
			else false
		}
		list local foobar.net
		remote store {
			address 127.0.0.1
			port %d
			protocol lmtp
			tls {
				allow_invalid_certs
			}
		}
		remote relay {
			address 127.0.0.1
			port %d
		}
	}
`, l.unbound.Addr, l.store.Port, l.relay.Port)
}

// runCaddy runs the binary on a Caddyfile until the test ends, and
// returns its output. Its data folder (and so the queue) is a fresh
// temporary folder.
func runCaddy(t *testing.T, caddyfile string) *lockedBuffer {
	t.Helper()
	return startCaddy(t, "Caddyfile", caddyfile).logs
}

func waitHTTP(t *testing.T, url string) {
	t.Helper()
	require.Eventually(t, func() bool {
		resp, err := http.Get(url)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return true
	}, 20*time.Second, 100*time.Millisecond, "%s did not come up", url)
}

// TestHTTPSendAndCommands runs the binary with the smtp app and two HTTP
// send endpoints, and delivers by MX (DNS from Knot through unbound), to a
// relay and over LMTP to Dovecot, through the HTTP handler in queue mode
// (202 with the queue ID, delivered afterwards) and in deliver mode (200
// with the report), and through the command line.
func TestHTTPSendAndCommands(t *testing.T) {
	l := startMailLab(t)
	admin, httpPort, deliverPort := freePort(t), freePort(t), freePort(t)
	caddyfile := fmt.Sprintf("{\n\tadmin 127.0.0.1:%d\n%s}\n\nhttp://127.0.0.1:%d {\n\tbind 127.0.0.1\n\tsmtp_send {\n\t\tmax_size 1MB\n\t}\n}\n"+
		"\nhttp://127.0.0.1:%d {\n\tbind 127.0.0.1\n\tsmtp_send {\n\t\tmode deliver\n\t}\n}\n",
		admin, l.smtpOption(), httpPort, deliverPort)
	p := startCaddy(t, "Caddyfile", caddyfile)
	base := fmt.Sprintf("http://127.0.0.1:%d/", httpPort)
	waitHTTP(t, base)

	body := "From: web@example.org\r\nSubject: e2e\r\n\r\nhello\r\n"
	ids := map[string]bool{}
	for _, to := range []string{"x@good.mail.test", "y@relay.test", "alice@foobar.net"} {
		resp, err := http.Post(base+"?from=web@example.org&to="+to, "message/rfc822", strings.NewReader(body))
		require.NoError(t, err)
		var answer struct {
			ID string `json:"id"`
		}
		assert.NoError(t, json.NewDecoder(resp.Body).Decode(&answer))
		resp.Body.Close()
		assert.Equal(t, http.StatusAccepted, resp.StatusCode, to)
		assert.Len(t, answer.ID, 20, "the queue ID")
		ids[answer.ID] = true
	}
	assert.Equal(t, "out.example.org", l.mx.WaitMessages(t, 1, 10*time.Second)[0].Helo, "delivered by MX")
	assert.Len(t, l.relay.WaitMessages(t, 1, 10*time.Second), 1)
	assert.Len(t, l.store.WaitMessages(t, "alice@foobar.net", 1, 10*time.Second), 1)
	for _, e := range p.waitQueueLog("delivered", 3, 10*time.Second) {
		assert.True(t, ids[e.str("id")], "delivered under the ID the HTTP answer gave: %s", e.str("id"))
	}

	// Deliver mode: one attempt, and the report.
	resp, err := http.Post(fmt.Sprintf("http://127.0.0.1:%d/?from=web@example.org&to=v@relay.test", deliverPort), "message/rfc822", strings.NewReader(body))
	require.NoError(t, err)
	report, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	assert.Equal(t, http.StatusOK, resp.StatusCode, "%s", report)
	assert.Contains(t, string(report), `"status":"delivered"`)
	assert.Len(t, l.relay.WaitMessages(t, 2, 10*time.Second), 2)

	cfgPath := filepath.Join(t.TempDir(), "Caddyfile")
	require.NoError(t, os.WriteFile(cfgPath, []byte("{\n"+l.smtpOption()+"}\n"), 0o644))
	t.Run("smtp-plan", func(t *testing.T) {
		out, stderr, err := caddy(t, "smtp-plan", "--config", cfgPath, "good.mail.test")
		require.NoError(t, err, stderr)
		assert.Contains(t, out, "MX of good.mail.test")
		assert.Contains(t, out, "mx1.good.mail.test")
		assert.Contains(t, out, "127.84.0.10:25")
		assert.Contains(t, out, "EHLO out.example.org")
		assert.Contains(t, out, "starttls optional")
	})
	t.Run("smtp-send", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, caddyBin, "smtp-send", "--config", cfgPath, "--from", "cli@example.org", "--to", "z@relay.test", "--to", "w@good.mail.test")
		cmd.Env = isolatedEnv(t)
		cmd.Stdin = strings.NewReader("Subject: from the command line\n\nhi\n")
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		require.NoError(t, cmd.Run(), stderr.String())
		assert.Contains(t, stdout.String(), `"status": "delivered"`)
		assert.Len(t, l.relay.WaitMessages(t, 3, 10*time.Second), 3)
		assert.Len(t, l.mx.WaitMessages(t, 2, 10*time.Second), 2)
	})
}

// TestSendExitStatus checks `caddy smtp-send`'s exit statuses, sendmail's
// sysexits, with the built binary: scripts and cron tell a retry from a
// failure by them.
func TestSendExitStatus(t *testing.T) {
	l := startMailLab(t)
	cfgPath := filepath.Join(t.TempDir(), "Caddyfile")
	require.NoError(t, os.WriteFile(cfgPath, []byte("{\n"+l.smtpOption()+"}\n"), 0o644))
	badCfg := filepath.Join(t.TempDir(), "Caddyfile")
	require.NoError(t, os.WriteFile(badCfg, []byte("{\n\tsmtp {\n\t\tip_strategy sideways\n\t}\n}\n"), 0o644))
	msg := "Subject: exit status\n\nhi\n"
	for _, c := range []struct {
		name  string
		args  []string
		stdin string
		want  int
	}{
		{"delivered", []string{"--to", "a@relay.test"}, msg, 0},
		{"deferred", []string{"--to", "b@down.mail.test"}, msg, 75},
		{"deferred and delivered", []string{"--to", "b@down.mail.test", "--to", "c@relay.test"}, msg, 75},
		{"failed", []string{"--to", "nobody@foobar.net"}, msg, 69},
		{"failed and deferred", []string{"--to", "n@nullmx.mail.test", "--to", "b@down.mail.test"}, msg, 69},
		{"no recipient", nil, msg, 64},
		{"unknown flag", []string{"--to", "a@relay.test", "--bogus"}, msg, 64},
		{"an argument", []string{"--to", "a@relay.test", "extra"}, msg, 64},
		{"malformed recipient", []string{"--to", "a@relay.test>\r\nRCPT TO:<x@y"}, msg, 65},
		{"empty message", []string{"--to", "a@relay.test"}, "", 65},
		{"bad config", []string{"--to", "a@relay.test", "--config", badCfg}, msg, 78},
	} {
		t.Run(c.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
			defer cancel()
			args := append([]string{"smtp-send", "--config", cfgPath, "--from", "cli@example.org"}, c.args...)
			cmd := exec.CommandContext(ctx, caddyBin, args...)
			cmd.Env = isolatedEnv(t)
			cmd.Stdin = strings.NewReader(c.stdin)
			var stdout, stderr bytes.Buffer
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			err := cmd.Run()
			got := 0
			if ee, ok := err.(*exec.ExitError); ok {
				got = ee.ExitCode()
			} else {
				require.NoError(t, err)
			}
			assert.Equal(t, c.want, got, "stdout: %s\nstderr: %s", stdout.String(), stderr.String())
		})
	}
	// Delivered: a@relay.test, and c@relay.test beside a deferred one;
	// nothing for the refused invocations.
	msgs := l.relay.WaitMessages(t, 2, 10*time.Second)
	time.Sleep(200 * time.Millisecond)
	msgs = l.relay.Messages(t)
	var to []string
	for _, m := range msgs {
		to = append(to, m.To...)
	}
	assert.ElementsMatch(t, []string{"a@relay.test", "c@relay.test"}, to)
}
