// Package pgstore is the queue's store on PostgreSQL (github.com/jackc/pgx
// v5), for several Caddy instances sharing one queue: every instance
// leases due messages from the same tables, and a lease is fenced, so that
// an instance that lost one (it was paused, or cut off, past its expiry,
// and another took the message over) can never overwrite the new holder's
// results.
//
// # Schema
//
// The app creates and migrates it when it starts, idempotently, under an
// advisory lock (so that instances starting together do it once), and
// records its version in smtp_queue_schema:
//
//	smtp_queue_schema(version int)
//	smtp_queue_messages(id text primary key, priority int, next_attempt
//	    timestamptz, held bool, state text, arrived timestamptz, size
//	    bigint, lease_token text, lease_until timestamptz, lease_owner
//	    text, pending_action text, data bytea)
//	    -- index (priority desc, next_attempt) where next_attempt is not
//	    -- null and not held: the due index
//	smtp_queue_bodies(id text, seq int, chunk bytea, primary key (id, seq))
//	smtp_queue_holds(id text primary key, data bytea)
//	smtp_queue_destinations(name text primary key, suspended_until
//	    timestamptz, last_error text)
//	smtp_queue_slots(destination text, instance text, want int, slots
//	    int, until timestamptz, primary key (destination, instance))
//
// data is the message as JSON (queue.Message); the columns beside it are
// what the scheduler selects on. A body is stored in chunks of 256 KiB,
// bytea rows written in the same transaction as the message's row (large
// objects were measured too: see the package's benchmark in
// BENCHMARKS.md; bytea chunks are as fast, need no unlinking, and go with
// the row's transaction and its removal).
//
// # Leases
//
// Lease takes due messages with SELECT ... FOR UPDATE SKIP LOCKED (so that
// instances leasing at once take different messages) inside one UPDATE
// that sets a fresh lease token, its owner and its expiry and returns the
// messages, with their bodies when small; then it records each attempt
// under its token, in one batch: two round trips. (A crash between the two
// leaves the messages leased but not attempted: another instance takes
// them when the lease ends, with no attempt counted, as none was made.)
// A release that adds no notice is one statement. Every later write about
// the attempt carries the
// token (WHERE lease_token = $token) and is refused (queue.ErrStaleLease)
// when no row matches: the lease expired and another instance took the
// message, or it was removed. A lease that expires (its instance died) is
// taken over by another instance once the message is due again.
//
// # Group commit
//
// Messages of up to one chunk that arrive together are written in one
// transaction, their statements sent as one batch (one implicit
// transaction: one round trip and one commit, one WAL flush, for the
// group). Measured, when it took three round trips (BenchmarkAdd: 1 KiB messages
// from 40 writers, fsync on, on a 2-core machine): 2,650 messages a second
// with a transaction per message, 17,700 with group commit. A statement
// refused in a group (a duplicate ID) makes each of its messages commit
// alone, so that only the bad one fails.
//
// # Wake-ups
//
// Every change that makes something due for any instance (a new message,
// a notice, an admin action) sends NOTIFY smtp_queue; a release that adds
// no notice does not, as the releasing instance itself looks again. Each
// instance LISTENs on its own connection, so that another instance's
// message is seen at once, not at the next poll.
package pgstore

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap"

	"github.com/seed7b014b84/caddy-smtp/delivery"
	"github.com/seed7b014b84/caddy-smtp/queue"
)

// chunkSize is the size of a body chunk.
const chunkSize = 256 << 10

// schemaVersion is the version of the schema this code writes.
const schemaVersion = 1

// channel is the NOTIFY channel of the queue's wake-ups.
const channel = "smtp_queue"

// Store is the PostgreSQL queue store.
type Store struct {
	pool     *pgxpool.Pool
	instance string
	log      *zap.Logger

	wake   chan struct{}
	cancel context.CancelFunc
	done   chan struct{}

	group group

	mu     sync.Mutex
	counts struct {
		at              time.Time
		messages, bytes int64
	}
}

