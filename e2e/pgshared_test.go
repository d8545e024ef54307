package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/seed7b014b84/caddy-smtp/internal/peertest"
)

// The shared queue (queue/pgstore) with several instances of the built
// binary on one PostgreSQL database (a private cluster per test).

// pgE2EQueue is the queue block of an instance of the shared queue: the
// postgres store at url, leases under the instance's name, and more
// lines.
func pgE2EQueue(url, instance, more string) string {
	return fmt.Sprintf("\t\t\tstore postgres {\n\t\t\t\turl %s\n\t\t\t\tinstance %s\n\t\t\t}\n%s", url, instance, more)
}

// pgE2EConfig is relayConfig (queue_test.go) with the instance's own
// source address (source, in 127.0.0.0/8), so that the sink's dump files
// say which instance sent each copy.
func pgE2EConfig(source string, relayPort, remoteConcurrency, submit int, queue string) string {
	return fmt.Sprintf(`{
	admin off
	smtp {
		hostname out.example.org
		resolver udp://127.0.0.1:1
		next_hop r
		source_ip {
			v4 %s
		}
		remote r {
			address 127.0.0.1
			port %d
			concurrency %d
		}
		queue {
%s
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
`, source, relayPort, remoteConcurrency, queue, submit)
}

// pgE2EConnect connects the test itself to the database, to read what the
// instances wrote there.
func pgE2EConnect(t *testing.T, url string) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := pgx.Connect(ctx, url)
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close(context.Background()) })
	return c
}

// pgE2ERow is what the database says of a message: who leases it, until
// when, and its first recipient's attempts as stored.
type pgE2ERow struct {
	owner    string
	until    time.Time
	attempts int
	history  int
	state    string
}

// pgE2EGet reads message id's row; ok is false when there is none.
func pgE2EGet(t *testing.T, db *pgx.Conn, id string) (pgE2ERow, bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var owner *string
	var until *time.Time
	var data []byte
	var r pgE2ERow
	err := db.QueryRow(ctx, `SELECT lease_owner, lease_until, data, state FROM smtp_queue_messages WHERE id = $1`, id).
		Scan(&owner, &until, &data, &r.state)
	if errors.Is(err, pgx.ErrNoRows) {
		return r, false
	}
	require.NoError(t, err)
	if owner != nil {
		r.owner = *owner
	}
	if until != nil {
		r.until = *until
	}
	var m struct {
		Recipients []struct {
			Attempts int               `json:"attempts"`
			History  []json.RawMessage `json:"history"`
		} `json:"recipients"`
	}
	require.NoError(t, json.Unmarshal(data, &m))
	require.NotEmpty(t, m.Recipients)
	r.attempts, r.history = m.Recipients[0].Attempts, len(m.Recipients[0].History)
	return r, true
}

// pgE2EKeepLogs writes, when the test failed, the output of each
// instance to E2E_LOGDIR (if set), as TEST-NAME.log.
func pgE2EKeepLogs(t *testing.T, name string, p *caddyProc) {
	t.Cleanup(func() {
		d := os.Getenv("E2E_LOGDIR")
		if !t.Failed() || d == "" {
			return
		}
		file := strings.NewReplacer("/", "_", " ", "_").Replace(t.Name()) + "-" + name + ".log"
		_ = os.WriteFile(filepath.Join(d, file), []byte(p.logs.String()), 0o644)
	})
}

// pgE2EFirst returns the first n of list.
func pgE2EFirst(list []string, n int) []string { return list[:min(n, len(list))] }

// pgE2EStopPostgres stops the cluster at once, as a crash would
// (immediate shutdown: SIGQUIT to the postmaster), and waits until it is
// gone. The postmaster is signalled directly: peertest's Postgres.Stop
// signals runuser, which passes neither SIGQUIT nor SIGINT on, so that it
// waits 20 s and then kills the process group.
func pgE2EStopPostgres(t *testing.T, pg *peertest.Postgres) {
	t.Helper()
	pid := 0
	procs, err := os.ReadDir("/proc")
	require.NoError(t, err)
	for _, e := range procs {
		n, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", n))
		if err != nil {
			continue
		}
		args := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
		if len(args) == 0 || filepath.Base(args[0]) != "postgres" {
			continue
		}
		for i := 0; i+1 < len(args); i++ {
			if args[i] == "-p" && args[i+1] == strconv.Itoa(pg.Port) {
				pid = n
			}
		}
	}
	require.NotZero(t, pid, "the postmaster of port %d", pg.Port)
	require.NoError(t, syscall.Kill(pid, syscall.SIGQUIT))
	deadline := time.Now().Add(15 * time.Second)
	for {
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); err != nil {
			return
		}
		require.True(t, time.Now().Before(deadline), "postgres %d did not stop within 15 s", pid)
		time.Sleep(20 * time.Millisecond)
	}
}

