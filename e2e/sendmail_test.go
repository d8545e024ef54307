package e2e

import (
	"bytes"
	"context"
	"fmt"
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

// phpMessage is a message as PHP's mail() hands it to sendmail_path
// ("sendmail -t -i", plus -f from its fifth argument): To and Subject
// first, then the additional headers, LF line endings, no Date, no
// Message-ID, no From.
const phpMessage = "To: php-to@relay.test, Second <php-to2@relay.test>\n" +
	"Subject: From PHP\n" +
	"X-PHP-Originating-Script: 0:contact.php\n" +
	"Cc: php-cc@relay.test\n" +
	"Bcc: php-bcc@relay.test\n" +
	"MIME-Version: 1.0\n" +
	"Content-Type: text/plain; charset=UTF-8\n" +
	"\n" +
	"Hello from PHP.\n" +
	".\n" +
	"The line above is a single dot.\n"

// runSendmail runs argv (the binary, or a link to it) with stdin and the
// extra environment, and returns its exit status, stdout and stderr.
func runSendmail(t *testing.T, env []string, stdin string, argv ...string) (int, string, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = append(isolatedEnv(t), env...)
	cmd.Stdin = strings.NewReader(stdin)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else {
		require.NoError(t, err)
	}
	return code, stdout.String(), stderr.String()
}

// TestSendmail hands messages to the running Caddy's queue with `caddy
// sendmail`, as PHP's mail() and cron call /usr/sbin/sendmail: queued
// (exit 0) and delivered, with the headers a message must have added,
// Bcc removed and a lone dot kept (-i); the same through a link named
// sendmail, which finds Caddy through CADDY_ADMIN; exit 75 when Caddy is
// not running, 64 when there is no recipient, 65 when Caddy refuses the
// message for good.
func TestSendmail(t *testing.T) {
	sink := peertest.StartSink(t, peertest.SinkOptions{})
	admin := fmt.Sprintf("127.0.0.1:%d", peertest.FreePort(t))
	p := startCaddy(t, "Caddyfile", relayConfig(admin, sink.Port, 10, peertest.FreePort(t), "\t\t\tretry 1s\n\t\t\tnotify none\n\t\t\tmax_message_size 64KB"))
	noEnv := []string{"CADDY_ADMIN="}

	t.Run("php mail()", func(t *testing.T) {
		code, stdout, stderr := runSendmail(t, noEnv, phpMessage, caddyBin, "sendmail", "--address", admin, "-t", "-i", "-f", "web@example.org")
		require.Equal(t, 0, code, "stdout: %s\nstderr: %s", stdout, stderr)
		msgs := sink.WaitMessages(t, 1, 20*time.Second)
		require.Len(t, msgs, 1)
		m := msgs[0]
		assert.Equal(t, "web@example.org", m.From)
		assert.ElementsMatch(t, []string{"php-to@relay.test", "php-to2@relay.test", "php-cc@relay.test", "php-bcc@relay.test"}, m.To)
		header := string(m.Header)
		assert.Contains(t, header, "Subject: From PHP\n")
		assert.Contains(t, header, "X-PHP-Originating-Script: 0:contact.php\n")
		for _, h := range []string{"Date: ", "Message-ID: ", "From: "} {
			assert.True(t, strings.Contains(header, "\n"+h) || strings.HasPrefix(header, h), "%s added: %s", h, header)
		}
		assert.NotContains(t, header, "Bcc:")
		assert.NotContains(t, header, "php-bcc")
		assert.Equal(t, "Hello from PHP.\n.\nThe line above is a single dot.\n", string(m.Body))
		queued := p.queueLog("queued")
		if assert.Len(t, queued, 1) {
			assert.Equal(t, "sendmail", queued[0].str("source"))
		}
		p.waitQueueLog("delivered", 4, 10*time.Second)
	})

	t.Run("link named sendmail", func(t *testing.T) {
		link := filepath.Join(t.TempDir(), "sendmail")
		require.NoError(t, os.Symlink(caddyBin, link))
		msg := "To: cron@relay.test\nSubject: cron\n\nfrom cron\n"
		code, stdout, stderr := runSendmail(t, []string{"CADDY_ADMIN=" + admin}, msg, link, "-t", "-i", "-f", "cron@example.org")
		require.Equal(t, 0, code, "stdout: %s\nstderr: %s", stdout, stderr)
		msgs := sink.WaitMessages(t, 2, 20*time.Second)
		var got []string
		for _, m := range msgs {
			got = append(got, subjectOf(m))
		}
		assert.Contains(t, got, "cron")
		// Recipients as arguments, as cron gives them.
		code, stdout, stderr = runSendmail(t, []string{"CADDY_ADMIN=" + admin}, "Subject: args\n\nhi\n", link, "-oi", "args@relay.test")
		require.Equal(t, 0, code, "stdout: %s\nstderr: %s", stdout, stderr)
		msgs = sink.WaitMessages(t, 3, 20*time.Second)
		assert.Equal(t, []string{"args@relay.test"}, msgs[len(msgs)-1].To)
	})

	t.Run("exit statuses", func(t *testing.T) {
		down := fmt.Sprintf("127.0.0.1:%d", peertest.FreePort(t))
		code, _, stderr := runSendmail(t, noEnv, phpMessage, caddyBin, "sendmail", "--address", down, "-t", "-i", "-f", "web@example.org")
		assert.Equal(t, 75, code, "Caddy not running: EX_TEMPFAIL; %s", stderr)
		code, _, stderr = runSendmail(t, noEnv, "Subject: nobody\n\nhi\n", caddyBin, "sendmail", "--address", admin, "-t", "-i")
		assert.Equal(t, 64, code, "no recipient: EX_USAGE; %s", stderr)
		code, _, stderr = runSendmail(t, noEnv, "Subject: nobody\n\nhi\n", caddyBin, "sendmail", "--address", admin, "-i")
		assert.Equal(t, 64, code, "no recipient: EX_USAGE; %s", stderr)
		code, _, stderr = runSendmail(t, []string{"CADDY_ADMIN=" + down}, "Subject: x\n\nhi\n", caddyBin, "sendmail", "x@relay.test")
		assert.Equal(t, 75, code, "CADDY_ADMIN names a Caddy that is not running; %s", stderr)
		// Refused by the running Caddy for good: not a reason to retry.
		big := "Subject: big\n\n" + strings.Repeat("0123456789abcdef\n", 6000)
		code, _, stderr = runSendmail(t, noEnv, big, caddyBin, "sendmail", "--address", admin, "-i", "x@relay.test")
		assert.Equal(t, 65, code, "over max_message_size: EX_DATAERR, not a retry; %s", stderr)
		assert.Contains(t, stderr, "max_message_size")
	})
	time.Sleep(500 * time.Millisecond)
	assert.Len(t, sink.Messages(t), 3, "nothing else was sent")
}