// Open connects to the database at url, creates or migrates the schema,
// and starts listening for wake-ups. instance names this instance in its
// leases (for the admin API: which instance holds a message).
func Open(ctx context.Context, url, instance string, log *zap.Logger) (*Store, error) {
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("url: %w", err)
	}
	if cfg.MaxConns < 8 {
		cfg.MaxConns = 8
	}
	cfg.ConnConfig.ConnectTimeout = 10 * time.Second
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connecting: %w", err)
	}
	if log == nil {
		log = zap.NewNop()
	}
	s := &Store{pool: pool, instance: instance, log: log, wake: make(chan struct{}, 1), done: make(chan struct{})}
	mctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if err := s.migrate(mctx); err != nil {
		pool.Close()
		return nil, err
	}
	lctx, lcancel := context.WithCancel(context.Background())
	s.cancel = lcancel
	s.startGroup(lctx)
	go s.listen(lctx)
	return s, nil
}

// migrate creates the schema, or brings it to this version, under an
// advisory lock.
func (s *Store) migrate(ctx context.Context) error {
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return unavailable(fmt.Errorf("connecting: %w", err))
	}
	defer conn.Release()
	// The lock's key: "smtpq" as a number.
	const lockKey = 0x736d747071
	if _, err := conn.Exec(ctx, `SELECT pg_advisory_lock($1)`, lockKey); err != nil {
		return fmt.Errorf("locking for the schema: %w", err)
	}
	defer func() { _, _ = conn.Exec(context.Background(), `SELECT pg_advisory_unlock($1)`, lockKey) }()
	if _, err := conn.Exec(ctx, `CREATE TABLE IF NOT EXISTS smtp_queue_schema (version int NOT NULL)`); err != nil {
		return fmt.Errorf("schema: %w", err)
	}
	var version int
	err = conn.QueryRow(ctx, `SELECT version FROM smtp_queue_schema`).Scan(&version)
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return fmt.Errorf("schema version: %w", err)
	}
	if version > schemaVersion {
		return fmt.Errorf("the queue's schema is version %d, newer than this build's %d: it was written by a newer version", version, schemaVersion)
	}
	if version == schemaVersion {
		return nil
	}
	stmts := []string{
		`CREATE TABLE IF NOT EXISTS smtp_queue_messages (
			id text PRIMARY KEY,
			priority int NOT NULL DEFAULT 0,
			next_attempt timestamptz,
			held boolean NOT NULL DEFAULT false,
			state text NOT NULL,
			arrived timestamptz NOT NULL,
			size bigint NOT NULL,
			lease_token text,
			lease_until timestamptz,
			lease_owner text,
			pending_action text,
			error text,
			data bytea NOT NULL
		)`,
		`CREATE INDEX IF NOT EXISTS smtp_queue_due ON smtp_queue_messages (priority DESC, next_attempt) WHERE next_attempt IS NOT NULL AND NOT held`,
		`CREATE INDEX IF NOT EXISTS smtp_queue_state ON smtp_queue_messages (state)`,
		`CREATE TABLE IF NOT EXISTS smtp_queue_bodies (id text NOT NULL, seq int NOT NULL, chunk bytea NOT NULL, PRIMARY KEY (id, seq))`,
		`CREATE TABLE IF NOT EXISTS smtp_queue_holds (id text PRIMARY KEY, data bytea NOT NULL)`,
		`CREATE TABLE IF NOT EXISTS smtp_queue_destinations (name text PRIMARY KEY, suspended_until timestamptz, last_error text)`,
		`CREATE TABLE IF NOT EXISTS smtp_queue_slots (destination text NOT NULL, instance text NOT NULL, want int NOT NULL,
			slots int NOT NULL, until timestamptz NOT NULL, PRIMARY KEY (destination, instance))`,
		`DELETE FROM smtp_queue_schema`,
		fmt.Sprintf(`INSERT INTO smtp_queue_schema (version) VALUES (%d)`, schemaVersion),
	}
	tx, err := conn.Begin(ctx)
	if err != nil {
		return err
	}
	defer func() { _ = tx.Rollback(context.Background()) }()
	for _, st := range stmts {
		if _, err := tx.Exec(ctx, st); err != nil {
			return fmt.Errorf("schema: %w", err)
		}
	}
	return tx.Commit(ctx)
}