// pgE2EWaitArrived waits until every marker of ids has arrived at the
// sink, and then until neither the sink nor the instances' output has
// changed for 2 s (nothing more to come), and returns the sink's messages.
func pgE2EWaitArrived(t *testing.T, ids map[string]string, timeout time.Duration, sink *peertest.Sink, procs ...*caddyProc) []peertest.SinkMessage {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for dumpCount(sink) < len(ids) {
		if time.Now().After(deadline) {
			t.Fatalf("the sink holds %d of %d messages after %v", dumpCount(sink), len(ids), timeout)
		}
		time.Sleep(250 * time.Millisecond)
	}
	for {
		seen := countSubjects(sink.Messages(t))
		missing := 0
		for marker := range ids {
			if seen[marker] == 0 {
				missing++
			}
		}
		if missing == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d messages have not arrived after %v", missing, len(ids), timeout)
		}
		time.Sleep(500 * time.Millisecond)
	}
	state := func() []int {
		s := []int{dumpCount(sink)}
		for _, p := range procs {
			s = append(s, len(p.logs.String()))
		}
		return s
	}
	last, since := state(), time.Now()
	for time.Since(since) < 2*time.Second {
		if time.Now().After(deadline) {
			t.Fatalf("the queue is still busy after %v", timeout)
		}
		time.Sleep(250 * time.Millisecond)
		if now := state(); fmt.Sprint(now) != fmt.Sprint(last) {
			last, since = now, time.Now()
		}
	}
	return sink.Messages(t)
}

