package queue

import (
	"context"
	"time"

	"go.uber.org/zap"
)

// Limiter is a Store shared by several instances that also shares the
// destinations' limits: the per-destination concurrency cap holds across
// all of them, and a destination one instance found dead is suspended for
// all. The scheduler syncs with it every LimitSync.
type Limiter interface {
	// SyncDestinations says, per destination, how many transactions this
	// instance wants in flight and has in flight (cap is the most the
	// instances may have together), and which destinations it found dead
	// since the last sync; it returns the transactions granted to this
	// instance, and the suspensions in force.
	SyncDestinations(ctx context.Context, use map[string]DestinationUse, cap int, dead map[string]Suspension) (granted map[string]int, suspended map[string]Suspension, err error)
}

// DestinationUse is an instance's use of a destination.
type DestinationUse struct {
	Want, InFlight int
}

// Suspension is a dead destination's suspension.
type Suspension struct {
	Until     time.Time
	LastError string
}

// LimitSync is how often the scheduler syncs the destinations' limits
// with a Limiter store.
const LimitSync = time.Second

// syncLimits syncs the destinations' limits with a shared store.
func (q *Queue) syncLimits(lim Limiter) {
	cfg := q.config()
	if cfg == nil {
		return
	}
	now := q.now()
	use := map[string]DestinationUse{}
	q.mu.Lock()
	for name, d := range q.dests {
		if len(d.jobs) > 0 || d.inflight > 0 {
			use[name] = DestinationUse{Want: min(d.window, cfg.DestinationConcurrency, len(d.jobs)+d.inflight), InFlight: d.inflight}
		}
	}
	dead := q.deadSinceSync
	q.deadSinceSync = nil
	q.mu.Unlock()
	ctx, cancel := context.WithTimeout(q.ctx, 10*time.Second)
	defer cancel()
	granted, suspended, err := lim.SyncDestinations(ctx, use, cfg.DestinationConcurrency, dead)
	if err != nil {
		cfg.Logger.Warn("syncing destination limits", zap.Error(err))
		// Keep the grants: they are renewed next time, or expire.
		q.mu.Lock()
		for name, s := range dead {
			if q.deadSinceSync == nil {
				q.deadSinceSync = map[string]Suspension{}
			}
			q.deadSinceSync[name] = s
		}
		q.mu.Unlock()
		return
	}
	q.mu.Lock()
	for name, d := range q.dests {
		d.granted = granted[name]
		d.synced = true
	}
	for name, s := range suspended {
		d := q.dests[name]
		if d == nil || !s.Until.After(now) || !s.Until.After(d.suspendedUntil) {
			continue
		}
		d.suspendedUntil, d.probing = s.Until, false
		if d.lastError == "" {
			d.lastError, d.lastClass = s.LastError, "connection"
		}
		if !d.inRing && len(d.jobs) > 0 {
			d.inRing = true
			q.ring = append(q.ring, d)
		}
	}
	q.mu.Unlock()
	q.wake()
}
