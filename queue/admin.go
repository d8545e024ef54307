package queue

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/seed7b014b84/caddy-smtp/transport"
)

// What an administrator does with messages: the admin API, `caddy
// smtp-queue` and the queue page call these.

// Action is what Act does to each selected message.
type Action string

// The actions.
const (
	// ActRetry makes every recipient still to be delivered due now.
	ActRetry Action = "retry"
	// ActHold stops the message until it is released.
	ActHold Action = "hold"
	// ActRelease undoes a hold; the message is due now.
	ActRelease Action = "release"
	// ActBounce fails every recipient still to be delivered, and tells
	// the sender (a failure notice).
	ActBounce Action = "bounce"
	// ActDelete removes the message, without a notice.
	ActDelete Action = "delete"
)

// ParseAction reads an action's name.
func ParseAction(s string) (Action, error) {
	switch a := Action(s); a {
	case ActRetry, ActHold, ActRelease, ActBounce, ActDelete:
		return a, nil
	}
	return "", fmt.Errorf("unknown action %q (want retry, hold, release, bounce or delete)", s)
}

// The events of the actions.
const (
	EventHeld     = "smtp.held"
	EventReleased = "smtp.released"
	EventDeleted  = "smtp.deleted"
	EventBounced  = "smtp.bounced"
)

// ActResult says what an action did.
type ActResult struct {
	// Touched is how many messages it changed (or will change, for those
	// in delivery right now, as soon as their attempt ends).
	Touched int `json:"touched"`
	// Deferred is how many of those were in delivery: the action applies
	// when their attempt ends.
	Deferred int `json:"deferred,omitempty"`
}

// Act does a to every message f selects; reason is kept with a hold and
// said in a bounce. A message in delivery right now gets the action when
// its attempt ends.
func (q *Queue) Act(ctx context.Context, f *Filter, a Action, reason string) (ActResult, error) {
	cfg := q.config()
	if cfg == nil {
		return ActResult{}, errors.New("the queue has no config yet")
	}
	var res ActResult
	fn := func(m *Message) Change {
		ch := q.apply1(ctx, cfg, m, a, reason, q.now())
		if ch.Write || ch.Remove {
			q.emitAction(cfg, m, a, reason)
		}
		for _, n := range ch.Notices {
			q.announce(cfg, n.Message)
		}
		return ch
	}
	touched, busy, err := q.store.Modify(ctx, f, fn)
	res.Touched = touched
	if pa, ok := q.store.(PendingActions); ok && err == nil {
		// Messages leased by any instance: recorded in the store, applied
		// at their release by whichever instance holds them.
		var again []string
		for _, id := range busy {
			recorded, perr := pa.SetPending(ctx, id, a, reason)
			switch {
			case perr != nil:
				err = perr
			case recorded:
				res.Touched++
				res.Deferred++
			default:
				again = append(again, id)
			}
		}
		busy = again
	}
	// The messages in delivery get the action at their release; those
	// whose release is under way are tried again once it is done.
	for try := 0; len(busy) > 0 && err == nil && try < 100; try++ {
		var again []string
		q.mu.Lock()
		for _, id := range busy {
			if am := q.active[id]; am != nil && !am.releasing {
				q.pending[id] = pendingAction{action: a, reason: reason}
				res.Touched++
				res.Deferred++
			} else {
				again = append(again, id)
			}
		}
		q.mu.Unlock()
		if len(again) == 0 {
			break
		}
		time.Sleep(10 * time.Millisecond)
		var n int
		n, busy, err = q.store.Modify(ctx, &Filter{IDs: again}, fn)
		res.Touched += n
	}
	q.wake()
	return res, err
}

// PendingActions is a Store shared by instances that keeps the actions
// asked for on messages in delivery (on any instance), for whichever
// instance holds them to apply at their release.
type PendingActions interface {
	// SetPending records action on message id if it is leased; false:
	// it is not (any more), and the action can be applied now.
	SetPending(ctx context.Context, id string, a Action, reason string) (bool, error)
	// TakePending returns, and clears, the action recorded on a leased
	// message; "" when there is none.
	TakePending(ctx context.Context, l *Lease) (Action, string, error)
}