// TestPgE2ESharedKill9 runs three instances on one database, each in its
// own folder with its own submission port and source address, all sending
// to one smtp-sink that waits a second before it answers the end of data
// (so that transactions are in flight). 3,000 messages are submitted, a
// third through each instance; while they drain, one instance is killed
// with SIGKILL. Every message arrives; the duplicates are no more than the
// transactions the killed instance had in flight (its connections to the
// sink just before the kill), each a message it held and sent (the sink
// says from which address), never one sent twice by the instances alive;
// the messages it held leases on at the kill are delivered by the others,
// and never before the lease expired (queue.lease 5s).
func TestPgE2ESharedKill9(t *testing.T) {
	const instances, clients, perClient = 3, 4, 250
	const total = instances * clients * perClient
	const destConcurrency = 200
	pg := peertest.StartPostgres(t, peertest.PostgresOptions{})
	url := pg.CreateDatabase(t, "kill9")
	sink := peertest.StartSink(t, peertest.SinkOptions{Backlog: 256, Flags: []string{"-W", ".:1"}})
	names := []string{"h11-a", "h11-b", "h11-c"}
	sources := []string{"127.0.0.2", "127.0.0.3", "127.0.0.4"}
	procs := make([]*caddyProc, instances)
	addrs := make([]string, instances)
	for i, name := range names {
		submit := peertest.FreePort(t)
		addrs[i] = fmt.Sprintf("127.0.0.1:%d", submit)
		procs[i] = startCaddy(t, "Caddyfile", pgE2EConfig(sources[i], sink.Port, destConcurrency, submit, pgE2EQueue(url, name,
			fmt.Sprintf("\t\t\tlease 5s\n\t\t\tretry 1s\n\t\t\tnotify none\n\t\t\tconcurrency 200\n\t\t\tdestination_concurrency %d", destConcurrency))))
		pgE2EKeepLogs(t, name, procs[i])
	}
	db := pgE2EConnect(t, url)

	start := time.Now()
	parts := make([]map[string]string, instances)
	var wg sync.WaitGroup
	for i := range procs {
		wg.Go(func() { parts[i] = submitMany(t, addrs[i], fmt.Sprintf("k9-%d", i), clients, perClient) })
	}
	wg.Wait()
	ids := map[string]string{}
	for _, part := range parts {
		for marker, id := range part {
			ids[marker] = id
		}
	}
	require.Len(t, ids, total, "every message gets 250 queued as ID")
	t.Logf("%d messages submitted to 3 instances in %v; %d at the sink", total, time.Since(start).Round(time.Millisecond), dumpCount(sink))

	// Kill instance a in the middle of the drain.
	victim := procs[0]
	deadline := time.Now().Add(60 * time.Second)
	for dumpCount(sink) < total/4 {
		require.True(t, time.Now().Before(deadline), "the drain did not start")
		time.Sleep(50 * time.Millisecond)
	}
	inflight := 0
	for range 3 {
		inflight = max(inflight, establishedTo(victim.pid(), sink.Port))
		time.Sleep(2 * time.Millisecond)
	}
	victim.kill()
	killedAt := time.Now()
	atKill := dumpCount(sink)
	require.Less(t, atKill, total-500, "killed in the middle of the drain")

	// What it held at the kill: it can change nothing any more.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	rows, err := db.Query(ctx, `SELECT id, lease_until FROM smtp_queue_messages WHERE lease_owner = $1 AND lease_token IS NOT NULL`, names[0])
	require.NoError(t, err)
	held := map[string]time.Time{}
	for rows.Next() {
		var id string
		var until time.Time
		require.NoError(t, rows.Scan(&id, &until))
		held[id] = until
	}
	require.NoError(t, rows.Err())
	cancel()
	t.Logf("killed %s with %d messages at the sink, %d connections to the sink open, %d leases held", names[0], atKill, inflight, len(held))
	require.NotEmpty(t, held, "the killed instance held leases")

	msgs := pgE2EWaitArrived(t, ids, 120*time.Second, sink, procs[1:]...)
	t.Logf("drained %v after the kill, %v after the first submission", time.Since(killedAt).Round(time.Millisecond), time.Since(start).Round(time.Millisecond))

	seen := countSubjects(msgs)
	for marker := range ids {
		assert.GreaterOrEqual(t, seen[marker], 1, "%s arrived", marker)
	}
	assert.Len(t, seen, total, "nothing else arrived")
	dups := 0
	for _, n := range seen {
		dups += n - 1
	}
	// Who sent each copy.
	byID := map[string]string{}
	for marker, id := range ids {
		byID[id] = marker
	}
	senders := map[string][]string{}
	fromVictim := 0
	for _, m := range msgs {
		marker := subjectOf(m)
		senders[marker] = append(senders[marker], m.ClientAddr)
		if m.ClientAddr == sources[0] {
			fromVictim++
		}
	}
	heldMarkers := map[string]bool{}
	for id := range held {
		heldMarkers[byID[id]] = true
	}
	// A duplicate is a copy the killed instance sent and could not
	// record: never two copies from the instances alive, never a message
	// it did not hold.
	var twiceByAlive, notHeld []string
	for marker, from := range senders {
		if len(from) < 2 {
			continue
		}
		alive := 0
		for _, a := range from {
			if a != sources[0] {
				alive++
			}
		}
		if alive > 1 {
			twiceByAlive = append(twiceByAlive, fmt.Sprintf("%s %v", marker, from))
		}
		if !heldMarkers[marker] {
			notHeld = append(notHeld, fmt.Sprintf("%s %v", marker, from))
		}
	}
	assert.Empty(t, pgE2EFirst(twiceByAlive, 5), "%d messages sent twice by the instances alive (first 5, with the senders' addresses)", len(twiceByAlive))
	assert.Empty(t, pgE2EFirst(notHeld, 5), "%d messages sent twice that the killed instance did not hold at the kill (first 5)", len(notHeld))
	t.Logf("%d messages at the sink (%d from the killed instance, which logged %d delivered), %d duplicates; %d connections to the sink open at the kill",
		len(msgs), fromVictim, len(victim.queueLog("delivered")), dups, inflight)
	assert.LessOrEqual(t, dups, inflight, "duplicates are at most the killed instance's transactions in flight")

	// Its leases were taken over by the others after they expired.
	takenOver, perInstance := 0, map[string]int{}
	var early []string
	for i, p := range procs[1:] {
		for _, e := range p.queueLog("delivered") {
			perInstance[names[i+1]]++
			until, ok := held[e.str("id")]
			if !ok {
				continue
			}
			takenOver++
			// The transaction began (the line's time less its duration)
			// after the lease had ended.
			began := e.TS.Add(-time.Duration(e.F["duration"].(float64) * float64(time.Second)))
			if began.Before(until) {
				early = append(early, fmt.Sprintf("%s by %s: began %v before the lease's end", e.str("id"), names[i+1], until.Sub(began)))
			}
			assert.GreaterOrEqual(t, e.int("attempts"), 2, "%s: the killed instance's attempt counts", e.str("id"))
		}
	}
	perInstance[names[0]] = len(victim.queueLog("delivered"))
	t.Logf("delivered per instance (logged): %v; %d of the %d messages leased by the killed instance were delivered by the others",
		perInstance, takenOver, len(held))
	assert.Positive(t, takenOver, "the killed instance's leases were taken over")
	assert.Empty(t, pgE2EFirst(early, 5), "%d of its messages were sent again before its lease ended (first 5)", len(early))
	assert.Positive(t, perInstance[names[1]])
	assert.Positive(t, perInstance[names[2]])
	for id := range held {
		assert.GreaterOrEqual(t, seen[byID[id]], 1, "%s (leased by the killed instance) arrived", id)
	}
	var left int
	require.NoError(t, db.QueryRow(context.Background(), `SELECT count(*) FROM smtp_queue_messages`).Scan(&left))
	assert.Zero(t, left, "the queue is empty")
}

