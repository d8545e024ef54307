package queue

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"strings"
	"time"

	"go.uber.org/zap"
)

// Hold rules: kept in the store (so that every instance on a shared store
// applies them), cached here, and applied to new messages as they are
// queued, to queued ones when a rule is added, and at lease time (to catch
// what was in delivery when the rule came).

// loadHolds reads the hold rules into the cache.
func (q *Queue) loadHolds(ctx context.Context) error {
	holds, err := q.store.Holds(ctx)
	if err != nil {
		return err
	}
	q.mu.Lock()
	q.holds = holds
	q.mu.Unlock()
	return nil
}

// HoldRules returns the hold rules.
func (q *Queue) HoldRules(ctx context.Context) ([]HoldRule, error) {
	if err := q.loadHolds(ctx); err != nil {
		return nil, err
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	out := make([]HoldRule, len(q.holds))
	copy(out, q.holds)
	return out, nil
}

// holdFor returns the reason of the first rule in force that holds m, or
// "".
func (q *Queue) holdFor(m *Message) string {
	now := q.now()
	q.mu.Lock()
	defer q.mu.Unlock()
	for _, h := range q.holds {
		if (h.Expires.IsZero() || h.Expires.After(now)) && h.Matches(m) {
			return h.Reason()
		}
	}
	return ""
}

// AddHold adds a hold rule (an ID is made when it has none) and holds the
// queued messages it matches.
func (q *Queue) AddHold(ctx context.Context, h HoldRule) (HoldRule, ActResult, error) {
	if h.ID == "" {
		var b [6]byte
		_, _ = rand.Read(b[:])
		h.ID = hex.EncodeToString(b[:])
	}
	if strings.ContainsAny(h.ID, "/ \t\r\n") || len(h.ID) > 64 {
		return h, ActResult{}, fmt.Errorf("id: %q: at most 64 characters, without spaces or slashes", h.ID)
	}
	h.Created = q.now()
	if err := q.store.PutHold(ctx, h); err != nil {
		return h, ActResult{}, err
	}
	if err := q.loadHolds(ctx); err != nil {
		return h, ActResult{}, err
	}
	res, err := q.Act(ctx, h.Filter(), ActHold, h.Reason())
	return h, res, err
}

// RemoveHold removes a hold rule and releases the messages it held; found
// is false when there was no such rule.
func (q *Queue) RemoveHold(ctx context.Context, id string) (found bool, res ActResult, err error) {
	found, err = q.store.DeleteHold(ctx, id)
	if err != nil || !found {
		return found, res, err
	}
	if err := q.loadHolds(ctx); err != nil {
		return true, res, err
	}
	res, err = q.Act(ctx, &Filter{HeldBy: id}, ActRelease, "")
	return true, res, err
}

// expireHolds removes the rules whose time is over.
func (q *Queue) expireHolds(ctx context.Context) {
	now := q.now()
	q.mu.Lock()
	var expired []string
	for _, h := range q.holds {
		if !h.Expires.IsZero() && !h.Expires.After(now) {
			expired = append(expired, h.ID)
		}
	}
	q.mu.Unlock()
	for _, id := range expired {
		if _, _, err := q.RemoveHold(ctx, id); err != nil {
			if cfg := q.config(); cfg != nil {
				cfg.Logger.Error("removing an expired hold rule", zap.String("rule", id), zap.Error(err))
			}
		}
	}
}

// holdsTick is how often the rules are read again (for rules another
// instance changed) and expired ones removed.
const holdsTick = 15 * time.Second
