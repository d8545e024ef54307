package transport

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/seed7b014b84/caddy-smtp/internal/peertest"
)

// session dials addr and sets up a session with opts.
func session(t *testing.T, addr string, opts Options) (*Client, error) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	require.NoError(t, err)
	if opts.Hostname == "" {
		opts.Hostname = "client.example.org"
	}
	return Dial(t.Context(), conn, opts)
}

func envelope(rcpts ...string) *Envelope {
	env := &Envelope{From: "sender@example.org"}
	for _, r := range rcpts {
		env.To = append(env.To, Recipient{Addr: r})
	}
	return env
}

const testBody = "From: sender@example.org\r\nTo: rcpt@example.test\r\nSubject: test\r\n\r\nhello\r\n"

func TestSinkDelivers(t *testing.T) {
	sink := peertest.StartSink(t, peertest.SinkOptions{})
	c, err := session(t, sink.Addr, Options{})
	require.NoError(t, err)
	assert.True(t, c.Capabilities().Has("PIPELINING"))
	assert.False(t, c.Capabilities().Has(""), "smtp-sink's empty last EHLO keyword is ignored")

	for i := range 3 {
		res, err := c.Deliver(t.Context(), envelope("a@example.test", "b@example.test"), strings.NewReader(testBody))
		require.NoError(t, err)
		require.Len(t, res, 2)
		for _, r := range res {
			assert.Equal(t, Delivered, r.Status, "message %d: %s", i, r.Reply)
			assert.Equal(t, 250, r.Reply.Code)
		}
	}
	assert.Equal(t, 3, c.Messages())
	require.NoError(t, c.Quit())
	msgs := sink.WaitMessages(t, 3, 5*time.Second)
	assert.Equal(t, "sender@example.org", msgs[0].From)
	assert.Equal(t, []string{"a@example.test", "b@example.test"}, msgs[0].To)
	assert.Equal(t, "client.example.org", msgs[0].Helo)
	assert.Equal(t, "hello\n", string(msgs[0].Body))
}

// TestSinkRejections has smtp-sink refuse each command with a soft (-r)
// or hard (-f) error.
func TestSinkRejections(t *testing.T) {
	tests := []struct {
		flag, cmd string
		status    Status
		class     int
	}{
		{"-r", "mail", Deferred, 4}, {"-f", "mail", Failed, 5},
		{"-r", "rcpt", Deferred, 4}, {"-f", "rcpt", Failed, 5},
		{"-r", "data", Deferred, 4}, {"-f", "data", Failed, 5},
		{"-r", ".", Deferred, 4}, {"-f", ".", Failed, 5},
	}
	for _, tt := range tests {
		t.Run(tt.flag+" "+tt.cmd, func(t *testing.T) {
			sink := peertest.StartSink(t, peertest.SinkOptions{Flags: []string{tt.flag, tt.cmd}})
			c, err := session(t, sink.Addr, Options{})
			require.NoError(t, err)
			res, err := c.Deliver(t.Context(), envelope("a@example.test", "b@example.test"), strings.NewReader(testBody))
			require.NoError(t, err, "a refusal is an outcome, not a session error")
			for _, r := range res {
				assert.Equal(t, tt.status, r.Status)
				assert.Equal(t, tt.class, r.Reply.Code/100, r.Reply.String())
			}
			// The session goes on: the next message is sent after RSET.
			assert.True(t, c.Usable())
			_, err = c.Deliver(t.Context(), envelope("c@example.test"), strings.NewReader(testBody))
			require.NoError(t, err)
			require.NoError(t, c.Quit())
		})
	}
}

// TestSinkDisconnects has smtp-sink answer 421 and hang up (-Q), or hang
// up without a word (-q), part way through the transaction.
func TestSinkDisconnects(t *testing.T) {
	for _, flag := range []string{"-Q", "-q"} {
		for _, cmd := range []string{"mail", "rcpt", "data", "."} {
			t.Run(flag+" "+cmd, func(t *testing.T) {
				sink := peertest.StartSink(t, peertest.SinkOptions{Flags: []string{flag, cmd}})
				c, err := session(t, sink.Addr, Options{})
				require.NoError(t, err)
				res, err := c.Deliver(t.Context(), envelope("a@example.test", "b@example.test"), strings.NewReader(testBody))
				require.Len(t, res, 2)
				for _, r := range res {
					assert.Equal(t, Deferred, r.Status, "a dropped session defers: %s", r.Reply)
				}
				require.Error(t, err)
				assert.False(t, IsPermanent(err))
				assert.False(t, c.Usable())
				_, err = c.Deliver(t.Context(), envelope("c@example.test"), strings.NewReader(testBody))
				assert.Error(t, err, "the session is not used again")
			})
		}
	}
}

