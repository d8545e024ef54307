package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/seed7b014b84/caddy-smtp/internal/peertest"
)

// TestNoMailDomainsEveryPath checks the codes of a domain that takes no
// mail (a null MX, RFC 7505: 556 5.1.10) and of one that does not exist
// (NXDOMAIN: 550 5.1.2), with DNS from Knot through unbound, through each
// entry path: refused at RCPT over SMTP (swaks); 422 naming the recipient
// and its reply over HTTP in queue mode, and in the report in deliver
// mode; and, from `caddy sendmail` (the admin API, which cannot refuse a
// recipient), queued and failed at once by the queue with that reply.
func TestNoMailDomainsEveryPath(t *testing.T) {
	l := startMailLab(t)
	admin := fmt.Sprintf("127.0.0.1:%d", peertest.FreePort(t))
	submit, queuePort, deliverPort := peertest.FreePort(t), peertest.FreePort(t), peertest.FreePort(t)
	p := startCaddy(t, "Caddyfile", fmt.Sprintf(`{
	admin %s
%s	layer4 {
		127.0.0.1:%d {
			route {
				smtp_submission {
					relay_networks 127.0.0.0/8
				}
			}
		}
	}
}

http://127.0.0.1:%d {
	bind 127.0.0.1
	smtp_send
}

http://127.0.0.1:%d {
	bind 127.0.0.1
	smtp_send {
		mode deliver
	}
}
`, admin, l.smtpOption(), submit, queuePort, deliverPort))

	cases := []struct {
		rcpt, code, enhanced string
	}{
		{"n@nullmx.mail.test", "556", "5.1.10"},
		{"n@nosuch.mail.test", "550", "5.1.2"},
	}
	for _, c := range cases {
		t.Run(c.rcpt, func(t *testing.T) {
			// SMTP: refused at RCPT.
			out, err := swaks(t, "--server", fmt.Sprintf("127.0.0.1:%d", submit), "--from", "app@example.org", "--to", c.rcpt)
			require.Error(t, err, out)
			assert.Contains(t, out, " -> RCPT TO:<"+c.rcpt+">\n<** "+c.code+" "+c.enhanced+" ")
			assert.NotContains(t, out, "queued as")

			// HTTP, queue mode: 422 naming the recipient and its reply.
			body := "From: web@example.org\r\nSubject: no mail\r\n\r\nhello\r\n"
			resp, err := http.Post(fmt.Sprintf("http://127.0.0.1:%d/?from=web@example.org&to=%s", queuePort, c.rcpt), "message/rfc822", strings.NewReader(body))
			require.NoError(t, err)
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			assert.Equal(t, http.StatusUnprocessableEntity, resp.StatusCode, "%s", b)
			var refused struct {
				Error      string `json:"error"`
				Recipients []struct {
					Rcpt  string `json:"rcpt"`
					Reply struct {
						Code     int    `json:"code"`
						Enhanced string `json:"enhanced"`
						Local    bool   `json:"local"`
					} `json:"reply"`
				} `json:"recipients"`
			}
			require.NoError(t, json.Unmarshal(b, &refused), "%s", b)
			assert.NotEmpty(t, refused.Error)
			if assert.Len(t, refused.Recipients, 1, "%s", b) {
				r := refused.Recipients[0]
				assert.Equal(t, c.rcpt, r.Rcpt)
				assert.Equal(t, c.code, fmt.Sprint(r.Reply.Code))
				assert.Equal(t, c.enhanced, r.Reply.Enhanced)
				assert.True(t, r.Reply.Local, "a reply made by this app, not a server")
			}

			// HTTP, deliver mode: the report's reply.
			resp, err = http.Post(fmt.Sprintf("http://127.0.0.1:%d/?from=web@example.org&to=%s", deliverPort, c.rcpt), "message/rfc822", strings.NewReader(body))
			require.NoError(t, err)
			b, _ = io.ReadAll(resp.Body)
			resp.Body.Close()
			assert.Equal(t, http.StatusUnprocessableEntity, resp.StatusCode, "%s", b)
			assert.Contains(t, string(b), `"code":`+c.code)
			assert.Contains(t, string(b), `"enhanced":"`+c.enhanced+`"`)

			// sendmail, through the admin API: queued, then failed at
			// once with the same reply.
			before := len(p.queueLog("failed"))
			code, stdout, stderr := runSendmail(t, []string{"CADDY_ADMIN="}, "Subject: no mail\n\nhi\n", caddyBin, "sendmail", "--address", admin, "-f", "cron@example.org", c.rcpt)
			require.Equal(t, 0, code, "stdout: %s\nstderr: %s", stdout, stderr)
			failed := p.waitQueueLog("failed", before+1, 20*time.Second)
			f := failed[len(failed)-1]
			assert.Equal(t, c.rcpt, f.str("rcpt"))
			assert.Equal(t, 1, f.int("attempts"), "a permanent result fails at once")
			assert.True(t, strings.HasPrefix(f.str("reply"), c.code+" "+c.enhanced+" "), f.str("reply"))
			for _, e := range linesOf(p, f.str("id"), "deferred") {
				t.Errorf("deferred: %v", e.F)
			}
		})
	}
	// Only the sendmail messages were queued (and the bounces the queue
	// makes of them, if it makes any): nothing of what was refused.
	sources := map[string]int{}
	for _, e := range p.queueLog("queued") {
		sources[e.str("source")]++
	}
	assert.Equal(t, len(cases), sources["sendmail"])
	assert.Zero(t, sources["smtp"]+sources["http"], "%v", sources)
}