// pendingAction is an action on a message that was in delivery.
type pendingAction struct {
	action Action
	reason string
}

// apply1 changes one message for an action, and says what to write.
func (q *Queue) apply1(ctx context.Context, cfg *Config, m *Message, a Action, reason string, now time.Time) Change {
	switch a {
	case ActRetry:
		if m.Held || m.Done() {
			return Change{}
		}
		for i := range m.Recipients {
			if r := &m.Recipients[i]; !r.State.Final() {
				r.NextAttempt = now
			}
		}
		m.NextAttempt = now
		return Change{Write: true}
	case ActHold:
		if m.Held {
			return Change{}
		}
		m.Held, m.HoldReason = true, holdReason(reason)
		return Change{Write: true}
	case ActRelease:
		if !m.Held {
			return Change{}
		}
		m.Held, m.HoldReason = false, ""
		for i := range m.Recipients {
			if r := &m.Recipients[i]; !r.State.Final() {
				r.NextAttempt = now
			}
		}
		m.NextAttempt = m.nextAttempt()
		return Change{Write: true}
	case ActDelete:
		return Change{Remove: true}
	case ActBounce:
		bounced := bounce(m, reason, now)
		if bounced == 0 {
			return Change{}
		}
		m.Held = false
		notices := q.noticesFor(ctx, cfg, m, nil)
		m.NextAttempt = m.nextAttempt()
		return Change{Write: !m.Done(), Remove: m.Done(), Notices: notices}
	}
	return Change{}
}

func holdReason(reason string) string {
	if reason == "" {
		return "held by an administrator"
	}
	return reason
}

// bounce fails every recipient still to be delivered, and returns how
// many.
func bounce(m *Message, reason string, now time.Time) int {
	why := "bounced by an administrator"
	if reason != "" {
		why += ": " + reason
	}
	n := 0
	for i := range m.Recipients {
		r := &m.Recipients[i]
		if r.State.Final() {
			continue
		}
		r.State, r.DoneAt, r.NextAttempt = Failed, now, time.Time{}
		r.LastError, r.LastDetail = "bounced", why
		r.LastReply = &transport.Reply{Code: 550, Enhanced: "5.0.0", Lines: []string{why}, Local: true}
		n++
	}
	return n
}

func (q *Queue) emitAction(cfg *Config, m *Message, a Action, reason string) {
	name := map[Action]string{ActHold: EventHeld, ActRelease: EventReleased, ActDelete: EventDeleted, ActBounce: EventBounced}[a]
	cfg.Logger.Info("queue action", zap.String("action", string(a)), zap.String("id", m.ID), zap.String("from", m.From),
		zap.String("reason", reason))
	if name == "" {
		return
	}
	q.emit(cfg, name, map[string]any{"id": m.ID, "from": m.From, "reason": reason, "action": string(a)})
}

// applyPending applies, at a message's release, the action an
// administrator asked for while it was in delivery. Called with the
// message's lock held; it returns whether the message is to be removed.
func (q *Queue) applyPending(cfg *Config, am *activeMsg) (remove bool) {
	q.mu.Lock()
	am.releasing = true
	p, ok := q.pending[am.lease.Message.ID]
	delete(q.pending, am.lease.Message.ID)
	q.mu.Unlock()
	if pa, isPA := q.store.(PendingActions); isPA && !ok {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		a, reason, err := pa.TakePending(ctx, am.lease)
		cancel()
		if err == nil && a != "" {
			p, ok = pendingAction{action: a, reason: reason}, true
		}
	}
	if !ok || cfg == nil {
		return false
	}
	m := am.lease.Message
	now := q.now()
	switch p.action {
	case ActDelete:
		remove = true
	case ActBounce:
		bounce(m, p.reason, now)
	default:
		q.apply1(context.Background(), cfg, m, p.action, p.reason, now)
	}
	q.emitAction(cfg, m, p.action, p.reason)
	return remove
}

