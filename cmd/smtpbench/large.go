package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/smtp"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"
)

// The large mode: one message of -large bytes (default 50 MiB) through
// each entry path of the built Caddy, one after the other, each queued and
// delivered to smtp-sink: the SMTP submission port (a Go client), smtp_send
// with the raw message, smtp_send with the JSON form (the text is the
// message), and the admin API's POST /smtp/queue (what `caddy sendmail`
// uses). Before each, Caddy collects its garbage (pprof's heap?gc=1) and
// its VmHWM is reset (echo 5 > /proc/PID/clear_refs); the figure is VmHWM
// over the RSS after the reset: at the answer (2xx or 250), and once the
// message was delivered and removed from the queue.

// largeResult is one entry path's figures.
type largeResult struct {
	path      string
	baseKB    int64         // VmRSS after the reset
	answerKB  int64         // VmHWM at the answer
	deliverKB int64         // VmHWM once delivered
	answer    time.Duration // until the answer
	delivered time.Duration // until the sink counted it
	allocated int64         // bytes the Go heap allocated meanwhile (TotalAlloc)
	reply     string
}

func (b *bench) large() error {
	size := b.largeSize
	progress("large messages: %s through each entry path, files in %s (%s)", mib(size/1024), b.dir, fsType(b.dir))
	bin, err := caddyBinary(b.ctx, b.caddyFlag, b.dir)
	if err != nil {
		return err
	}
	b.caddyBin = bin
	s, stopSink, err := b.sink("large-sink")
	if err != nil {
		return err
	}
	defer stopSink()
	d, err := b.peerDir("caddy")
	if err != nil {
		return err
	}
	submitPort, err := freePort()
	if err != nil {
		return err
	}
	httpPort, err := freePort()
	if err != nil {
		return err
	}
	c, err := startCaddyBin(b.ctx, b.caddyBin, caddyOptions{dir: d, queuePath: filepath.Join(d, "queue"),
		sinkPort: s.port, conns: b.conns, submitPort: submitPort, httpPort: httpPort, maxSize: max(64<<20, size*5/4)})
	if err != nil {
		return err
	}
	stopped := false
	stopCaddy := func() {
		if !stopped {
			stopped = true
			stopProc(c.proc, 15*time.Second)
		}
	}
	b.cl.add(stopCaddy)
	defer stopCaddy()

	q := url.Values{"from": {"a@example.org"}, "to": {"b@example.test"}}.Encode()
	paths := []struct {
		name string
		send func(ctx context.Context) (string, error)
	}{
		{"SMTP submission (Go net/smtp, DATA)", func(ctx context.Context) (string, error) {
			return sendSMTP(hostPort(submitPort), newMessageReader(size))
		}},
		{"HTTP smtp_send, raw message (queue mode)", func(ctx context.Context) (string, error) {
			return post(ctx, "http://"+hostPort(httpPort)+"/?"+q, "message/rfc822", newMessageReader(size), http.StatusAccepted)
		}},
		{`HTTP smtp_send, JSON form (a "text" of that size)`, func(ctx context.Context) (string, error) {
			return post(ctx, "http://"+hostPort(httpPort)+"/", "application/json", newJSONReader(size), http.StatusAccepted)
		}},
		{"admin API POST /smtp/queue", func(ctx context.Context) (string, error) {
			return post(ctx, "http://"+c.adminAddr+"/smtp/queue?"+q, "message/rfc822", newMessageReader(size), http.StatusAccepted)
		}},
		{"`caddy sendmail` (its CLI, through the admin API)", func(ctx context.Context) (string, error) {
			return sendmail(ctx, b.caddyBin, c.adminAddr, newMessageReader(size))
		}},
	}
	pid := c.pid()
	var results []largeResult
	for i, p := range paths {
		if err := waitIdle(pid, time.Second, time.Minute); err != nil {
			return err
		}
		if err := c.gc(b.ctx); err != nil {
			return err
		}
		time.Sleep(500 * time.Millisecond)
		r := largeResult{path: p.name}
		if err := writeClearRefs(pid); err != nil {
			return err
		}
		r.baseKB, _ = statusKB(strconv.Itoa(pid), "VmRSS")
		var prof *profile
		if b.profileDir != "" {
			prof = c.startProfile(b.ctx, "/debug/pprof/allocs", b.profileSeconds, filepath.Join(b.profileDir, fmt.Sprintf("large-%d-allocs.pprof", i+1)))
		}
		alloc0, err := c.totalAlloc(b.ctx)
		if err != nil {
			return err
		}
		progress("large: %s", p.name)
		ctx, cancel := context.WithTimeout(b.ctx, b.timeout)
		start := time.Now()
		reply, err := p.send(ctx)
		cancel()
		r.answer = time.Since(start)
		r.reply = reply
		if err != nil {
			return fmt.Errorf("%s: %w", p.name, err)
		}
		r.answerKB, _ = statusKB(strconv.Itoa(pid), "VmHWM")
		_, at, err := s.waitMessages(b.ctx, i+1, 5*time.Millisecond, time.Minute)
		if err != nil {
			return fmt.Errorf("%s: delivery: %w", p.name, err)
		}
		r.delivered = at.Sub(start)
		if err := c.waitQueueEmpty(b.ctx, time.Minute); err != nil {
			return err
		}
		r.deliverKB, _ = statusKB(strconv.Itoa(pid), "VmHWM")
		alloc1, err := c.totalAlloc(b.ctx)
		if err != nil {
			return err
		}
		r.allocated = alloc1 - alloc0
		if prof != nil {
			if err := prof.wait(); err != nil {
				progress("profile: %v", err)
			}
		}
		results = append(results, r)
	}
	b.printLarge(results)
	return nil
}

