package e2e

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/smtp"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/seed7b014b84/caddy-smtp/internal/peertest"
)

// swaks runs swaks and returns its output and error.
func swaks(t *testing.T, args ...string) (string, error) {
	t.Helper()
	peertest.Need(t, "swaks")
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, "swaks", args...).CombinedOutput()
	return string(out), err
}

// TestSubmission submits with swaks through the layer4 handler of the
// binary, which answers once the message is in the queue ("250 2.0.0
// queued as ID") and delivers it afterwards: by MX (Knot), to a relay and
// over LMTP to Dovecot; and an unauthenticated client outside
// relay_networks cannot relay.
func TestSubmission(t *testing.T) {
	l := startMailLab(t)
	open, guarded := freePort(t), freePort(t)
	caddyfile := fmt.Sprintf(`{
	admin off
%s	layer4 {
		127.0.0.1:%d {
			route {
				smtp_submission {
					relay_networks 127.0.0.0/8
				}
			}
		}
		127.0.0.1:%d {
			route {
				smtp_submission {
					user app $2a$14$Zo64RIRYrf9TrNurx7QrKuKqGz25s8ZNpX.bJml3UU7Smq//h2gsG
					allow_insecure_auth
					relay_networks 192.0.2.0/24
				}
			}
		}
	}
}
`, l.smtpOption(), open, guarded)
	logs := runCaddy(t, caddyfile)
	server := fmt.Sprintf("127.0.0.1:%d", open)
	require.Eventually(t, func() bool { return strings.Contains(logs.String(), "serving initial configuration") }, 20*time.Second, 50*time.Millisecond)

	for _, to := range []string{"x@good.mail.test", "y@relay.test", "alice@foobar.net"} {
		out, err := swaks(t, "--server", server, "--from", "app@example.org", "--to", to, "--body", "via layer4")
		require.NoError(t, err, out)
		assert.Regexp(t, `<-  250 2\.0\.0 queued as [0-9a-z]{20}\n`, out)
	}
	assert.Len(t, l.mx.WaitMessages(t, 1, 10*time.Second), 1, "by MX")
	assert.Len(t, l.relay.WaitMessages(t, 1, 10*time.Second), 1)
	assert.Len(t, l.store.WaitMessages(t, "alice@foobar.net", 1, 10*time.Second), 1)

	// No open relay: unauthenticated, from outside relay_networks.
	out, err := swaks(t, "--server", fmt.Sprintf("127.0.0.1:%d", guarded), "--from", "spam@example.org", "--to", "victim@relay.test")
	require.Error(t, err)
	assert.Contains(t, out, "530 5.7.0")
	// Authenticated, it may.
	out, err = swaks(t, "--server", fmt.Sprintf("127.0.0.1:%d", guarded), "--from", "app@example.org", "--to", "z@relay.test",
		"--auth", "PLAIN", "--auth-user", "app", "--auth-password", "change-me")
	require.NoError(t, err, out)
	assert.Len(t, l.relay.WaitMessages(t, 2, 10*time.Second), 2)
}