// pgE2EStallServer is a small SMTP server (no PIPELINING, no CHUNKING: the
// client sends DATA) for the stale lease test. Its first transaction
// stalls in the middle of the message: after stallAfter bytes it stops
// reading (so that the client's writes block once the socket buffers are
// full) until resume is closed, then reads on to the end of data or of
// the connection. The reply to the end of its second transaction's data
// waits until replySecond is closed. It counts the complete messages (a
// final dot received) by Subject.
type pgE2EStallServer struct {
	ln         net.Listener
	port       int
	stallAfter int

	stalled     chan struct{}
	resume      chan struct{}
	secondData  chan struct{}
	replySecond chan struct{}
	firstDone   chan struct{}

	mu        sync.Mutex
	txns      int
	complete  map[string]int
	firstRead int
	firstEnd  string
	conns     []net.Conn
	wg        sync.WaitGroup
}

func pgE2EStartStallServer(t *testing.T, stallAfter int) *pgE2EStallServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	s := &pgE2EStallServer{ln: ln, port: ln.Addr().(*net.TCPAddr).Port, stallAfter: stallAfter,
		stalled: make(chan struct{}), resume: make(chan struct{}), secondData: make(chan struct{}),
		replySecond: make(chan struct{}), firstDone: make(chan struct{}), complete: map[string]int{}}
	s.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.mu.Lock()
			s.conns = append(s.conns, c)
			s.mu.Unlock()
			s.wg.Go(func() { s.serve(c) })
		}
	})
	t.Cleanup(func() {
		_ = ln.Close()
		pgE2EOnce(s.resume)
		pgE2EOnce(s.replySecond)
		s.mu.Lock()
		for _, c := range s.conns {
			_ = c.Close()
		}
		s.mu.Unlock()
		s.wg.Wait()
	})
	return s
}

// pgE2EOnce closes ch unless it is closed.
func pgE2EOnce(ch chan struct{}) {
	select {
	case <-ch:
	default:
		close(ch)
	}
}

func (s *pgE2EStallServer) serve(c net.Conn) {
	defer c.Close()
	br := bufio.NewReaderSize(c, 4096)
	reply := func(line string) bool {
		_ = c.SetWriteDeadline(time.Now().Add(30 * time.Second))
		_, err := io.WriteString(c, line+"\r\n")
		return err == nil
	}
	if !reply("220 stall.test ESMTP") {
		return
	}
	for {
		_ = c.SetReadDeadline(time.Now().Add(60 * time.Second))
		line, err := br.ReadString('\n')
		if err != nil {
			return
		}
		verb := strings.ToUpper(strings.TrimSpace(line))
		if i := strings.IndexAny(verb, " :"); i >= 0 {
			verb = verb[:i]
		}
		switch verb {
		case "EHLO":
			if !reply("250-stall.test\r\n250-8BITMIME\r\n250 SIZE 100000000") {
				return
			}
		case "HELO", "MAIL", "RCPT", "RSET", "NOOP":
			if !reply("250 2.0.0 ok") {
				return
			}
		case "QUIT":
			reply("221 2.0.0 bye")
			return
		case "DATA":
			s.mu.Lock()
			s.txns++
			n := s.txns
			s.mu.Unlock()
			if !reply("354 go ahead") {
				return
			}
			if !s.data(c, br, n, reply) {
				return
			}
		default:
			if !reply("502 5.5.2 unknown command") {
				return
			}
		}
	}
}