// listen LISTENs for wake-ups on a connection of its own, reconnecting
// when it is lost, until the store is closed.
func (s *Store) listen(ctx context.Context) {
	defer close(s.done)
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		err := s.listenOnce(ctx)
		if ctx.Err() != nil {
			return
		}
		s.log.Warn("queue wake-ups: listening failed; trying again", zap.Error(err), zap.Duration("in", backoff))
		s.signal() // something may have changed meanwhile
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

func (s *Store) listenOnce(ctx context.Context) error {
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return err
	}
	defer conn.Release()
	if _, err := conn.Exec(ctx, "LISTEN "+channel); err != nil {
		return err
	}
	s.signal()
	for {
		if _, err := conn.Conn().WaitForNotification(ctx); err != nil {
			conn.Conn().Close(context.Background()) //nolint:errcheck // a broken connection is dropped
			return err
		}
		s.signal()
	}
}

func (s *Store) signal() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// Wake receives when another instance changed the queue.
func (s *Store) Wake() <-chan struct{} { return s.wake }

// notify is the statement that wakes the other instances, sent in the
// transaction of a change.
const notify = `SELECT pg_notify('` + channel + `', '')`

// unavailable marks an error of the database's (down, unreachable) as the
// queue being unavailable: new messages are answered 451/503.
func unavailable(err error) error {
	if err == nil {
		return nil
	}
	var pge *pgconn.PgError
	if errors.As(err, &pge) {
		// A SQL error: the database answered.
		if pge.Code == "53100" { // disk_full
			return fmt.Errorf("%w: %v", delivery.ErrQueueFull, err)
		}
		return err
	}
	if errors.Is(err, queue.ErrStaleLease) || errors.Is(err, queue.ErrNotFound) || errors.Is(err, delivery.ErrQueueFull) {
		return err
	}
	if errors.Is(err, context.Canceled) {
		return err
	}
	return fmt.Errorf("%w: %v", delivery.ErrQueueUnavailable, err)
}

// Add stores a new message and its body, and returns once they are
// committed: a message of one chunk with the others arriving at the same
// time (group commit, see group.go), a larger one in a transaction of
// its own.
func (s *Store) Add(ctx context.Context, m *queue.Message, body io.Reader) error {
	first, more, err := readSmall(body)
	if err != nil {
		return err
	}
	if !more {
		return s.addSmall(m, first)
	}
	return s.addLarge(ctx, m, io.MultiReader(bytes.NewReader(first), body))
}

// addLarge stores a message of more than one chunk in a transaction of
// its own, streaming its body.
func (s *Store) addLarge(ctx context.Context, m *queue.Message, body io.Reader) error {
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		// Read (and drop) nothing: the caller answers 451.
		return unavailable(err)
	}
	defer func() { _ = tx.Rollback(context.Background()) }()
	size, err := writeBody(ctx, tx, m.ID, body)
	if err != nil {
		return err
	}
	m.Size = size
	if err := insertMessage(ctx, tx, m); err != nil {
		return unavailable(err)
	}
	if _, err := tx.Exec(ctx, notify); err != nil {
		return unavailable(err)
	}
	if err := tx.Commit(ctx); err != nil {
		return unavailable(err)
	}
	s.added(1, size)
	return nil
}

// writeBody streams body into chunk rows of message id.
func writeBody(ctx context.Context, tx pgx.Tx, id string, body io.Reader) (int64, error) {
	buf := make([]byte, chunkSize)
	var size int64
	for seq := 0; ; seq++ {
		n, err := io.ReadFull(body, buf)
		if n > 0 || seq == 0 {
			if _, err := tx.Exec(ctx, `INSERT INTO smtp_queue_bodies (id, seq, chunk) VALUES ($1, $2, $3)`, id, seq, buf[:n]); err != nil {
				return 0, unavailable(err)
			}
			size += int64(n)
		}
		switch {
		case err == io.EOF || err == io.ErrUnexpectedEOF:
			return size, nil
		case err != nil:
			return 0, fmt.Errorf("reading the message: %w", err)
		}
	}
}

func insertMessage(ctx context.Context, tx pgx.Tx, m *queue.Message) error {
	data, err := json.Marshal(m)
	if err != nil {
		return err
	}
	_, err = tx.Exec(ctx, `INSERT INTO smtp_queue_messages (id, priority, next_attempt, held, state, arrived, size, data)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8)`,
		m.ID, m.Priority, nullTime(m.NextAttempt), m.Held, string(m.State()), m.Arrived, m.Size, data)
	return err
}

