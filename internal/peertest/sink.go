package peertest

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"
)

// SinkOptions configures StartSink.
type SinkOptions struct {
	// Addr is the IP address to listen on: "127.0.0.1" (the default), any
	// other 127.0.0.0/8 address, "::1", or, with Netns, an address of that
	// namespace.
	Addr string
	// Port is the port to listen on; 0 picks a free one with FreePort. With
	// Netns, FreePort still picks it (from the host's view, which is harmless).
	Port int
	// LMTP makes the sink speak LMTP instead of SMTP (-L).
	LMTP bool
	// NoDump keeps no message (no -d): for benchmarks, where writing a
	// file per message would measure the disk. Messages returns none.
	NoDump bool
	// Flags are extra smtp-sink flags, passed as they are, for example
	// {"-r", "rcpt"} (4xx to RCPT), {"-f", "mail"} (5xx), {"-Q", "data"}
	// (421 and hang up), {"-q", "ehlo"} (hang up without reply),
	// {"-W", "ehlo:1"} (delay in seconds), {"-M", "3"} (exit after three
	// messages) or {"-v"} (log the conversation to the sink's log).
	// Do not pass -S: it prefixes dump files and breaks Messages.
	Flags []string
	// Backlog is the listen(2) backlog; 0 means 100.
	Backlog int
	// Netns, if set, runs the sink inside that network namespace with
	// "ip netns exec". Readiness is then checked through /proc/PID/net/tcp,
	// which shows the sink's own namespace.
	Netns string
}

// Sink is a running smtp-sink.
type Sink struct {
	// Addr is host:port, ready for net.Dial ("[::1]:port" for IPv6).
	Addr string
	// Host is the listening IP address.
	Host string
	// Port is the listening port.
	Port int
	// DumpDir is the directory that holds one file per received message.
	DumpDir string
	// Netns is the network namespace the sink runs in, or "".
	Netns string

	proc *proc
}

// SinkMessage is one message captured by smtp-sink, parsed from its dump
// file. smtp-sink stores lines with LF endings (CR LF becomes LF) and after
// dot-unstuffing; Raw is exactly the message as the client sent it with
// those two changes.
type SinkMessage struct {
	// From is the envelope sender, without angle brackets ("" for <>).
	From string
	// To holds the envelope recipients, without angle brackets, in order.
	To []string
	// MailArgs is the whole argument of MAIL, e.g. "<a@x> SIZE=12 BODY=8BITMIME".
	MailArgs string
	// RcptArgs holds the whole argument of each RCPT, e.g. "<b@y> NOTIFY=NEVER".
	RcptArgs []string
	// ClientAddr is the client's IP address as the sink saw it, without
	// smtp-sink's "ipv6:" prefix.
	ClientAddr string
	// Proto is SMTP, ESMTP or LMTP.
	Proto string
	// Helo is the argument of the last HELO, EHLO or LHLO, if any.
	Helo string
	// Header is the message header section, each line ending in LF,
	// without the empty line that ends it.
	Header []byte
	// Body is everything after the empty line that ends the header.
	Body []byte
	// Raw is the whole message: Header, the empty line, Body.
	Raw []byte
	// File is the dump file's path.
	File string
}

// StartSink starts smtp-sink and waits until it listens. It is stopped and
// its files removed when the test ends.
//
// As root, smtp-sink must switch to an unprivileged user (-u nobody) or it
// refuses to run, and its dump directory must be writable by that user or
// it dies in the middle of a session. It sets SO_REUSEPORT, so a port is
// never reused between sinks (see FreePort).
func StartSink(t testing.TB, o SinkOptions) *Sink {
	t.Helper()
	Need(t, "smtp-sink")
	if o.Netns != "" {
		Need(t, "ip")
	}
	host := o.Addr
	if host == "" {
		host = "127.0.0.1"
	}
	port := o.Port
	if port == 0 {
		port = FreePort(t)
	}
	backlog := o.Backlog
	if backlog == 0 {
		backlog = 100
	}
	dir := instanceDir(t, "sink")
	dump := filepath.Join(dir, "dump")
	mkdirs(t, "nobody", dump)
	s := &Sink{
		Addr:    net.JoinHostPort(host, strconv.Itoa(port)),
		Host:    host,
		Port:    port,
		DumpDir: dump,
		Netns:   o.Netns,
	}
	listen := s.Addr
	if strings.Contains(host, ":") {
		listen = "[" + host + "]:" + strconv.Itoa(port) // smtp-sink accepts this form
	}
	var argv []string
	if o.Netns != "" {
		argv = append(argv, bin(t, "ip"), "netns", "exec", o.Netns)
	}
	argv = append(argv, bin(t, "smtp-sink"), "-u", "nobody")
	if o.LMTP {
		argv = append(argv, "-L")
	}
	// One file per message: the strftime part gives the second, smtp-sink
	// appends a random hex suffix.
	if !o.NoDump {
		argv = append(argv, "-d", dump+"/%Y%m%d%H%M%S.")
	}
	argv = append(argv, o.Flags...)
	argv = append(argv, listen, strconv.Itoa(backlog))
	// "ip netns exec" execs the command, so the pid stays the sink's.
	s.proc = startProc(t, "smtp-sink "+s.Addr, filepath.Join(dir, "sink.log"), 3*time.Second, nil, nil, argv...)
	pid := s.proc.cmd.Process.Pid
	// Readiness without connecting: a connection would count as a session
	// (-n), and fault flags such as "-q connect" would make it fail.
	s.proc.waitReady(t, func(context.Context) error {
		ok, err := listeningIn(pid, host, port)
		if err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("not listening on %s yet", s.Addr)
		}
		return nil
	})
	return s
}