// data reads the message of transaction n; false ends the connection.
func (s *pgE2EStallServer) data(c net.Conn, br *bufio.Reader, n int, reply func(string) bool) bool {
	read, subject, inHeader := 0, "", true
	stalled := false
	end := ""
	for {
		if n == 1 && !stalled && read >= s.stallAfter {
			stalled = true
			pgE2EOnce(s.stalled)
			select {
			case <-s.resume:
			case <-time.After(90 * time.Second):
			}
		}
		if stalled {
			// The client should have given up: what it still sends
			// comes at once, or never.
			_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		} else {
			_ = c.SetReadDeadline(time.Now().Add(20 * time.Second))
		}
		line, err := br.ReadString('\n')
		read += len(line)
		if err != nil {
			end = err.Error()
			break
		}
		if line == ".\r\n" {
			end = "dot"
			break
		}
		if inHeader {
			if v, ok := strings.CutPrefix(line, "Subject: "); ok {
				subject = strings.TrimSpace(v)
			} else if line == "\r\n" {
				inHeader = false
			}
		}
	}
	s.mu.Lock()
	if end == "dot" {
		s.complete[subject]++
	}
	if n == 1 {
		s.firstRead, s.firstEnd = read, end
	}
	s.mu.Unlock()
	if n == 1 {
		defer pgE2EOnce(s.firstDone)
	}
	if end != "dot" {
		return false
	}
	if n == 2 {
		pgE2EOnce(s.secondData)
		select {
		case <-s.replySecond:
		case <-time.After(60 * time.Second):
		}
	}
	return reply("250 2.0.0 accepted")
}

// pgE2EBigMessage is a message of about size bytes whose Subject is its
// marker.
func pgE2EBigMessage(marker string, size int) string {
	line := strings.Repeat("0123456789abcdef", 4) + "0123456789ab\r\n"
	return fmt.Sprintf("From: load@example.org\r\nTo: sink@relay.test\r\nSubject: %s\r\n\r\n%s", marker, strings.Repeat(line, size/len(line)))
}

