package pgstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/seed7b014b84/caddy-smtp/delivery"
	"github.com/seed7b014b84/caddy-smtp/queue"
)

// Group commit: a message whose body fits in one chunk (most of them) is
// read into memory and handed to a committer, which writes every message
// waiting at that moment in one transaction, its statements pipelined in
// one batch: one commit, so one WAL flush, and three round trips for the
// whole group instead of five for each message. While one group commits,
// the next gathers, so the groups grow with the load and a lone message
// waits for nothing. A larger message streams into a transaction of its
// own.
const (
	// groupMessages and groupBytes bound a group.
	groupMessages = 256
	groupBytes    = 16 << 20
	// committers is how many groups may be in flight at once.
	committers = 2
	// groupTimeout bounds a group's transaction.
	groupTimeout = 30 * time.Second
)

// arrival is a message waiting for its group's commit.
type arrival struct {
	m    *queue.Message
	body []byte
	data []byte
	done chan error
}

// group holds the arrivals waiting for a committer.
type group struct {
	mu      sync.Mutex
	waiting []*arrival
	closed  bool
	kick    chan struct{}
	wg      sync.WaitGroup
}

// startGroup starts the committers; they end when ctx is done.
func (s *Store) startGroup(ctx context.Context) {
	s.group.kick = make(chan struct{}, committers)
	for range committers {
		s.group.wg.Add(1)
		go s.committer(ctx)
	}
}

// stopGroup waits for the committers to end and fails what still waits.
func (s *Store) stopGroup() {
	g := &s.group
	g.wg.Wait()
	g.mu.Lock()
	g.closed = true
	left := g.waiting
	g.waiting = nil
	g.mu.Unlock()
	for _, a := range left {
		a.done <- fmt.Errorf("%w: the store is closing", delivery.ErrQueueUnavailable)
	}
}

// addSmall stores a message whose whole body is in body, with the others
// waiting at the same time, and returns once the group has committed.
func (s *Store) addSmall(m *queue.Message, body []byte) error {
	m.Size = int64(len(body))
	data, err := json.Marshal(m)
	if err != nil {
		return err
	}
	a := &arrival{m: m, body: body, data: data, done: make(chan error, 1)}
	g := &s.group
	g.mu.Lock()
	if g.closed {
		g.mu.Unlock()
		return fmt.Errorf("%w: the store is closed", delivery.ErrQueueUnavailable)
	}
	g.waiting = append(g.waiting, a)
	g.mu.Unlock()
	select {
	case g.kick <- struct{}{}:
	default:
	}
	// Whatever the caller's context says, the answer waits for the commit:
	// a message committed must not be reported as refused.
	return <-a.done
}

// take returns the next group: the arrivals waiting, within the bounds.
func (g *group) take() []*arrival {
	g.mu.Lock()
	defer g.mu.Unlock()
	n, size := 0, 0
	for n < len(g.waiting) && n < groupMessages && (n == 0 || size+len(g.waiting[n].body) <= groupBytes) {
		size += len(g.waiting[n].body)
		n++
	}
	out := g.waiting[:n:n]
	g.waiting = g.waiting[n:]
	if len(g.waiting) == 0 {
		g.waiting = nil
	}
	return out
}

func (s *Store) committer(ctx context.Context) {
	defer s.group.wg.Done()
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.group.kick:
		}
		for {
			batch := s.group.take()
			if len(batch) == 0 {
				break
			}
			if len(batch) < groupMessages {
				// Others may be gathering: let a second committer start
				// on them while this one writes.
				select {
				case s.group.kick <- struct{}{}:
				default:
				}
			}
			s.commitGroup(batch)
		}
	}
}

// commitGroup writes a group in one transaction. When the database
// refuses one of its statements, each message is written alone, so that
// one bad message fails alone; when it cannot be reached, all fail.
func (s *Store) commitGroup(batch []*arrival) {
	err := s.writeGroup(batch)
	var pge *pgconn.PgError
	if err != nil && len(batch) > 1 && errors.As(err, &pge) {
		for _, a := range batch {
			s.commitGroup([]*arrival{a})
		}
		return
	}
	for _, a := range batch {
		if err == nil {
			s.added(1, int64(len(a.body)))
		}
		a.done <- unavailable(err)
	}
}

func (s *Store) writeGroup(batch []*arrival) error {
	ctx, cancel := context.WithTimeout(context.Background(), groupTimeout)
	defer cancel()
	// One round trip: a batch without BEGIN runs as one implicit
	// transaction (its statements up to its one Sync), committed when
	// the last succeeds, rolled back whole when one fails.
	b := new(pgx.Batch)
	for _, a := range batch {
		m := a.m
		b.Queue(`INSERT INTO smtp_queue_bodies (id, seq, chunk) VALUES ($1, 0, $2)`, m.ID, a.body)
		b.Queue(`INSERT INTO smtp_queue_messages (id, priority, next_attempt, held, state, arrived, size, data)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8)`,
			m.ID, m.Priority, nullTime(m.NextAttempt), m.Held, string(m.State()), m.Arrived, m.Size, a.data)
	}
	b.Queue(notify)
	return s.pool.SendBatch(ctx, b).Close()
}

// readSmall reads body up to one chunk: all of it (more false), or the
// first chunk and a byte beyond (more true).
func readSmall(body io.Reader) (data []byte, more bool, err error) {
	data, err = io.ReadAll(io.LimitReader(body, chunkSize+1))
	if err != nil {
		return nil, false, fmt.Errorf("reading the message: %w", err)
	}
	return data, len(data) > chunkSize, nil
}
