package dsn

import (
	"crypto/sha256"
	"errors"
	"io"
	"runtime"
	"runtime/metrics"
	"testing"
	"time"

	gomessage "github.com/emersion/go-message"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/seed7b014b84/caddy-smtp/queue"
)

// bigBody is a large message made up on the fly: a header section, then
// the same 78-octet line over and over. It holds none of it in memory.
type bigBody struct {
	header []byte
	size   int64
}

var bigLine = []byte("The quick brown fox jumps over the lazy dog, again and again and again. 0123\r\n")

func (b *bigBody) Size() int64  { return b.size }
func (b *bigBody) Close() error { return nil }

func (b *bigBody) ReadAt(p []byte, off int64) (int, error) {
	if off >= b.size {
		return 0, io.EOF
	}
	n := 0
	for n < len(p) && off < b.size {
		var k int
		if off < int64(len(b.header)) {
			k = copy(p[n:], b.header[off:])
		} else {
			k = copy(p[n:], bigLine[(off-int64(len(b.header)))%int64(len(bigLine)):])
		}
		if rest := b.size - off; int64(k) > rest {
			k = int(rest)
		}
		n += k
		off += int64(k)
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// heapSampler records the largest heap in use while it is polled.
type heapSampler struct {
	samples []metrics.Sample
	peak    uint64
}

func newHeapSampler() *heapSampler {
	return &heapSampler{samples: []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}, {Name: "/gc/heap/allocs:bytes"}}}
}

func (h *heapSampler) poll() (inUse, allocs uint64) {
	metrics.Read(h.samples)
	inUse, allocs = h.samples[0].Value.Uint64(), h.samples[1].Value.Uint64()
	h.peak = max(h.peak, inUse)
	return inUse, allocs
}

// pollingWriter hashes what it is given and polls the heap as it goes.
type pollingWriter struct {
	h interface{ Write([]byte) (int, error) }
	s *heapSampler
	n int64
}

func (w *pollingWriter) Write(p []byte) (int, error) {
	w.n += int64(len(p))
	w.s.poll()
	return w.h.Write(p)
}

// TestLargeOriginalMemory: a 50 MiB message returned whole (RET=FULL):
// building the notice and reading it costs little memory, since the
// original streams from its body as the notice is read.
func TestLargeOriginalMemory(t *testing.T) {
	const size = 50 << 20
	body := &bigBody{header: []byte("From: alice@example.org\r\nTo: bob@example.net\r\nSubject: big\r\nMessage-ID: <big@example.org>\r\n\r\n"), size: size}
	m := failedMsg()
	m.Ret = "FULL"
	o := goldenOptions()

	runtime.GC()
	s := newHeapSampler()
	base, allocs0 := s.poll()
	s.peak = base
	start := time.Now()
	n, err := Build(o, m, body, failedNews)
	require.NoError(t, err)
	built := time.Since(start)
	s.poll()
	sum := sha256.New()
	w := &pollingWriter{h: sum, s: s}
	_, err = io.Copy(w, n.Body)
	require.NoError(t, err)
	_, allocs1 := s.poll()
	growth := s.peak - base
	t.Logf("50 MiB original, RET=FULL: notice of %d bytes; built in %v, read in %v; peak heap growth %.2f MiB, %.2f MiB allocated in all",
		w.n, built, time.Since(start)-built, float64(growth)/(1<<20), float64(allocs1-allocs0)/(1<<20))
	assert.Less(t, growth, uint64(8<<20), "the notice must not hold the original in memory")
	assert.Greater(t, w.n, int64(size))

	// The same notice, read by go-message: its third part is the original,
	// byte for byte (it is CRLF already).
	n2, err := Build(o, m, body, failedNews)
	require.NoError(t, err)
	want := sha256.New()
	_, err = io.Copy(want, io.NewSectionReader(body, 0, size))
	require.NoError(t, err)
	// 50 MiB ends part way through a line: the notice ends it with CRLF.
	require.NotZero(t, (size-int64(len(body.header)))%int64(len(bigLine)))
	want.Write([]byte("\r\n"))
	e, err := gomessage.Read(n2.Body)
	require.NoError(t, err)
	mr := e.MultipartReader()
	var got []byte
	for i := 0; ; i++ {
		p, err := mr.NextPart()
		if errors.Is(err, io.EOF) {
			break
		}
		require.NoError(t, err)
		if i == 2 {
			typ, _, _ := p.Header.ContentType()
			assert.Equal(t, "message/rfc822", typ)
			h := sha256.New()
			_, err := io.Copy(h, p.Body)
			require.NoError(t, err)
			got = h.Sum(nil)
		}
	}
	assert.Equal(t, want.Sum(nil), got, "the returned message is the original, with a CRLF at its end")
}

// BenchmarkBuildLarge measures building and reading a notice that returns
// a 50 MiB message.
func BenchmarkBuildLarge(b *testing.B) {
	body := &bigBody{header: []byte("From: alice@example.org\r\nSubject: big\r\n\r\n"), size: 50 << 20}
	m := failedMsg()
	m.Ret = "FULL"
	b.SetBytes(body.size)
	for b.Loop() {
		n, err := Build(goldenOptions(), m, body, failedNews)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := io.Copy(io.Discard, n.Body); err != nil {
			b.Fatal(err)
		}
	}
}

var _ queue.Body = (*bigBody)(nil)