// Summary is the queue by destination and age, as Postfix's qshape shows
// it.
type Summary struct {
	// Ages names the age buckets of DestinationSummary.Ages.
	Ages         []string             `json:"ages"`
	Destinations []DestinationSummary `json:"destinations"`
	Messages     int                  `json:"messages"`
	// MessageAges counts the messages by age, each once (a message with
	// recipients at two destinations is in the Ages of both).
	MessageAges []int `json:"message_ages"`
}

// DestinationSummary is one destination's part of the queue.
type DestinationSummary struct {
	Destination string `json:"destination"`
	// Messages counts the messages with a recipient still to be
	// delivered there.
	Messages int `json:"messages"`
	// Ages counts them by age: 0-5m, 5-10m, 10-20m, 20-40m, 40-80m,
	// 80-160m, 160-320m, 320m+.
	Ages      [8]int `json:"ages"`
	LastError string `json:"last_error,omitempty"`
	Suspended bool   `json:"suspended"`
}

// ageBuckets are qshape's, in minutes: each bucket is up to the next
// bound.
var ageBuckets = []time.Duration{5 * time.Minute, 10 * time.Minute, 20 * time.Minute, 40 * time.Minute,
	80 * time.Minute, 160 * time.Minute, 320 * time.Minute}

// Summarize counts the queue by destination and age, and adds what the
// scheduler knows of each destination (last error, suspension).
func (q *Queue) Summarize(ctx context.Context) (*Summary, error) {
	now := q.now()
	byDest := map[string]*DestinationSummary{}
	s := &Summary{Ages: []string{"0-5m", "5-10m", "10-20m", "20-40m", "40-80m", "80-160m", "160-320m", "320m+"}}
	s.MessageAges = make([]int, len(s.Ages))
	cursor := ""
	for {
		page, next, err := q.store.List(ctx, &Filter{}, 1000, cursor)
		if err != nil {
			return nil, err
		}
		for _, m := range page {
			s.Messages++
			age := ageOf(now, m.Arrived)
			bucket := sort.Search(len(ageBuckets), func(i int) bool { return age < ageBuckets[i] })
			s.MessageAges[bucket]++
			seen := map[string]bool{}
			for _, r := range m.Recipients {
				if r.State.Final() {
					continue
				}
				dest := r.Destination
				if dest == "" {
					dest = "mx:" + Domain(r.Addr)
				}
				if seen[dest] {
					continue
				}
				seen[dest] = true
				d := byDest[dest]
				if d == nil {
					d = &DestinationSummary{Destination: dest}
					byDest[dest] = d
				}
				d.Messages++
				d.Ages[bucket]++
				if d.LastError == "" && r.LastDetail != "" {
					d.LastError = r.LastDetail
				} else if d.LastError == "" && r.LastReply != nil {
					d.LastError = r.LastReply.String()
				}
			}
		}
		if next == "" {
			break
		}
		cursor = next
	}
	for name, st := range q.Destinations() {
		d := byDest[name]
		if d == nil {
			if !st.Suspended {
				continue
			}
			d = &DestinationSummary{Destination: name}
			byDest[name] = d
		}
		d.Suspended = st.Suspended
		if st.LastError != "" {
			d.LastError = st.LastError
		}
	}
	for _, d := range byDest {
		s.Destinations = append(s.Destinations, *d)
	}
	slices.SortFunc(s.Destinations, func(a, b DestinationSummary) int {
		if a.Messages != b.Messages {
			return b.Messages - a.Messages
		}
		return strings.Compare(a.Destination, b.Destination)
	})
	if s.Destinations == nil {
		s.Destinations = []DestinationSummary{}
	}
	return s, nil
}
