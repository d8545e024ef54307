package pgstore

import (
	"context"
	"errors"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/seed7b014b84/caddy-smtp/queue"
)

// slotsLockKey serializes the instances' syncs of destination limits:
// "smtps" as a number.
const slotsLockKey = 0x736d747073

// slotsFor is how long a grant holds without a new sync: an instance that
// died gives its slots back after it.
const slotsFor = 3 * queue.LimitSync

// SyncDestinations shares the destinations' caps and suspensions among
// the instances: each instance's row per destination says what it wants
// and holds; a destination's cap is split so that the instances' grants
// together never pass it, and fairly when several want more than their
// share.
func (s *Store) SyncDestinations(ctx context.Context, use map[string]queue.DestinationUse, limit int, dead map[string]queue.Suspension) (map[string]int, map[string]queue.Suspension, error) {
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return nil, nil, unavailable(err)
	}
	defer func() { _ = tx.Rollback(context.Background()) }()
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, slotsLockKey); err != nil {
		return nil, nil, unavailable(err)
	}
	for name, sus := range dead {
		if _, err := tx.Exec(ctx, `INSERT INTO smtp_queue_destinations (name, suspended_until, last_error) VALUES ($1, $2, $3)
			ON CONFLICT (name) DO UPDATE SET suspended_until = greatest(smtp_queue_destinations.suspended_until, excluded.suspended_until),
			last_error = excluded.last_error`, name, sus.Until, sus.LastError); err != nil {
			return nil, nil, unavailable(err)
		}
	}
	names := make([]string, 0, len(use))
	for name := range use {
		names = append(names, name)
	}
	if _, err := tx.Exec(ctx, `DELETE FROM smtp_queue_slots WHERE (instance = $1 AND NOT (destination = ANY($2))) OR until < now() - interval '1 minute'`,
		s.instance, names); err != nil {
		return nil, nil, unavailable(err)
	}
	type others struct{ slots, wanting int }
	held := map[string]others{}
	rows, err := tx.Query(ctx, `SELECT destination, sum(slots), count(*) FILTER (WHERE want > 0) FROM smtp_queue_slots
		WHERE destination = ANY($1) AND instance <> $2 AND until > now() GROUP BY destination`, names, s.instance)
	if err != nil {
		return nil, nil, unavailable(err)
	}
	for rows.Next() {
		var name string
		var o others
		if err := rows.Scan(&name, &o.slots, &o.wanting); err != nil {
			rows.Close()
			return nil, nil, unavailable(err)
		}
		held[name] = o
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, nil, unavailable(err)
	}
	granted := make(map[string]int, len(use))
	batch := &pgx.Batch{}
	until := time.Now().Add(slotsFor)
	for name, u := range use {
		o := held[name]
		g := min(u.Want, max(0, limit-o.slots))
		if o.wanting > 0 {
			// Others want too: no more than an equal share.
			share := (limit + o.wanting) / (o.wanting + 1)
			g = min(g, share)
		}
		granted[name] = g
		// What the others see this instance hold: its grant, or what it
		// still has in flight from a larger one, whichever is more.
		batch.Queue(`INSERT INTO smtp_queue_slots (destination, instance, want, slots, until) VALUES ($1, $2, $3, $4, $5)
			ON CONFLICT (destination, instance) DO UPDATE SET want = excluded.want, slots = excluded.slots, until = excluded.until`,
			name, s.instance, u.Want, max(g, u.InFlight), until)
	}
	if batch.Len() > 0 {
		if err := tx.SendBatch(ctx, batch).Close(); err != nil {
			return nil, nil, unavailable(err)
		}
	}
	suspended := map[string]queue.Suspension{}
	rows, err = tx.Query(ctx, `SELECT name, suspended_until, coalesce(last_error, '') FROM smtp_queue_destinations WHERE suspended_until > now()`)
	if err != nil {
		return nil, nil, unavailable(err)
	}
	for rows.Next() {
		var name string
		var sus queue.Suspension
		if err := rows.Scan(&name, &sus.Until, &sus.LastError); err != nil {
			rows.Close()
			return nil, nil, unavailable(err)
		}
		suspended[name] = sus
	}
	rows.Close()
	if err := rows.Err(); err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return nil, nil, unavailable(err)
	}
	if err := tx.Commit(ctx); err != nil {
		return nil, nil, unavailable(err)
	}
	return granted, suspended, nil
}

// Interface guards
var _ queue.Limiter = (*Store)(nil)

// SetPending records an action on a leased message, for its holder.
func (s *Store) SetPending(ctx context.Context, id string, a queue.Action, reason string) (bool, error) {
	tag, err := s.pool.Exec(ctx, `UPDATE smtp_queue_messages SET pending_action = $2 WHERE id = $1 AND lease_until > now()`,
		id, string(a)+"\n"+reason)
	if err != nil {
		return false, unavailable(err)
	}
	return tag.RowsAffected() > 0, nil
}

// TakePending returns and clears the action recorded on a leased message.
func (s *Store) TakePending(ctx context.Context, l *queue.Lease) (queue.Action, string, error) {
	var pending *string
	err := s.pool.QueryRow(ctx, `WITH old AS (
			SELECT pending_action FROM smtp_queue_messages WHERE id = $1 AND lease_token = $2 AND pending_action IS NOT NULL FOR UPDATE)
		UPDATE smtp_queue_messages m SET pending_action = NULL FROM old WHERE m.id = $1 RETURNING old.pending_action`,
		l.Message.ID, l.Token).Scan(&pending)
	if errors.Is(err, pgx.ErrNoRows) || (err == nil && pending == nil) {
		return "", "", nil
	}
	if err != nil {
		return "", "", unavailable(err)
	}
	a, reason, _ := strings.Cut(*pending, "\n")
	return queue.Action(a), reason, nil
}

// Interface guards
var _ queue.PendingActions = (*Store)(nil)