// TestReloadUnderLoad submits 2,000 messages through the layer4 handler
// from 8 clients while the smtp app's config is changed 10 times through
// the admin API (a timeout, the ip_strategy, the next_hop between two
// relays): every message is queued ("250 queued as") and arrives exactly
// once through the queue, which the reloads keep running, and no client
// sees an error.
func TestReloadUnderLoad(t *testing.T) {
	const clients, perClient, changes = 8, 250, 10
	relayA := peertest.StartSink(t, peertest.SinkOptions{Backlog: 128})
	relayB := peertest.StartSink(t, peertest.SinkOptions{Backlog: 128})
	admin, submit := freePort(t), freePort(t)
	caddyfile := fmt.Sprintf(`{
	admin 127.0.0.1:%d
	smtp {
		hostname out.example.org
		resolver udp://127.0.0.1:1
		next_hop a
		remote a {
			address 127.0.0.1
			port %d
		}
		remote b {
			address 127.0.0.1
			port %d
		}
		timeouts {
			data 10m
		}
		ip_strategy ipv4_then_ipv6
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
`, admin, relayA.Port, relayB.Port, submit)
	logs := runCaddy(t, caddyfile)
	require.Eventually(t, func() bool { return strings.Contains(logs.String(), "serving initial configuration") }, 20*time.Second, 50*time.Millisecond)

	var wg sync.WaitGroup
	errs := make(chan error, clients*perClient)
	for c := range clients {
		wg.Go(func() {
			cl, err := smtp.Dial(fmt.Sprintf("127.0.0.1:%d", submit))
			if err != nil {
				errs <- err
				return
			}
			defer cl.Quit()
			for i := range perClient {
				id := fmt.Sprintf("c%d-m%d", c, i)
				if err := sendOne(cl, id); err != nil {
					errs <- fmt.Errorf("%s: %w", id, err)
					return
				}
			}
		})
	}
	patches := []struct{ path, value string }{
		{"timeouts/data", `"5m"`}, {"next_hop", `"b"`}, {"ip_strategy", `"ipv4_only"`}, {"next_hop", `"a"`},
		{"timeouts/data", `"7m"`}, {"next_hop", `"b"`}, {"ip_strategy", `"ipv4-then-ipv6"`}, {"next_hop", `"a"`},
		{"timeouts/data", `"10m"`}, {"next_hop", `"b"`},
	}
	require.Len(t, patches, changes)
	client := &http.Client{Timeout: 30 * time.Second}
	for _, p := range patches {
		time.Sleep(100 * time.Millisecond)
		req, err := http.NewRequest(http.MethodPatch, fmt.Sprintf("http://127.0.0.1:%d/config/apps/smtp/%s", admin, p.path), strings.NewReader(p.value))
		require.NoError(t, err)
		req.Header.Set("Content-Type", "application/json")
		start := time.Now()
		resp, err := client.Do(req)
		require.NoError(t, err)
		resp.Body.Close()
		require.Equal(t, http.StatusOK, resp.StatusCode, p.path)
		assert.Less(t, time.Since(start), 5*time.Second, "the admin API is not blocked")
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("client: %v", err)
	}

	seen := map[string]int{}
	msgs := append(relayA.WaitMessages(t, 1, 10*time.Second), relayB.WaitMessages(t, 1, 10*time.Second)...)
	require.Eventually(t, func() bool {
		msgs = append(relayA.Messages(t), relayB.Messages(t)...)
		return len(msgs) >= clients*perClient
	}, 60*time.Second, 200*time.Millisecond, "all messages arrive")
	for _, m := range msgs {
		_, id, _ := strings.Cut(string(m.Header), "Subject: ")
		id, _, _ = strings.Cut(id, "\n")
		seen[id]++
	}
	assert.Len(t, msgs, clients*perClient, "no message twice")
	assert.Len(t, seen, clients*perClient, "every message")
	for id, n := range seen {
		if n != 1 {
			t.Errorf("%s arrived %d times", id, n)
		}
	}
	t.Logf("relay a got %d, relay b got %d", len(relayA.Messages(t)), len(relayB.Messages(t)))
	assert.Positive(t, len(relayA.Messages(t)))
	assert.Positive(t, len(relayB.Messages(t)), "the next_hop changes took effect")
}

// sendOne submits one message with net/smtp on an open session.
func sendOne(cl *smtp.Client, id string) error {
	if err := cl.Mail("load@example.org"); err != nil {
		return err
	}
	if err := cl.Rcpt("sink@relay.test"); err != nil {
		return err
	}
	w, err := cl.Data()
	if err != nil {
		return err
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, "From: load@example.org\r\nSubject: %s\r\n\r\nbody of %s\r\n", id, id)
	if _, err := w.Write(b.Bytes()); err != nil {
		return err
	}
	return w.Close()
}
