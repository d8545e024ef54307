package e2e

import (
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/seed7b014b84/caddy-smtp/internal/peertest"
)

// mountTmpfs mounts a tmpfs of the given size (mount(8)'s size=, such as
// "8m") on a fresh folder, unmounted when the test ends (after Caddy,
// which is started later, has stopped).
func mountTmpfs(t *testing.T, size string) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("mounting a tmpfs needs root")
	}
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size+",mode=0700", "tmpfs", dir).CombinedOutput(); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("mount -t tmpfs: %v: %s", err, out)
		}
		t.Skipf("mount -t tmpfs: %v: %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", dir, err, out)
			_ = exec.Command("umount", "-l", dir).Run()
		}
	})
	return dir
}

// listSizes lists the files of the queue folder with their sizes (the
// body files as a count and a total).
func listSizes(dir string) string {
	var out []string
	bodies, bodyBytes := 0, int64(0)
	_ = filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return nil
		}
		rel, _ := filepath.Rel(dir, path)
		if strings.HasPrefix(rel, "bodies/") {
			bodies++
			bodyBytes += info.Size()
			return nil
		}
		out = append(out, fmt.Sprintf("%s=%d", rel, info.Size()))
		return nil
	})
	return fmt.Sprintf("%s, %d body files (%d bytes)", strings.Join(out, " "), bodies, bodyBytes)
}

// freeBytes is the free space of the file system of dir.
func freeBytes(t *testing.T, dir string) int64 {
	t.Helper()
	var st syscall.Statfs_t
	require.NoError(t, syscall.Statfs(dir, &st))
	return int64(st.Bavail) * st.Bsize
}

// bigMessage is a marked message of about size bytes, in lines of 100
// octets (too large to be kept in the queue's database: its body goes in
// a file of its own).
func bigMessage(marker string, size int) string {
	var b strings.Builder
	fmt.Fprintf(&b, "From: load@example.org\r\nTo: sink@relay.test\r\nSubject: %s\r\n\r\n", marker)
	line := strings.Repeat("x", 98) + "\r\n"
	for b.Len() < size {
		b.WriteString(line)
	}
	return b.String()
}

// TestQueueFullDisk puts the queue on a small tmpfs and fills it while
// the destination is down, through the layer4 handler: once the disk is
// full, messages get 452 4.3.1 (507 over HTTP), nothing refused is kept
// (no body file, no queued line, never delivered) and nothing accepted is
// lost: when the sink starts, every message that got 250 arrives, exactly
// once, the space is freed, and new messages are accepted again.
//
// "min_free" refuses by queue.min_free before the disk is full; "enospc"
// sets min_free to one byte, so that the queue fills the disk itself and
// the store meets ENOSPC (or SQLite's "database or disk is full"); no
// result may then be lost, and the deliveries must free the space.
// "space_returns" has the disk filled by another program (min_free one
// byte): the queue refuses, and takes messages again once the space
// returns.
func TestQueueFullDisk(t *testing.T) {
	t.Run("min_free", func(t *testing.T) { testFullDisk(t, "16m", "8MB", "under min_free") })
	t.Run("enospc", func(t *testing.T) { testFullDisk(t, "8m", "1", "") })
	t.Run("space_returns", testSpaceReturns)
}

// fullDiskConfig runs the queue in qdir, for the remote 127.0.0.1:sinkPort,
// with a submission port and an HTTP send endpoint (queue mode).
func fullDiskConfig(qdir, minFree string, sinkPort, submit, httpPort int) string {
	return fmt.Sprintf(`{
	admin off
	smtp {
		hostname out.example.org
		resolver udp://127.0.0.1:1
		next_hop r
		remote r {
			address 127.0.0.1
			port %d
		}
		queue {
			path %s
			min_free %s
			retry 1s
			notify none
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

http://127.0.0.1:%d {
	bind 127.0.0.1
	smtp_send
}
`, sinkPort, qdir, minFree, submit, httpPort)
}