// Body opens a message's body: its chunks are read as they are needed.
func (s *Store) Body(ctx context.Context, id string) (queue.Body, error) {
	rows, err := s.pool.Query(ctx, `SELECT seq, length(chunk) FROM smtp_queue_bodies WHERE id = $1 ORDER BY seq`, id)
	if err != nil {
		return nil, unavailable(err)
	}
	var sizes []int64
	for rows.Next() {
		var seq int
		var n int64
		if err := rows.Scan(&seq, &n); err != nil {
			rows.Close()
			return nil, err
		}
		if seq != len(sizes) {
			rows.Close()
			return nil, fmt.Errorf("%w: the body of %s lacks chunk %d", queue.ErrCorrupt, id, len(sizes))
		}
		sizes = append(sizes, n)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, unavailable(err)
	}
	if len(sizes) == 0 {
		return nil, fmt.Errorf("%s: %w", id, queue.ErrNotFound)
	}
	b := &body{s: s, id: id, sizes: sizes}
	for _, n := range sizes {
		b.size += n
	}
	return b, nil
}

// body reads a message's chunks as ReadAt asks for them, keeping the last
// one read.
type body struct {
	s     *Store
	id    string
	sizes []int64
	size  int64
	mu    sync.Mutex
	seq   int
	chunk []byte
}

func (b *body) Size() int64  { return b.size }
func (b *body) Close() error { return nil }