// TestPgE2EStaleLease pauses an instance (SIGSTOP) in the middle of
// sending a message (the server stopped reading it, so that its writes
// block), past the end of its lease (queue.lease 8s); a second instance
// takes the message over after the lease expired and sends it, and while
// the server holds its reply to the end of data, the first instance is
// resumed (SIGCONT). The first instance's transport stops at once (not a
// byte more of the message: the server never sees its end, even when it
// reads on while the second instance still holds the lease and the
// body), its late result write is refused (the stored message is still
// the second instance's attempt), and the recipient gets the message
// exactly once. Last, the attempt cut by the lost lease says nothing of
// the destination: a connection failure would suspend it for 30 s for
// every instance (the retry rule), yet a new message goes at once.
func TestPgE2EStaleLease(t *testing.T) {
	const size = 16 << 20 // more than the socket buffers hold
	pg := peertest.StartPostgres(t, peertest.PostgresOptions{})
	url := pg.CreateDatabase(t, "stale")
	srv := pgE2EStartStallServer(t, 64<<10)
	const nameA, nameB = "h11-stale-a", "h11-stale-b"
	queueOf := func(name string) string {
		// A connection failure would suspend the destination for 30 s
		// (for all instances: the suspension is shared).
		return pgE2EQueue(url, name, "\t\t\tlease 8s\n\t\t\tretry {\n\t\t\t\tif \"last_error == 'connection'\" 30s\n\t\t\t\telse 1s\n\t\t\t}\n\t\t\tnotify none")
	}
	submitA, submitB := peertest.FreePort(t), peertest.FreePort(t)
	a := startCaddy(t, "Caddyfile", relayConfig("off", srv.port, 5, submitA, queueOf(nameA)))
	pgE2EKeepLogs(t, nameA, a)
	// Registered after startCaddy: runs before its stop.
	t.Cleanup(func() { _ = syscall.Kill(a.pid(), syscall.SIGCONT) })
	db := pgE2EConnect(t, url)

	const marker = "stale-1"
	s, err := dialSubmitter(fmt.Sprintf("127.0.0.1:%d", submitA))
	require.NoError(t, err)
	code, text, err := s.send("load@example.org", []string{"sink@relay.test"}, pgE2EBigMessage(marker, size))
	s.close()
	require.NoError(t, err)
	id, ok := queuedID(code, text)
	require.True(t, ok, "%d %s", code, text)

	// a leases it and sends it; the server stops reading mid-message.
	select {
	case <-srv.stalled:
	case <-time.After(30 * time.Second):
		t.Fatal("the first instance did not start sending the message")
	}
	time.Sleep(300 * time.Millisecond) // its writes fill the buffers and block
	require.NoError(t, syscall.Kill(a.pid(), syscall.SIGSTOP))
	pausedAt := time.Now()
	rowA, ok := pgE2EGet(t, db, id)
	require.True(t, ok)
	require.Equal(t, nameA, rowA.owner, "the first instance holds the lease")
	require.True(t, pausedAt.Before(rowA.until.Add(-time.Second)), "paused while its lease was current (until %v, paused %v)", rowA.until, pausedAt)
	t.Logf("%s paused %v before its lease ends", nameA, rowA.until.Sub(pausedAt).Round(time.Millisecond))

	b := startCaddy(t, "Caddyfile", relayConfig("off", srv.port, 5, submitB, queueOf(nameB)))
	pgE2EKeepLogs(t, nameB, b)
	select {
	case <-srv.secondData:
	case <-time.After(30 * time.Second):
		t.Fatal("the second instance did not take the message over")
	}
	tookOver := time.Now()
	assert.True(t, tookOver.After(rowA.until), "taken over at %v, before the lease's end %v", tookOver, rowA.until)
	rowB, ok := pgE2EGet(t, db, id)
	require.True(t, ok)
	require.Equal(t, nameB, rowB.owner, "the second instance holds the lease")
	require.Equal(t, 2, rowB.attempts)
	t.Logf("%s took the message over %v after the lease's end", nameB, tookOver.Sub(rowA.until).Round(time.Millisecond))

	// Resume a while b waits for the reply to its end of data.
	require.NoError(t, syscall.Kill(a.pid(), syscall.SIGCONT))
	resumedAt := time.Now()
	var outcome []logEntry
	for time.Since(resumedAt) < 2*time.Second && len(outcome) == 0 {
		time.Sleep(50 * time.Millisecond)
		for _, e := range a.queueLog("") {
			if e.str("id") == id && (e.Msg == "deferred" || e.Msg == "delivered" || e.Msg == "failed") {
				outcome = append(outcome, e)
			}
		}
	}
	// Its result was refused: the stored message is still b's attempt.
	rowAfter, ok := pgE2EGet(t, db, id)
	require.True(t, ok)
	assert.Equal(t, nameB, rowAfter.owner, "the lease is still the second instance's")
	assert.Equal(t, 2, rowAfter.attempts, "the first instance's late result did not overwrite the message")
	assert.Zero(t, rowAfter.history, "no attempt result was written over the second instance's lease")

	// The server reads on what a's connection holds, while b's
	// transaction (and its lease, and the message's body) still runs.
	close(srv.resume)
	select {
	case <-srv.firstDone:
	case <-time.After(15 * time.Second):
		t.Fatal("the first connection did not end")
	}
	close(srv.replySecond)
	b.waitQueueLog("delivered", 1, 20*time.Second)
	time.Sleep(2500 * time.Millisecond) // a retry (retry 1s) would come now; the instances sync their destinations

	srv.mu.Lock()
	complete, txns, firstRead, firstEnd := srv.complete[marker], srv.txns, srv.firstRead, srv.firstEnd
	srv.mu.Unlock()
	t.Logf("the first instance's transaction: %d of about %d bytes read, ended by %q; %d transactions in all", firstRead, size, firstEnd, txns)
	for _, e := range outcome {
		t.Logf("%s logged %q %v after SIGCONT: %s", nameA, e.Msg, e.TS.Sub(resumedAt).Round(time.Millisecond), e.str("error"))
	}
	// The refusal is in its log: the renewal after SIGCONT finds the
	// lease taken over ("lease lost: another instance took the message
	// over"); the refused result write itself logs nothing.
	lost := 0
	for _, e := range a.queueLog("") {
		if e.str("id") == id && e.Level == "warn" && strings.Contains(e.Msg, "lease") {
			t.Logf("%s logged %s %q", nameA, e.Level, e.Msg)
			lost++
		}
	}
	assert.Positive(t, lost, "the paused instance logged that its lease was lost")
	assert.Equal(t, 1, complete, "the recipient got the message exactly once")
	assert.NotEqual(t, "dot", firstEnd, "the paused instance sent no more of the message after its lease ended")
	assert.Less(t, firstRead, size)
	assert.Equal(t, 2, txns, "no other attempt")
	for _, e := range a.queueLog("delivered") {
		assert.NotEqual(t, id, e.str("id"), "the paused instance counted a delivery")
	}
	_, ok = pgE2EGet(t, db, id)
	assert.False(t, ok, "the message is done and removed")

	// The attempt cut by the lost lease says nothing of the destination:
	// a new message (which either instance may take) goes at once, not
	// deferred as to a dead destination.
	s, err = dialSubmitter(fmt.Sprintf("127.0.0.1:%d", submitB))
	require.NoError(t, err)
	code, text, err = s.send("load@example.org", []string{"sink@relay.test"}, markedMessage("stale-2"))
	s.close()
	require.NoError(t, err)
	id2, ok := queuedID(code, text)
	require.True(t, ok, "%d %s", code, text)
	var next []logEntry
	for deadline := time.Now().Add(5 * time.Second); len(next) == 0 && time.Now().Before(deadline); {
		time.Sleep(100 * time.Millisecond)
		for _, e := range append(a.queueLog(""), b.queueLog("")...) {
			if e.str("id") == id2 && (e.Msg == "deferred" || e.Msg == "delivered") {
				next = append(next, e)
			}
		}
	}
	if assert.NotEmpty(t, next, "the next message's outcome") {
		assert.Equal(t, "delivered", next[0].Msg, "the next message was not delivered: %s", next[0].str("error"))
	}
}