func writeClearRefs(pid int) error {
	return os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", pid), []byte("5"), 0)
}

func (b *bench) printLarge(results []largeResult) {
	fmt.Printf("One message of %s (%d bytes) per entry path, queued on %s and delivered to smtp-sink; %d CPUs, Linux %s, %s\n\n",
		mib(b.largeSize/1024), b.largeSize, queueFS(filepath.Dir(b.dir)), runtime.NumCPU(), kernelRelease(), runtime.Version())
	fmt.Println("| entry path | baseline RSS | peak over baseline, until the answer | peak over baseline, until delivered | Go heap allocated | answer s | delivered s | goal < 16 MiB |")
	fmt.Println("|---|--:|--:|--:|--:|--:|--:|---|")
	for _, r := range results {
		over := r.deliverKB - r.baseKB
		verdict := "met"
		if over >= 16*1024 {
			verdict = "NOT met"
		}
		fmt.Printf("| %s | %s | %s | %s | %s | %.2f | %.2f | %s |\n", r.path, mib(r.baseKB), mib(r.answerKB-r.baseKB), mib(over),
			mib(r.allocated/1024), r.answer.Seconds(), r.delivered.Seconds(), verdict)
	}
	fmt.Println()
	for _, r := range results {
		fmt.Printf("- %s: %s\n", r.path, r.reply)
	}
}

// sendSMTP submits body with net/smtp and returns the reply to the data.
func sendSMTP(addr string, body io.Reader) (string, error) {
	cl, err := smtp.Dial(addr)
	if err != nil {
		return "", err
	}
	defer cl.Close()
	if err := cl.Hello("bench.example.org"); err != nil {
		return "", err
	}
	if err := cl.Mail("a@example.org"); err != nil {
		return "", err
	}
	if err := cl.Rcpt("b@example.test"); err != nil {
		return "", err
	}
	w, err := cl.Data()
	if err != nil {
		return "", err
	}
	if _, err := io.Copy(w, body); err != nil {
		return "", err
	}
	if err := w.Close(); err != nil {
		return "", err
	}
	// net/smtp does not return the 250's text; the queue ID is in the log.
	_ = cl.Quit()
	return "250", nil
}

