package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// sink is a running smtp-sink that keeps no message (no -d: a file per
// message would measure the disk) and counts them instead (-c).
type sink struct {
	addr    string
	port    int
	counter string // the file smtp-sink's -c counters go to
	proc    *proc
}

// startSink starts smtp-sink on a fresh loopback port, in dir, and waits
// until it greets.
//
// As root smtp-sink must switch to an unprivileged user (-u nobody). With
// -c it writes "sess=N quit=N mesg=N\r" to stdout each time a session
// ends, a QUIT is read or a message's final dot is; stdout is a file, so
// the count can be read without this process spending CPU on a pipe.
func startSink(ctx context.Context, dir string, conns int) (*sink, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	return startSinkOn(ctx, dir, port, conns)
}

// startSinkOn is startSink on a given port (the backlog mode's
// destination, down until then).
func startSinkOn(ctx context.Context, dir string, port, conns int) (*sink, error) {
	bin, err := lookPath("smtp-sink")
	if err != nil {
		return nil, err
	}
	s := &sink{addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), port: port,
		counter: filepath.Join(dir, "sink.out")}
	// The backlog and -m (most sessions at once) are well above the
	// connections any of the three senders opens.
	most := strconv.Itoa(max(256, 2*conns))
	s.proc, err = startProc("smtp-sink "+s.addr, s.counter, nil, bin, "-u", "nobody", "-c", "-m", most, s.addr, most)
	if err != nil {
		return nil, err
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if err := greets(ctx, s.addr); err == nil {
			return s, nil
		} else if s.proc.exited() || time.Now().After(deadline) || ctx.Err() != nil {
			_ = s.proc.stop(time.Second)
			out, _ := os.ReadFile(s.counter)
			return nil, fmt.Errorf("smtp-sink %s not ready: %v (%v)\n%s", s.addr, err, s.proc.waitErr, out)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// greets connects to addr, reads a 220 greeting and says QUIT.
func greets(ctx context.Context, addr string) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	dl, _ := ctx.Deadline()
	_ = c.SetDeadline(dl)
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if !strings.HasPrefix(line, "220") {
		return fmt.Errorf("greeting %q", strings.TrimSpace(line))
	}
	_, _ = c.Write([]byte("QUIT\r\n"))
	return nil
}

// messages returns how many messages the sink has received: the mesg= of
// the last whole record of its counter file.
func (s *sink) messages() (int, error) {
	f, err := os.Open(s.counter)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return 0, err
	}
	const tail = 256
	off := max(st.Size()-tail, 0)
	buf := make([]byte, st.Size()-off)
	n, _ := f.ReadAt(buf, off)
	buf = buf[:n]
	// Records end with \r; the last one may be half written.
	end := bytes.LastIndexByte(buf, '\r')
	if end < 0 {
		return 0, nil // nothing counted yet
	}
	rec := buf[:end]
	if i := bytes.LastIndexByte(rec, '\r'); i >= 0 {
		rec = rec[i+1:]
	}
	_, num, ok := bytes.Cut(rec, []byte("mesg="))
	if !ok {
		return 0, fmt.Errorf("smtp-sink counter: unexpected record %q", rec)
	}
	return strconv.Atoi(string(bytes.TrimSpace(num)))
}

// waitMessages polls the counter until it reaches n. It returns when it
// did (with the time it was seen), when the sink stops counting for idle,
// or when ctx ends.
func (s *sink) waitMessages(ctx context.Context, n int, poll, idle time.Duration) (int, time.Time, error) {
	last, lastChange := -1, time.Now()
	for {
		got, err := s.messages()
		now := time.Now()
		if err != nil {
			return got, now, err
		}
		if got >= n {
			return got, now, nil
		}
		if got != last {
			last, lastChange = got, now
		} else if now.Sub(lastChange) > idle {
			return got, now, fmt.Errorf("smtp-sink %s: %d of %d messages, none for %v", s.addr, got, n, idle)
		}
		if s.proc.exited() {
			return got, now, fmt.Errorf("smtp-sink %s exited: %v", s.addr, s.proc.waitErr)
		}
		select {
		case <-ctx.Done():
			return got, now, ctx.Err()
		case <-time.After(poll):
		}
	}
}