func testFullDisk(t *testing.T, size, minFree, why string) {
	const msgSize = 256 << 10
	qdir := mountTmpfs(t, size)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("queue folder: %s; %d bytes free", listSizes(qdir), freeBytes(t, qdir))
		}
	})
	sinkPort, submit, httpPort := peertest.FreePort(t), peertest.FreePort(t), peertest.FreePort(t)
	p := startCaddy(t, "Caddyfile", fullDiskConfig(qdir, minFree, sinkPort, submit, httpPort))
	addr := fmt.Sprintf("127.0.0.1:%d", submit)

	// Fill the queue until it refuses.
	s, err := dialSubmitter(addr)
	require.NoError(t, err)
	accepted := map[string]string{}
	var refusedMarker, refusal string
	for i := range 200 {
		marker := fmt.Sprintf("full-%d", i)
		code, text, err := s.send("load@example.org", []string{"sink@relay.test"}, bigMessage(marker, msgSize))
		require.NoError(t, err)
		if id, ok := queuedID(code, text); ok {
			accepted[marker] = id
			continue
		}
		refusedMarker, refusal = marker, fmt.Sprintf("%d %s", code, text)
		break
	}
	s.close()
	free := freeBytes(t, qdir)
	t.Logf("%d messages of %d KiB accepted, then %q; %d bytes free", len(accepted), msgSize>>10, refusal, free)
	require.NotEmpty(t, refusedMarker, "the queue never refused")
	assert.True(t, strings.HasPrefix(refusal, "452 4.3.1"), "full: %s", refusal)
	require.GreaterOrEqual(t, len(accepted), 5)

	// Over HTTP, the same queue answers 507.
	resp, err := http.Post(fmt.Sprintf("http://127.0.0.1:%d/?from=web@example.org&to=sink@relay.test", httpPort),
		"message/rfc822", strings.NewReader(bigMessage("full-http", msgSize)))
	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, http.StatusInsufficientStorage, resp.StatusCode)

	// Why it refused.
	var refusals []string
	for _, e := range p.entries() {
		if e.Msg == "queue full: message refused for now" {
			refusals = append(refusals, e.str("error"))
		}
	}
	require.NotEmpty(t, refusals)
	if why != "" {
		assert.Contains(t, refusals[0], why)
	} else {
		full := false
		for _, r := range refusals {
			full = full || strings.Contains(r, "no space left on device") || strings.Contains(r, "disk is full")
		}
		assert.True(t, full, "the store met a full disk: %q", refusals)
	}

	// Nothing half-stored: a queued line and a body file for each
	// accepted message, none for the refused ones.
	assert.Len(t, p.queueLog("queued"), len(accepted))
	bodies, err := os.ReadDir(filepath.Join(qdir, "bodies"))
	require.NoError(t, err)
	var names []string
	for _, b := range bodies {
		names = append(names, b.Name())
	}
	assert.Len(t, names, len(accepted), "body files: %v", names)
	for _, n := range names {
		assert.NotContains(t, n, ".tmp")
	}

	// The destination comes back: everything accepted arrives, once.
	sink := peertest.StartSink(t, peertest.SinkOptions{Port: sinkPort})
	msgs := waitAllDelivered(t, p, accepted, 30*time.Second, sink)
	seen := countSubjects(msgs)
	for marker := range accepted {
		assert.Equal(t, 1, seen[marker], "%s", marker)
	}
	assert.Zero(t, seen[refusedMarker], "a refused message is never delivered")
	assert.Zero(t, seen["full-http"])
	assert.Len(t, msgs, len(accepted))
	// A delivery whose result could not be written would be made again
	// (and its event said "delivered" already).
	var writeErrors []string
	for _, e := range p.queueLog("") {
		if e.Level == "error" {
			writeErrors = append(writeErrors, fmt.Sprintf("%s: %s (id %s)", e.Msg, e.str("error"), e.str("id")))
		}
	}
	if len(writeErrors) > 0 {
		t.Errorf("the queue could not write %d times, first: %q", len(writeErrors), writeErrors[:min(3, len(writeErrors))])
	}

	// The space is freed, and new messages are taken again.
	require.Eventually(t, func() bool {
		b, _ := os.ReadDir(filepath.Join(qdir, "bodies"))
		return len(b) == 0
	}, 10*time.Second, 100*time.Millisecond, "the delivered bodies are removed")
	t.Logf("%d bytes free after the drain", freeBytes(t, qdir))
	again := map[string]string{}
	deadline := time.Now().Add(20 * time.Second)
	for i := 0; len(again) < 3; i++ {
		require.True(t, time.Now().Before(deadline), "new messages are accepted again")
		s, err := dialSubmitter(addr)
		require.NoError(t, err)
		marker := fmt.Sprintf("again-%d", i)
		code, text, err := s.send("load@example.org", []string{"sink@relay.test"}, bigMessage(marker, msgSize))
		s.close()
		require.NoError(t, err)
		if id, ok := queuedID(code, text); ok {
			again[marker] = id
		} else {
			t.Logf("after the drain: %d %s", code, text)
			time.Sleep(500 * time.Millisecond)
		}
	}
	msgs = waitAllDelivered(t, p, again, 30*time.Second, sink)
	seen = countSubjects(msgs)
	for marker := range again {
		assert.Equal(t, 1, seen[marker], "%s", marker)
	}
}