// Log returns what smtp-sink wrote to stdout and stderr (counters with -c,
// the conversation with -v, and errors).
func (s *Sink) Log() string { return readFile(s.proc.logs[0]) }

// Messages returns the messages received so far, oldest first (by the time
// the dump file was last written, then by name). A message whose dump file
// smtp-sink still holds open (the transaction is not finished) is left out.
func (s *Sink) Messages(t testing.TB) []SinkMessage {
	t.Helper()
	msgs, err := s.messages()
	if err != nil {
		t.Fatalf("peertest: %v", err)
	}
	return msgs
}

func (s *Sink) messages() ([]SinkMessage, error) {
	ents, err := os.ReadDir(s.DumpDir)
	if err != nil {
		return nil, err
	}
	open := openFiles(s.proc.cmd.Process.Pid)
	type entry struct {
		path string
		mod  time.Time
	}
	var files []entry
	for _, e := range ents {
		if e.IsDir() {
			continue
		}
		p := filepath.Join(s.DumpDir, e.Name())
		if open[p] {
			continue
		}
		info, err := e.Info()
		if err != nil {
			continue // removed meanwhile
		}
		files = append(files, entry{p, info.ModTime()})
	}
	sort.Slice(files, func(i, j int) bool {
		if !files[i].mod.Equal(files[j].mod) {
			return files[i].mod.Before(files[j].mod)
		}
		return files[i].path < files[j].path
	})
	msgs := make([]SinkMessage, 0, len(files))
	for _, f := range files {
		b, err := os.ReadFile(f.path)
		if err != nil {
			return nil, err
		}
		m, err := ParseSinkDump(b)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", f.path, err)
		}
		m.File = f.path
		msgs = append(msgs, m)
	}
	return msgs, nil
}

// WaitMessages waits until at least n messages have been received, then
// returns all of them. It fails the test with the sink's log after timeout.
func (s *Sink) WaitMessages(t testing.TB, n int, timeout time.Duration) []SinkMessage {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		msgs, err := s.messages()
		if err != nil {
			t.Fatalf("peertest: %v", err)
		}
		if len(msgs) >= n {
			return msgs
		}
		if time.Now().After(deadline) {
			t.Fatalf("peertest: smtp-sink %s: %d of %d messages after %v\n%s", s.Addr, len(msgs), n, timeout, s.proc.logText())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// ParseSinkDump parses one smtp-sink dump file (the format of smtp-sink -d,
// described in smtp-sink(1)): X-Client-Addr, X-Client-Proto, X-Helo-Args,
// X-Mail-Args and X-Rcpt-Args records, a three-line Received header that
// ends them, the message, and one empty line that smtp-sink appends.
func ParseSinkDump(b []byte) (SinkMessage, error) {
	var m SinkMessage
	rest := b
	sawReceived := false
	for len(rest) > 0 {
		line, after, _ := bytes.Cut(rest, []byte("\n"))
		if sawReceived {
			// Continuation lines of smtp-sink's Received header.
			if len(line) > 0 && (line[0] == ' ' || line[0] == '\t') {
				rest = after
				continue
			}
			break
		}
		name, value, ok := strings.Cut(string(line), ": ")
		if !ok {
			return m, fmt.Errorf("unexpected dump line %q", line)
		}
		switch name {
		case "X-Client-Addr":
			m.ClientAddr = strings.TrimPrefix(value, "ipv6:")
		case "X-Client-Proto":
			m.Proto = value
		case "X-Helo-Args":
			m.Helo = value
		case "X-Mail-Args":
			m.MailArgs = value
			m.From = firstPath(value)
		case "X-Rcpt-Args":
			m.RcptArgs = append(m.RcptArgs, value)
			m.To = append(m.To, firstPath(value))
		case "Received":
			sawReceived = true
		default:
			return m, fmt.Errorf("unexpected dump record %q", name)
		}
		rest = after
	}
	if !sawReceived {
		return m, fmt.Errorf("no Received header: not an smtp-sink dump")
	}
	// smtp-sink ends each dump with one empty line of its own.
	raw := bytes.TrimSuffix(rest, []byte("\n"))
	m.Raw = raw
	m.Header, m.Body = SplitMessage(raw)
	return m, nil
}

// firstPath returns the address in the first word of a MAIL or RCPT
// argument, without angle brackets.
func firstPath(args string) string {
	w, _, _ := strings.Cut(args, " ")
	w = strings.TrimPrefix(w, "<")
	w = strings.TrimSuffix(w, ">")
	return w
}

// SplitMessage splits a message at the first empty line (LF or CR LF line
// endings). The header keeps its last line ending but not the empty line;
// the body is what follows the empty line. A message without an empty line
// is all header.
func SplitMessage(raw []byte) (header, body []byte) {
	for i := 0; i < len(raw); {
		j := bytes.IndexByte(raw[i:], '\n')
		if j < 0 {
			break
		}
		line := raw[i : i+j+1]
		if bytes.Equal(line, []byte("\n")) || bytes.Equal(line, []byte("\r\n")) {
			return raw[:i], raw[i+len(line):]
		}
		i += j + 1
	}
	return raw, nil
}