// TestSinkPhaseTimeouts has smtp-sink wait a second before answering one
// command (-W), with that phase's timeout at 500 ms: the session ends
// within 10% of the timeout, with an error naming the phase.
//
// PIPELINING is off (-p): smtp-sink delays a reply with a timer while it
// goes on reading, so with pipelined commands it answers the next ones
// first (503 "need MAIL command") and the delayed one last.
func TestSinkPhaseTimeouts(t *testing.T) {
	const limit = 500 * time.Millisecond
	tests := []struct {
		cmd   string
		phase Phase
	}{
		{"connect", PhaseGreeting},
		{"ehlo", PhaseEHLO},
		{"mail", PhaseMailFrom},
		{"rcpt", PhaseRcptTo},
		{"data", PhaseData},
		{".", PhaseData},
	}
	for _, tt := range tests {
		t.Run(tt.cmd, func(t *testing.T) {
			sink := peertest.StartSink(t, peertest.SinkOptions{Flags: []string{"-p", "-W", tt.cmd + ":1"}})
			timeouts := Timeouts{Greeting: time.Minute, EHLO: time.Minute, MailFrom: time.Minute, RcptTo: time.Minute, Data: time.Minute}
			switch tt.phase {
			case PhaseGreeting:
				timeouts.Greeting = limit
			case PhaseEHLO:
				timeouts.EHLO = limit
			case PhaseMailFrom:
				timeouts.MailFrom = limit
			case PhaseRcptTo:
				timeouts.RcptTo = limit
			case PhaseData:
				timeouts.Data = limit
			}
			conn, err := net.Dial("tcp", sink.Addr)
			require.NoError(t, err)
			start := time.Now()
			c, err := Dial(t.Context(), conn, Options{Hostname: "client.example.org", Timeouts: timeouts})
			if err == nil {
				start = time.Now()
				_, err = c.Deliver(t.Context(), envelope("a@example.test"), strings.NewReader(testBody))
			}
			elapsed := time.Since(start)
			require.Error(t, err)
			var e *Error
			require.ErrorAs(t, err, &e)
			assert.Equal(t, tt.phase, e.Phase)
			assert.True(t, e.Timeout)
			assert.Contains(t, err.Error(), "smtp "+string(tt.phase)+": timed out after 500ms")
			t.Logf("%s: %v after %s", tt.cmd, err, elapsed)
			assert.GreaterOrEqual(t, elapsed, limit)
			assert.Less(t, elapsed, limit+limit/10, "within 10%% of the timeout")
		})
	}
}

func TestSinkLMTP(t *testing.T) {
	sink := peertest.StartSink(t, peertest.SinkOptions{LMTP: true})
	c, err := session(t, sink.Addr, Options{Protocol: LMTP})
	require.NoError(t, err)
	res, err := c.Deliver(t.Context(), envelope("a@example.test", "b@example.test", "c@example.test"), strings.NewReader(testBody))
	require.NoError(t, err)
	for _, r := range res {
		assert.Equal(t, Delivered, r.Status)
	}
	msgs := sink.WaitMessages(t, 1, 5*time.Second)
	assert.Equal(t, "LMTP", msgs[0].Proto)
}

func TestSinkSMTPUTF8Missing(t *testing.T) {
	sink := peertest.StartSink(t, peertest.SinkOptions{})
	c, err := session(t, sink.Addr, Options{})
	require.NoError(t, err)
	res, err := c.Deliver(t.Context(), envelope("a@example.test", "jösé@exämple.test"), strings.NewReader(testBody))
	require.NoError(t, err)
	assert.Equal(t, Delivered, res[0].Status)
	assert.Equal(t, Failed, res[1].Status)
	assert.Equal(t, "553 5.6.7 non-ASCII address, and the server does not offer SMTPUTF8", res[1].Reply.String())
	msgs := sink.WaitMessages(t, 1, 5*time.Second)
	assert.Equal(t, []string{"a@example.test"}, msgs[0].To)

	res, err = c.Deliver(t.Context(), &Envelope{From: "séndér@example.org", To: []Recipient{{Addr: "a@example.test"}}}, strings.NewReader(testBody))
	require.NoError(t, err)
	assert.Equal(t, Failed, res[0].Status, "a non-ASCII sender fails the whole message")
}

func TestContextCancel(t *testing.T) {
	sink := peertest.StartSink(t, peertest.SinkOptions{Flags: []string{"-p", "-W", "mail:5"}})
	c, err := session(t, sink.Addr, Options{})
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err = c.Deliver(ctx, envelope("a@example.test"), strings.NewReader(testBody))
	require.Error(t, err)
	assert.Less(t, time.Since(start), time.Second)
	var e *Error
	require.ErrorAs(t, err, &e)
	assert.False(t, e.Timeout, "the caller's deadline is not the phase's timeout")
	assert.ErrorIs(t, err, context.DeadlineExceeded)
}