// testSpaceReturns has another program fill the queue's file system
// (min_free is one byte) while five messages wait for a destination that
// is down: a message too large for what is left gets 452 4.3.1 from the
// store's ENOSPC; the destination comes back while the disk is full (no
// space at all); once the space returns, the queue delivers the five
// exactly once, by itself, and takes new messages again.
func testSpaceReturns(t *testing.T) {
	const msgSize = 256 << 10
	qdir := mountTmpfs(t, "8m")
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("queue folder: %s; %d bytes free", listSizes(qdir), freeBytes(t, qdir))
		}
	})
	sinkPort, submit, httpPort := peertest.FreePort(t), peertest.FreePort(t), peertest.FreePort(t)
	p := startCaddy(t, "Caddyfile", fullDiskConfig(qdir, "1", sinkPort, submit, httpPort))
	addr := fmt.Sprintf("127.0.0.1:%d", submit)
	send := func(marker string) (int, string) {
		s, err := dialSubmitter(addr)
		require.NoError(t, err)
		defer s.close()
		code, text, err := s.send("load@example.org", []string{"sink@relay.test"}, bigMessage(marker, msgSize))
		require.NoError(t, err)
		return code, text
	}
	waiting := map[string]string{}
	for i := range 5 {
		marker := fmt.Sprintf("waiting-%d", i)
		code, text := send(marker)
		id, ok := queuedID(code, text)
		require.True(t, ok, "%d %s", code, text)
		waiting[marker] = id
	}

	// Another program fills the disk, leaving less than a message.
	ballast := filepath.Join(qdir, "ballast")
	f, err := os.Create(ballast)
	require.NoError(t, err)
	chunk := make([]byte, 64<<10)
	var size int64
	for range 1000 {
		n, err := f.Write(chunk)
		size += int64(n)
		if err != nil {
			break
		}
	}
	// Leave 128 KiB: above min_free, below a message.
	require.NoError(t, f.Truncate(size-128<<10))
	t.Logf("%d bytes free with the ballast", freeBytes(t, qdir))
	code, text := send("refused")
	assert.Equal(t, 452, code, text)
	assert.True(t, strings.HasPrefix(text, "4.3.1"), text)
	found := false
	for _, e := range p.entries() {
		if e.Msg == "queue full: message refused for now" {
			found = found || strings.Contains(e.str("error"), "no space left on device") || strings.Contains(e.str("error"), "disk is full")
		}
	}
	assert.True(t, found, "the refusal came from a full disk")

	// Then no space at all, and the destination comes back meanwhile.
	for range 10 {
		if _, err := f.Write(chunk); err != nil {
			break
		}
	}
	require.NoError(t, f.Close())
	t.Logf("%d bytes free", freeBytes(t, qdir))
	sink := peertest.StartSink(t, peertest.SinkOptions{Port: sinkPort})
	time.Sleep(3 * time.Second)
	t.Logf("%d messages delivered while the disk was full", len(sink.Messages(t)))

	// The space returns: the queue delivers what it holds, once, and
	// takes new messages again.
	require.NoError(t, os.Remove(ballast))
	msgs := waitAllDelivered(t, p, waiting, 30*time.Second, sink)
	time.Sleep(2 * time.Second)
	msgs = sink.Messages(t)
	code, text = send("after")
	after, ok := queuedID(code, text)
	require.True(t, ok, "%d %s", code, text)
	waiting["after"] = after
	msgs = waitAllDelivered(t, p, waiting, 30*time.Second, sink)
	seen := countSubjects(msgs)
	for marker := range waiting {
		assert.Equal(t, 1, seen[marker], "%s arrives once", marker)
	}
	assert.Zero(t, seen["refused"])
	assert.Len(t, msgs, len(waiting))
}