// TestPgE2EDatabaseDown stops the database for 10 s while one instance
// drains 600 messages to a sink that answers each end of data after a
// second: submissions meanwhile get 451 4.3.0 (none of those messages is
// ever delivered), and succeed again once it is back; the deliveries in
// flight finish and their results are written when it comes back; every
// message accepted arrives, exactly once.
func TestPgE2EDatabaseDown(t *testing.T) {
	const clients, perClient = 4, 150
	const total = clients * perClient
	const destConcurrency = 100
	pg := peertest.StartPostgres(t, peertest.PostgresOptions{})
	url := pg.CreateDatabase(t, "down")
	sink := peertest.StartSink(t, peertest.SinkOptions{Backlog: 256, Flags: []string{"-W", ".:1"}})
	submit := peertest.FreePort(t)
	addr := fmt.Sprintf("127.0.0.1:%d", submit)
	p := startCaddy(t, "Caddyfile", relayConfig("off", sink.Port, destConcurrency, submit, pgE2EQueue(url, "h11-down",
		fmt.Sprintf("\t\t\tretry 1s\n\t\t\tnotify none\n\t\t\tdestination_concurrency %d", destConcurrency))))

	submitted := time.Now()
	ids := submitMany(t, addr, "down", clients, perClient)
	require.Len(t, ids, total)
	t.Logf("%d messages submitted in %v; %d at the sink", total, time.Since(submitted).Round(time.Millisecond), dumpCount(sink))
	deadline := time.Now().Add(60 * time.Second)
	for dumpCount(sink) < 150 {
		require.True(t, time.Now().Before(deadline), "the drain did not start")
		time.Sleep(50 * time.Millisecond)
	}
	// A client connected before the database goes down.
	s, err := dialSubmitter(addr)
	require.NoError(t, err)
	defer func() { s.close() }()
	inflight := establishedTo(p.pid(), sink.Port)
	pgE2EStopPostgres(t, pg)
	stoppedAt := time.Now()
	atStop := dumpCount(sink)
	require.Less(t, atStop, total-150, "stopped in the middle of the drain")

	// While it is down: every submission is refused for now.
	refused := map[string]string{}
	probe := 0
	send := func(marker string) (int, string, time.Duration) {
		began := time.Now()
		code, text, err := s.send("load@example.org", []string{"sink@relay.test"}, markedMessage(marker))
		if err != nil {
			// The connection broke: a new one.
			s.close()
			s, err = dialSubmitter(addr)
			require.NoError(t, err)
			code, text, err = s.send("load@example.org", []string{"sink@relay.test"}, markedMessage(marker))
			require.NoError(t, err)
		}
		return code, text, time.Since(began)
	}
	var slowest time.Duration
	for time.Since(stoppedAt) < 10*time.Second {
		probe++
		marker := fmt.Sprintf("down-probe-%d", probe)
		code, text, took := send(marker)
		slowest = max(slowest, took)
		assert.Equal(t, 451, code, "%s while the database is down: %d %s", marker, code, text)
		assert.True(t, strings.HasPrefix(text, "4.3.0 "), "%s: %d %s", marker, code, text)
		if code/100 == 2 {
			ids[marker] = text
		} else {
			refused[marker] = fmt.Sprintf("%d %s", code, text)
		}
		time.Sleep(400 * time.Millisecond)
	}
	afterOutage := dumpCount(sink)
	pg.Start()
	startedAt := time.Now()
	t.Logf("database down %v: %d submissions refused (%q), slowest reply %v; %d connections to the sink and %d messages there at the stop, %d after",
		startedAt.Sub(stoppedAt).Round(time.Millisecond), len(refused), refused["down-probe-1"], slowest.Round(time.Millisecond), inflight, atStop, afterOutage)
	require.NotEmpty(t, refused)

	// Back: submissions succeed again, soon.
	var backAfter time.Duration
	for {
		probe++
		marker := fmt.Sprintf("down-probe-%d", probe)
		code, text, _ := send(marker)
		if id, ok := queuedID(code, text); ok {
			ids[marker] = id
			backAfter = time.Since(startedAt)
			break
		}
		assert.Equal(t, 451, code, "%s: %d %s", marker, code, text)
		refused[marker] = fmt.Sprintf("%d %s", code, text)
		require.Less(t, time.Since(startedAt), 30*time.Second, "submissions still refused 30 s after the database came back: %d %s", code, text)
		time.Sleep(200 * time.Millisecond)
	}
	t.Logf("submissions accepted again %v after the database came back", backAfter.Round(time.Millisecond))
	for marker, id := range submitMany(t, addr, "after", 2, 25) {
		ids[marker] = id
	}

	msgs := pgE2EWaitArrived(t, ids, 90*time.Second, sink, p)
	t.Logf("all %d arrived %v after the database came back", len(ids), time.Since(startedAt).Round(time.Millisecond))
	seen := countSubjects(msgs)
	for marker := range ids {
		assert.Equal(t, 1, seen[marker], "%s arrived exactly once", marker)
	}
	for marker, why := range refused {
		assert.Zero(t, seen[marker], "%s was refused (%s) yet delivered", marker, why)
	}
	assert.Len(t, msgs, len(ids), "nothing else, nothing twice")
	var errs int
	for _, e := range p.queueLog("") {
		if e.Msg == "saving results failed: these recipients may be tried again" || e.Msg == "releasing a message" {
			errs++
		}
	}
	assert.Zero(t, errs, "every result was written when the database came back")
}