// sendmail runs `caddy sendmail -f a@example.org b@example.test` with the
// message on stdin, and returns what it printed and its own peak memory.
func sendmail(ctx context.Context, bin, admin string, body io.Reader) (string, error) {
	cmd := commandContext(ctx, bin, "sendmail", "--address", admin, "-f", "a@example.org", "b@example.test")
	cmd.Stdin = body
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		return "", err
	}
	hwm := pollHWM(cmd.Process.Pid, 5*time.Millisecond)
	err := cmd.Wait()
	peak := hwm()
	answer := fmt.Sprintf("exit %d, %q; the sendmail process's own peak RSS %s", cmd.ProcessState.ExitCode(), strings.TrimSpace(out.String()), mib(peak))
	if err != nil {
		return answer, fmt.Errorf("caddy sendmail: %w: %s", err, answer)
	}
	return answer, nil
}

var largeClient = &http.Client{Timeout: 10 * time.Minute}

// post POSTs body and wants status want; it returns the answer's body.
func post(ctx context.Context, u, contentType string, body io.Reader, want int) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, body)
	if err != nil {
		return "", err
	}
	req.Header.Set("Content-Type", contentType)
	resp, err := largeClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	answer := fmt.Sprintf("%d %s", resp.StatusCode, strings.TrimSpace(string(b)))
	if resp.StatusCode != want {
		return answer, fmt.Errorf("POST %s: %s", firstLine(u), answer)
	}
	return answer, nil
}

// lineReader produces size bytes of text in lines of at most 76
// characters and a line end (eol), without holding them: the client's
// memory is not what is measured, but it should not disturb the machine.
type lineReader struct {
	left int64
	eol  string
	line []byte // the current line, partly read
}

func newLineReader(size int64, eol string) *lineReader { return &lineReader{left: size, eol: eol} }

func (l *lineReader) Read(p []byte) (int, error) {
	n := 0
	for n < len(p) {
		if len(l.line) == 0 {
			if l.left <= 0 {
				if n == 0 {
					return 0, io.EOF
				}
				return n, nil
			}
			k := min(l.left, int64(76+len(l.eol)))
			if k <= int64(len(l.eol)) {
				l.line = []byte(strings.Repeat("x", int(k)))
			} else {
				l.line = []byte(largeLine[:k-int64(len(l.eol))] + l.eol)
			}
			l.left -= k
		}
		c := copy(p[n:], l.line)
		l.line = l.line[c:]
		n += c
	}
	return n, nil
}

const largeLine = "The quick brown fox jumps over the lazy dog 0123456789 abcdefghijklmnopqrstuv"

// newMessageReader is a message: a few header fields and a body of size
// bytes, CRLF-ended lines.
func newMessageReader(size int64) io.Reader {
	head := "From: <a@example.org>\r\nTo: <b@example.test>\r\nSubject: smtpbench large\r\n" +
		"Message-Id: <large." + strconv.FormatInt(time.Now().UnixNano(), 36) + "@bench.example.org>\r\n" +
		"Date: " + time.Now().Format(time.RFC1123Z) + "\r\n\r\n"
	return io.MultiReader(strings.NewReader(head), newLineReader(size, "\r\n"))
}

// newJSONReader is the JSON form with a text of size characters, lines
// ended by "\n" (written as the escape \n in the JSON string).
func newJSONReader(size int64) io.Reader {
	head := `{"from": "a@example.org", "to": ["b@example.test"], "subject": "smtpbench large", "text": "`
	return io.MultiReader(strings.NewReader(head), &jsonEscaper{r: newLineReader(size, "\n")}, strings.NewReader(`"}`))
}

// jsonEscaper writes LF as the two characters \n (the text holds no other
// character that JSON escapes).
type jsonEscaper struct {
	r       io.Reader
	pending []byte
	buf     [16 << 10]byte
}

func (j *jsonEscaper) Read(p []byte) (int, error) {
	if len(j.pending) == 0 {
		n, err := j.r.Read(j.buf[:])
		if n == 0 {
			return 0, err
		}
		out := make([]byte, 0, 2*n)
		for _, c := range j.buf[:n] {
			if c == '\n' {
				out = append(out, '\\', 'n')
			} else {
				out = append(out, c)
			}
		}
		j.pending = out
	}
	c := copy(p, j.pending)
	j.pending = j.pending[c:]
	return c, nil
}
