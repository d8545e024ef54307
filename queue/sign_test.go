package queue_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/seed7b014b84/caddy-smtp/delivery"
	"github.com/seed7b014b84/caddy-smtp/queue"
	"github.com/seed7b014b84/caddy-smtp/transport"
)

// hashSigner "signs" with a header field holding the SHA-256 of what it
// read, so a test can tell that the signature covers exactly the stored
// body and is computed once.
type hashSigner struct {
	mu    sync.Mutex
	signs int
}

func (s *hashSigner) Sign(m *queue.Message, body io.Reader) (io.Reader, func() []byte) {
	h := sha256.New()
	return io.TeeReader(body, h), func() []byte {
		s.mu.Lock()
		s.signs++
		s.mu.Unlock()
		return []byte("X-Test-Sig: " + hex.EncodeToString(h.Sum(nil)) + "\r\n")
	}
}

// bodies records the message each transaction carried.
type bodies struct {
	*script
	mu  sync.Mutex
	got []string
}

func (b *bodies) DeliverRoute(ctx context.Context, msg *delivery.Message, rt delivery.Route) []delivery.RecipientReport {
	data, err := io.ReadAll(io.NewSectionReader(msg.Body, 0, msg.Size))
	if err == nil {
		b.mu.Lock()
		b.got = append(b.got, string(data))
		b.mu.Unlock()
	}
	return b.script.DeliverRoute(ctx, msg, rt)
}

func (b *bodies) all() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]string(nil), b.got...)
}

// TestSignedOnceCarriedOnEveryAttempt: the signer's header goes before the
// stored body on every attempt, across a restart, and the body is signed
// once, as it entered the queue; notices are signed too.
func TestSignedOnceCarriedOnEveryAttempt(t *testing.T) {
	const body = "Subject: t\r\n\r\nbody\r\n"
	sum := sha256.Sum256([]byte(body))
	want := "X-Test-Sig: " + hex.EncodeToString(sum[:]) + "\r\n" + body

	signer := new(hashSigner)
	d := &bodies{script: newScript(func(_ string, attempt int) delivery.RecipientReport {
		if attempt < 3 {
			return deferred()
		}
		return delivered()
	})}
	pol := policy{retry: []time.Duration{50 * time.Millisecond}, expire: time.Hour}
	dir := t.TempDir()
	h := startAt(t, dir, d, pol, func(c *queue.Config) { c.Signer = signer })
	id, err := h.q.Enqueue(t.Context(), &delivery.Message{From: "a@example.org",
		To: []transport.Recipient{{Addr: "b@example.net"}}, Reader: strings.NewReader(body)})
	require.NoError(t, err)
	m := h.get(t, id)
	assert.Equal(t, "X-Test-Sig: "+hex.EncodeToString(sum[:])+"\r\n", m.Prefix, "the signature is kept with the message")
	assert.Equal(t, int64(len(body)), m.Size, "the stored body is the message as received")

	h.waitGone(t, id, 10*time.Second)
	got := d.all()
	require.Len(t, got, 3)
	for i, g := range got {
		assert.Equal(t, want, g, "attempt %d", i+1)
	}
	assert.Equal(t, 1, signer.signs, "signed once, as it entered the queue")
}

// TestSignedAfterRestart: a message signed before a restart is delivered
// with its signature by the queue opened again, without the signer.
func TestSignedAfterRestart(t *testing.T) {
	const body = "Subject: r\r\n\r\nrestart\r\n"
	dir := t.TempDir()
	hold := newScript(func(string, int) delivery.RecipientReport { return deferred() })
	pol := policy{retry: []time.Duration{time.Hour}, expire: 24 * time.Hour}
	h := startAt(t, dir, hold, pol, func(c *queue.Config) { c.Signer = new(hashSigner) })
	id, err := h.q.Enqueue(t.Context(), &delivery.Message{From: "a@example.org",
		To: []transport.Recipient{{Addr: "b@example.net"}}, Reader: strings.NewReader(body)})
	require.NoError(t, err)
	require.Eventually(t, func() bool { return hold.attemptsOf("b@example.net") == 1 }, 5*time.Second, 10*time.Millisecond)
	h.q.Stop(time.Second)
	require.True(t, h.q.Wait(10*time.Second))
	require.NoError(t, h.store.Close())

	d := &bodies{script: newScript(func(string, int) delivery.RecipientReport { return delivered() })}
	h2 := startAt(t, dir, d, pol, nil)
	_, err = h2.q.Act(t.Context(), &queue.Filter{}, queue.ActRetry, "")
	require.NoError(t, err)
	h2.waitGone(t, id, 10*time.Second)
	got := d.all()
	require.Len(t, got, 1)
	assert.True(t, strings.HasPrefix(got[0], "X-Test-Sig: "), "signature kept across the restart")
	assert.True(t, strings.HasSuffix(got[0], body))
}