func (b *body) ReadAt(p []byte, off int64) (int, error) {
	if off >= b.size {
		return 0, io.EOF
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	n := 0
	for n < len(p) && off < b.size {
		seq := int(off / chunkSize)
		if b.chunk == nil || b.seq != seq {
			var chunk []byte
			err := b.s.pool.QueryRow(context.Background(), `SELECT chunk FROM smtp_queue_bodies WHERE id = $1 AND seq = $2`,
				b.id, seq).Scan(&chunk)
			if err != nil {
				return n, unavailable(fmt.Errorf("reading the body of %s: %w", b.id, err))
			}
			b.chunk, b.seq = chunk, seq
		}
		k := copy(p[n:], b.chunk[off-int64(seq)*chunkSize:])
		n += k
		off += int64(k)
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// row is a message as read.
type row struct {
	id      string
	next    *time.Time
	held    bool
	errText *string
	data    []byte
	prio    int
}

const rowColumns = `id, next_attempt, held, error, data, priority`

func scanRow(sc pgx.Row) (*row, error) {
	r := new(row)
	err := sc.Scan(&r.id, &r.next, &r.held, &r.errText, &r.data, &r.prio)
	return r, err
}

func (r *row) message() (*queue.Message, error) {
	m := new(queue.Message)
	if err := json.Unmarshal(r.data, m); err != nil || m.ID != r.id {
		if err == nil {
			err = fmt.Errorf("the record names message %q", m.ID)
		}
		return &queue.Message{ID: r.id, Held: true, HoldReason: "corrupt record: " + err.Error(), Priority: r.prio},
			fmt.Errorf("%w: %s: %v", queue.ErrCorrupt, r.id, err)
	}
	m.Held = r.held
	m.NextAttempt = time.Time{}
	if r.next != nil {
		m.NextAttempt = *r.next
	}
	return m, nil
}

// Lease leases due messages, SKIP LOCKED.
func (s *Store) Lease(ctx context.Context, now time.Time, limit int, leaseFor time.Duration, attempt func(*queue.Message)) ([]*queue.Lease, error) {
	// Two round trips. The first statement takes the leases (each row
	// locked, skipped when another instance holds it, and given a fresh
	// token and its expiry), and reads the messages with their bodies when
	// small. The second, a batch in one implicit transaction, writes each
	// one's attempt mark under its token. A crash between the two leaves
	// messages leased but not attempted: another instance takes them when
	// the lease ends, without an attempt counted, as none was made.
	until := now.Add(leaseFor)
	rows, err := s.pool.Query(ctx, `UPDATE smtp_queue_messages m SET lease_token = gen_random_uuid()::text, lease_until = $3, lease_owner = $4
		FROM (SELECT id FROM smtp_queue_messages
			WHERE NOT held AND next_attempt IS NOT NULL AND next_attempt <= $1 AND (lease_until IS NULL OR lease_until < $1)
			ORDER BY priority DESC, next_attempt
			LIMIT $2
			FOR UPDATE SKIP LOCKED) d
		WHERE m.id = d.id
		RETURNING m.id, m.next_attempt, m.held, m.error, m.data, m.priority, m.lease_token,
			(SELECT b.chunk FROM smtp_queue_bodies b WHERE b.id = m.id AND b.seq = 0 AND m.size <= `+leaseBodyMax+`)`,
		now, limit, until, s.instance)
	if err != nil {
		return nil, unavailable(err)
	}
	type taken struct {
		r     *row
		token string
		body  []byte
	}
	var found []taken
	for rows.Next() {
		var t taken
		t.r = new(row)
		if err := rows.Scan(&t.r.id, &t.r.next, &t.r.held, &t.r.errText, &t.r.data, &t.r.prio, &t.token, &t.body); err != nil {
			rows.Close()
			return nil, unavailable(err)
		}
		found = append(found, t)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, unavailable(err)
	}
	// RETURNING keeps no order: highest priority first, then earliest due.
	sort.Slice(found, func(a, b int) bool {
		ra, rb := found[a].r, found[b].r
		if ra.prio != rb.prio {
			return ra.prio > rb.prio
		}
		if ra.next != nil && rb.next != nil && !ra.next.Equal(*rb.next) {
			return ra.next.Before(*rb.next)
		}
		return ra.id < rb.id
	})
	var leases []*queue.Lease
	batch := &pgx.Batch{}
	for _, t := range found {
		r := t.r
		m, err := r.message()
		if err != nil {
			batch.Queue(`UPDATE smtp_queue_messages SET held = true, state = 'held', error = $3,
				lease_token = NULL, lease_until = NULL, lease_owner = NULL WHERE id = $1 AND lease_token = $2`, r.id, t.token, err.Error())
			continue
		}
		attempt(m)
		data, err := json.Marshal(m)
		if err != nil {
			return nil, err
		}
		batch.Queue(`UPDATE smtp_queue_messages SET data = $3, next_attempt = $4, state = $5 WHERE id = $1 AND lease_token = $2`,
			m.ID, t.token, data, nullTime(m.NextAttempt), string(m.State()))
		leases = append(leases, &queue.Lease{Message: m, Token: t.token, Until: until, Body: t.body})
	}
	if batch.Len() > 0 {
		if err := s.pool.SendBatch(ctx, batch).Close(); err != nil {
			return nil, unavailable(err)
		}
	}
	return leases, nil
}

// leaseBodyMax is the largest body Lease reads with the message (bytes):
// at most that much per leased message stays in memory for the attempt.
const leaseBodyMax = "8192"

func newToken() string {
	b := make([]byte, 12)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// Renew extends leases; those no longer this instance's come back stale.
func (s *Store) Renew(ctx context.Context, leases []*queue.Lease, until time.Time) ([]*queue.Lease, error) {
	ids := make([]string, len(leases))
	tokens := make([]string, len(leases))
	for i, l := range leases {
		ids[i], tokens[i] = l.Message.ID, l.Token
	}
	rows, err := s.pool.Query(ctx, `UPDATE smtp_queue_messages m SET lease_until = $3
		FROM unnest($1::text[], $2::text[]) AS l(id, token)
		WHERE m.id = l.id AND m.lease_token = l.token RETURNING m.lease_token`, ids, tokens, until)
	if err != nil {
		return nil, unavailable(err)
	}
	kept := map[string]bool{}
	for rows.Next() {
		var token string
		if err := rows.Scan(&token); err != nil {
			rows.Close()
			return nil, unavailable(err)
		}
		kept[token] = true
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, unavailable(err)
	}
	var stale []*queue.Lease
	for _, l := range leases {
		if kept[l.Token] {
			l.Until = until
		} else {
			stale = append(stale, l)
		}
	}
	return stale, nil
}

// Save writes a leased message's results, fenced by its lease token.
func (s *Store) Save(ctx context.Context, l *queue.Lease) error {
	data, err := json.Marshal(l.Message)
	if err != nil {
		return err
	}
	tag, err := s.pool.Exec(ctx, `UPDATE smtp_queue_messages SET data = $3, state = $4 WHERE id = $1 AND lease_token = $2`,
		l.Message.ID, l.Token, data, string(l.Message.State()))
	if err != nil {
		return unavailable(err)
	}
	if tag.RowsAffected() == 0 {
		return queue.ErrStaleLease
	}
	return nil
}

// Release ends a lease, fenced by its token.
func (s *Store) Release(ctx context.Context, l *queue.Lease, notices []queue.Notice) error {
	m := l.Message
	if len(notices) == 0 {
		return s.releaseOne(ctx, l)
	}
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return unavailable(err)
	}
	defer func() { _ = tx.Rollback(context.Background()) }()
	if m.Done() || l.Remove {
		var size int64
		err := tx.QueryRow(ctx, `DELETE FROM smtp_queue_messages WHERE id = $1 AND lease_token = $2 RETURNING size`, m.ID, l.Token).Scan(&size)
		if errors.Is(err, pgx.ErrNoRows) {
			return queue.ErrStaleLease
		}
		if err != nil {
			return unavailable(err)
		}
		if _, err := tx.Exec(ctx, `DELETE FROM smtp_queue_bodies WHERE id = $1`, m.ID); err != nil {
			return unavailable(err)
		}
	} else {
		data, err := json.Marshal(m)
		if err != nil {
			return err
		}
		tag, err := tx.Exec(ctx, `UPDATE smtp_queue_messages SET data = $3, next_attempt = $4, held = $5, state = $6,
			lease_token = NULL, lease_until = NULL, lease_owner = NULL WHERE id = $1 AND lease_token = $2`,
			m.ID, l.Token, data, nullTime(m.NextAttempt), m.Held, string(m.State()))
		if err != nil {
			return unavailable(err)
		}
		if tag.RowsAffected() == 0 {
			return queue.ErrStaleLease
		}
	}
	added, bytes, err := addNotices(ctx, tx, notices)
	if err != nil {
		return err
	}
	if _, err := tx.Exec(ctx, notify); err != nil {
		return unavailable(err)
	}
	if err := tx.Commit(ctx); err != nil {
		return unavailable(err)
	}
	s.added(added, bytes)
	return nil
}

// releaseOne releases a lease that adds no notice (most releases) in one
// statement, so one round trip to the database: the removal of the message
// and of its body, or its update, all or nothing as a statement is. It
// wakes no other instance: nothing it writes is due before this
// instance's own next look (it sets its timer by NextDue after every
// release), and with several instances a NOTIFY per delivered message
// woke every other one for nothing, thousands of times a second.
func (s *Store) releaseOne(ctx context.Context, l *queue.Lease) error {
	m := l.Message
	var n int64
	var err error
	if m.Done() || l.Remove {
		err = s.pool.QueryRow(ctx, `WITH m AS (DELETE FROM smtp_queue_messages WHERE id = $1 AND lease_token = $2 RETURNING id),
			b AS (DELETE FROM smtp_queue_bodies WHERE id IN (SELECT id FROM m))
			SELECT count(*) FROM m`, m.ID, l.Token).Scan(&n)
	} else {
		data, merr := json.Marshal(m)
		if merr != nil {
			return merr
		}
		err = s.pool.QueryRow(ctx, `WITH u AS (UPDATE smtp_queue_messages SET data = $3, next_attempt = $4, held = $5, state = $6,
			lease_token = NULL, lease_until = NULL, lease_owner = NULL WHERE id = $1 AND lease_token = $2 RETURNING 1)
			SELECT count(*) FROM u`,
			m.ID, l.Token, data, nullTime(m.NextAttempt), m.Held, string(m.State())).Scan(&n)
	}
	if err != nil {
		return unavailable(err)
	}
	if n == 0 {
		return queue.ErrStaleLease
	}
	return nil
}

func addNotices(ctx context.Context, tx pgx.Tx, notices []queue.Notice) (int64, int64, error) {
	var n, total int64
	for _, no := range notices {
		size, err := writeBody(ctx, tx, no.Message.ID, no.Body)
		if err != nil {
			return 0, 0, err
		}
		no.Message.Size = size
		if err := insertMessage(ctx, tx, no.Message); err != nil {
			return 0, 0, unavailable(err)
		}
		n++
		total += size
	}
	return n, total, nil
}

// NextDue returns when the next message that no instance holds is due.
func (s *Store) NextDue(ctx context.Context) (time.Time, bool, error) {
	var next *time.Time
	err := s.pool.QueryRow(ctx, `SELECT min(greatest(next_attempt, coalesce(lease_until, next_attempt))) FROM smtp_queue_messages
		WHERE NOT held AND next_attempt IS NOT NULL`).Scan(&next)
	if err != nil {
		return time.Time{}, false, unavailable(err)
	}
	if next == nil {
		return time.Time{}, false, nil
	}
	return *next, true, nil
}

// Get returns a message.
func (s *Store) Get(ctx context.Context, id string) (*queue.Message, error) {
	r, err := scanRow(s.pool.QueryRow(ctx, `SELECT `+rowColumns+` FROM smtp_queue_messages WHERE id = $1`, id))
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("%s: %w", id, queue.ErrNotFound)
	}
	if err != nil {
		return nil, unavailable(err)
	}
	m, err := r.message()
	if err != nil {
		return m, nil
	}
	if r.errText != nil {
		m.HoldReason = *r.errText
	}
	return m, nil
}

const listPage = 500

// List returns matching messages in ID order.
func (s *Store) List(ctx context.Context, f *queue.Filter, limit int, cursor string) ([]*queue.Message, string, error) {
	var out []*queue.Message
	after := cursor
	for {
		rows, err := s.pool.Query(ctx, `SELECT `+rowColumns+` FROM smtp_queue_messages WHERE id > $1 ORDER BY id LIMIT $2`, after, listPage)
		if err != nil {
			return nil, "", unavailable(err)
		}
		n := 0
		var page []*queue.Message
		for rows.Next() {
			r, err := scanRow(rows)
			if err != nil {
				rows.Close()
				return nil, "", unavailable(err)
			}
			n++
			after = r.id
			m, _ := r.message()
			if r.errText != nil && m.HoldReason == "" {
				m.HoldReason = *r.errText
			}
			page = append(page, m)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, "", unavailable(err)
		}
		for _, m := range page {
			if f.Match(m) {
				out = append(out, m)
				if len(out) == limit {
					return out, m.ID, nil
				}
			}
		}
		if n < listPage {
			return out, "", nil
		}
	}
}

// Modify changes the matching messages that no instance holds.
func (s *Store) Modify(ctx context.Context, f *queue.Filter, fn func(*queue.Message) queue.Change) (int, []string, error) {
	return queue.ModifyEach(ctx, s, f, listPage, func(m *queue.Message) (bool, error) {
		return s.modify1(ctx, m.ID, f, fn)
	})
}

// modify1 changes one message, locked, unless it is leased.
func (s *Store) modify1(ctx context.Context, id string, f *queue.Filter, fn func(*queue.Message) queue.Change) (bool, error) {
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return false, unavailable(err)
	}
	defer func() { _ = tx.Rollback(context.Background()) }()
	var leaseUntil *time.Time
	r := new(row)
	err = tx.QueryRow(ctx, `SELECT `+rowColumns+`, lease_until FROM smtp_queue_messages WHERE id = $1 FOR UPDATE`, id).
		Scan(&r.id, &r.next, &r.held, &r.errText, &r.data, &r.prio, &leaseUntil)
	if errors.Is(err, pgx.ErrNoRows) {
		return false, nil
	}
	if err != nil {
		return false, unavailable(err)
	}
	if leaseUntil != nil && leaseUntil.After(time.Now()) {
		return false, queue.ErrStaleLease
	}
	m, _ := r.message()
	if !f.Match(m) {
		return false, nil
	}
	ch := fn(m)
	if !ch.Write && !ch.Remove && len(ch.Notices) == 0 {
		return false, nil
	}
	var removed int64 = -1
	switch {
	case ch.Remove:
		if err := tx.QueryRow(ctx, `DELETE FROM smtp_queue_messages WHERE id = $1 RETURNING size`, id).Scan(&removed); err != nil {
			return false, unavailable(err)
		}
		if _, err := tx.Exec(ctx, `DELETE FROM smtp_queue_bodies WHERE id = $1`, id); err != nil {
			return false, unavailable(err)
		}
	case ch.Write:
		data, err := json.Marshal(m)
		if err != nil {
			return false, err
		}
		if _, err := tx.Exec(ctx, `UPDATE smtp_queue_messages SET data = $2, next_attempt = $3, held = $4, state = $5, error = NULL,
			lease_token = NULL, lease_until = NULL, lease_owner = NULL WHERE id = $1`,
			id, data, nullTime(m.NextAttempt), m.Held, string(m.State())); err != nil {
			return false, unavailable(err)
		}
	}
	added, bytes, err := addNotices(ctx, tx, ch.Notices)
	if err != nil {
		return false, err
	}
	if _, err := tx.Exec(ctx, notify); err != nil {
		return false, unavailable(err)
	}
	if err := tx.Commit(ctx); err != nil {
		return false, unavailable(err)
	}
	s.added(added, bytes)
	if removed >= 0 {
		s.added(-1, -removed)
	}
	return true, nil
}

// Stats returns the counts.
func (s *Store) Stats(ctx context.Context) (queue.Stats, error) {
	st := queue.Stats{ByState: map[queue.State]int64{}}
	rows, err := s.pool.Query(ctx, `SELECT state, count(*), coalesce(sum(size), 0), min(arrived) FROM smtp_queue_messages GROUP BY state`)
	if err != nil {
		return st, unavailable(err)
	}
	defer rows.Close()
	for rows.Next() {
		var state string
		var n, size int64
		var oldest time.Time
		if err := rows.Scan(&state, &n, &size, &oldest); err != nil {
			return st, unavailable(err)
		}
		st.ByState[queue.State(state)] = n
		st.Messages += n
		st.Bytes += size
		if st.Oldest.IsZero() || oldest.Before(st.Oldest) {
			st.Oldest = oldest
		}
	}
	if err := rows.Err(); err != nil {
		return st, unavailable(err)
	}
	s.mu.Lock()
	s.counts.at, s.counts.messages, s.counts.bytes = time.Now(), st.Messages, st.Bytes
	s.mu.Unlock()
	return st, nil
}

// countsMaxAge is how long the counts used for the quotas may be old: the
// queue is shared, so they come from the database, at most this often.
const countsMaxAge = 2 * time.Second

// Counts returns the message count and total size (for the quotas), read
// from the database at most every countsMaxAge and kept up to date with
// this instance's own changes in between.
func (s *Store) Counts() (messages, bytes int64) {
	s.mu.Lock()
	fresh := time.Since(s.counts.at) < countsMaxAge
	messages, bytes = s.counts.messages, s.counts.bytes
	s.mu.Unlock()
	if fresh {
		return messages, bytes
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var n, b int64
	if err := s.pool.QueryRow(ctx, `SELECT count(*), coalesce(sum(size), 0) FROM smtp_queue_messages`).Scan(&n, &b); err != nil {
		return messages, bytes
	}
	s.mu.Lock()
	s.counts.at, s.counts.messages, s.counts.bytes = time.Now(), n, b
	s.mu.Unlock()
	return n, b
}

func (s *Store) added(n, size int64) {
	s.mu.Lock()
	s.counts.messages += n
	s.counts.bytes += size
	s.mu.Unlock()
}

// Holds returns the hold rules.
func (s *Store) Holds(ctx context.Context) ([]queue.HoldRule, error) {
	rows, err := s.pool.Query(ctx, `SELECT data FROM smtp_queue_holds ORDER BY id`)
	if err != nil {
		return nil, unavailable(err)
	}
	defer rows.Close()
	var out []queue.HoldRule
	for rows.Next() {
		var data []byte
		if err := rows.Scan(&data); err != nil {
			return nil, unavailable(err)
		}
		var h queue.HoldRule
		if err := json.NewDecoder(bytes.NewReader(data)).Decode(&h); err != nil {
			return nil, fmt.Errorf("%w: a hold rule: %v", queue.ErrCorrupt, err)
		}
		out = append(out, h)
	}
	return out, unavailable(rows.Err())
}

// PutHold adds or replaces a hold rule.
func (s *Store) PutHold(ctx context.Context, h queue.HoldRule) error {
	data, err := json.Marshal(h)
	if err != nil {
		return err
	}
	_, err = s.pool.Exec(ctx, `INSERT INTO smtp_queue_holds (id, data) VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET data = excluded.data`, h.ID, data)
	return unavailable(err)
}

// DeleteHold removes a hold rule.
func (s *Store) DeleteHold(ctx context.Context, id string) (bool, error) {
	tag, err := s.pool.Exec(ctx, `DELETE FROM smtp_queue_holds WHERE id = $1`, id)
	if err != nil {
		return false, unavailable(err)
	}
	return tag.RowsAffected() > 0, nil
}

// Close stops listening and closes the connections.
func (s *Store) Close() error {
	s.cancel()
	<-s.done
	s.stopGroup()
	s.pool.Close()
	return nil
}

func nullTime(t time.Time) any {
	if t.IsZero() {
		return nil
	}
	return t
}

// Interface guards
var (
	_ queue.Store   = (*Store)(nil)
	_ queue.Waker   = (*Store)(nil)
	_ queue.Counter = (*Store)(nil)
)