// TestPgE2ESlowReplyKeepsLease sends one message to a sink that answers
// the end of data after 4 s, with queue.lease 3s: the instance renews its
// lease while the transaction runs, so the transaction must be allowed to
// run past the lease's first end (the data phase's own timeout is 10m).
// The message is delivered at its first attempt, exactly once.
func TestPgE2ESlowReplyKeepsLease(t *testing.T) {
	pg := peertest.StartPostgres(t, peertest.PostgresOptions{})
	url := pg.CreateDatabase(t, "slow")
	sink := peertest.StartSink(t, peertest.SinkOptions{Flags: []string{"-W", ".:4"}})
	submit := peertest.FreePort(t)
	p := startCaddy(t, "Caddyfile", relayConfig("off", sink.Port, 5, submit, pgE2EQueue(url, "h11-slow",
		"\t\t\tlease 3s\n\t\t\tretry 1s\n\t\t\tnotify none")))
	pgE2EKeepLogs(t, "h11-slow", p)
	ids := submitMany(t, fmt.Sprintf("127.0.0.1:%d", submit), "slow", 1, 1)
	require.Len(t, ids, 1)

	deadline := time.Now().Add(10 * time.Second)
	for len(p.queueLog("delivered")) == 0 && time.Now().Before(deadline) {
		time.Sleep(200 * time.Millisecond)
	}
	time.Sleep(time.Second)
	for _, e := range p.queueLog("deferred") {
		t.Logf("deferred at attempt %d after %v: %s", e.int("attempts"), e.str("duration"), e.str("error"))
	}
	assert.Equal(t, 1, len(sink.Messages(t)), "sent once")
	delivered := p.queueLog("delivered")
	require.Len(t, delivered, 1, "delivered")
	assert.Equal(t, 1, delivered[0].int("attempts"), "at the first attempt")
}
