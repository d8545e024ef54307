package queue

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/seed7b014b84/caddy-smtp/delivery"
	"github.com/seed7b014b84/caddy-smtp/rules"
	"github.com/seed7b014b84/caddy-smtp/transport"
)

// The scheduler.
//
// It leases due messages from the store (highest priority first, then
// earliest due), a batch at a time, while the active set has room. The
// store records the attempt as it leases: each due recipient's attempt
// count, and its next attempt should this one never end. Each message is
// routed (the app's next_hop) into jobs, one per route, each queued on its
// destination. Jobs are started in turn across destinations, within the
// total cap (queue.concurrency) and the destination's window, which starts
// at the initial concurrency and grows by one with each delivery up to
// queue.destination_concurrency, as Postfix's does. Each recipient's result
// is saved as soon as its transaction ends; when the last job of a
// message ends, its lease is released with its next attempt, or the
// message is removed when nothing is left to do.
//
// A destination whose every host failed to connect (or whose DNS failed)
// is suspended until the next retry time of the recipients that found it
// dead: the jobs queued for it meanwhile are deferred to that time without
// a connection, and when it comes, one job goes first as a probe; the rest
// follow only when it gets through. Ten thousand messages to a dead domain
// thus cost a connection attempt per retry time, not ten thousand.

// activeMsg is a leased message and the jobs of its attempt.
type activeMsg struct {
	lease *Lease
	// mu guards lease.Message while jobs change it, and orders its saves.
	mu sync.Mutex
	// dmsg is the message as the Deliverer sees it: the recipients due in
	// this attempt; idx maps its recipients to Message.Recipients.
	dmsg *delivery.Message
	idx  []int
	// orig are the due recipients as they were before the attempt was
	// marked, to undo it for those never tried (at Stop).
	orig map[int]Recipient
	// tried marks the recipients whose job started.
	tried map[int]bool
	// pending counts the jobs not ended.
	pending int
	stale   bool
	// releasing is set (under the queue's lock) once the release began:
	// an action asked for from then on is applied to the stored message.
	releasing bool
	// ctx is the context of its deliveries, which ends with the lease.
	ctx *leaseCtx
	// body is opened by the first job and closed at release.
	bodyOnce sync.Once
	body     Body
	bodyErr  error
}

// job is one route of an active message.
type job struct {
	am    *activeMsg
	route delivery.Route
	dest  *destination
}

// destination is the scheduler's state of one destination.
type destination struct {
	name     string
	jobs     []*job
	inflight int
	window   int
	inRing   bool
	// suspendedUntil is set when the destination was found dead; after
	// it, probing lets one job through until one gets an answer.
	suspendedUntil time.Time
	probing        bool
	lastError      string
	lastClass      string
	lastReply      *transport.Reply
	// granted is what a shared store granted this instance of the
	// destination's cap; synced says a grant came.
	granted int
	synced  bool
}

// maxActive bounds the messages leased at once.
func maxActive(cfg *Config) int { return max(1000, 10*cfg.Concurrency) }

// maxPoll bounds how long the scheduler sleeps without looking at the
// store (a store shared with other instances that cannot wake this one, a
// clock that jumped).
const maxPoll = 30 * time.Second

// leaseBatch is the most messages leased at once.
const leaseBatch = 256

func (q *Queue) run() {
	defer close(q.done)
	renewEvery := 5 * time.Second
	if cfg := q.config(); cfg != nil {
		renewEvery = min(renewEvery, max(cfg.Lease/4, 100*time.Millisecond))
	}
	renew := time.NewTicker(renewEvery)
	defer renew.Stop()
	holds := time.NewTicker(holdsTick)
	defer holds.Stop()
	lim, _ := q.store.(Limiter)
	var limits <-chan time.Time
	if lim != nil {
		t := time.NewTicker(LimitSync)
		defer t.Stop()
		limits = t.C
	}
	if err := q.loadHolds(q.ctx); err != nil {
		if cfg := q.config(); cfg != nil {
			cfg.Logger.Error("reading the hold rules", zap.Error(err))
		}
	}
	var wakeStore <-chan struct{}
	if w, ok := q.store.(Waker); ok {
		wakeStore = w.Wake()
	}
	timer := time.NewTimer(0)
	defer timer.Stop()
	backoff := time.Duration(0)
	for {
		more, err := q.activate()
		if err != nil {
			// The store failed (a database that is down): try again
			// soon, with a growing delay.
			backoff = min(max(2*backoff, 100*time.Millisecond), 5*time.Second)
			if cfg := q.config(); cfg != nil {
				cfg.Logger.Error("leasing due messages", zap.Error(err), zap.Duration("retry_in", backoff))
			}
		} else {
			backoff = 0
		}
		q.dispatch()
		wait := maxPoll
		switch {
		case backoff > 0:
			wait = backoff
		case more:
			wait = 0
		default:
			wait = q.untilNextDue()
		}
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
		timer.Reset(wait)
		select {
		case <-q.ctx.Done():
			return
		case <-q.wakeCh:
		case <-wakeStore:
		case <-timer.C:
		case <-renew.C:
			q.renew()
		case <-holds.C:
			if err := q.loadHolds(q.ctx); err == nil {
				q.expireHolds(q.ctx)
			}
		case <-limits:
			q.syncLimits(lim)
		case <-q.syncNow:
			q.syncLimits(lim)
		}
	}
}

// nextDueEvery is how often, at most, the scheduler asks the store when the
// next message is due while jobs are in flight.
const nextDueEvery = time.Second

// untilNextDue returns how long the scheduler may sleep before the next
// message not in delivery is due, at most maxPoll. While jobs are in
// flight the loop wakes at the end of each one, thousands of times a
// second; it then asks the store at most every nextDueEvery and keeps an
// answer that is still ahead. What makes a message due sooner than that
// (a new message, a release, an administrator's change) wakes the loop,
// which leases it at once if it is due; one due later than it is, but
// sooner than the answer kept, waits at most nextDueEvery more.
func (q *Queue) untilNextDue() time.Duration {
	now := time.Now()
	q.mu.Lock()
	busy := q.inflight > 0
	q.mu.Unlock()
	if busy && now.Sub(q.nextDueAsked) < nextDueEvery && q.nextDue.After(now) {
		return min(q.nextDue.Sub(now), maxPoll)
	}
	q.nextDueAsked, q.nextDue = now, time.Time{}
	next, ok, err := q.store.NextDue(q.ctx)
	if err != nil || !ok {
		return maxPoll
	}
	q.nextDue = next
	return min(max(time.Until(next), 0), maxPoll)
}

// activate leases due messages while the active set has room, and routes
// them. more is true when it leased a whole batch (more may be due).
func (q *Queue) activate() (more bool, err error) {
	cfg := q.config()
	if cfg == nil || cfg.Deliverer == nil || cfg.Policy == nil {
		return false, nil
	}
	q.mu.Lock()
	room := maxActive(cfg) - len(q.active)
	paused := q.paused || q.stopping
	q.mu.Unlock()
	if paused || room <= 0 {
		return false, nil
	}
	limit := min(room, leaseBatch)
	now := q.now()
	marks := map[string]attemptMark{}
	leases, err := q.store.Lease(q.ctx, now, limit, cfg.Lease, func(m *Message) {
		marks[m.ID] = q.markAttempt(cfg, m, now)
	})
	if err != nil {
		return false, err
	}
	for _, l := range leases {
		mark := marks[l.Message.ID]
		am := &activeMsg{lease: l, orig: mark.orig, tried: map[int]bool{}, ctx: newLeaseCtx(q.jobCtx, l.Until)}
		q.mu.Lock()
		q.active[l.Message.ID] = am
		q.mu.Unlock()
		q.jobs.Add(1)
		go q.route(cfg, am, mark.due)
	}
	return len(leases) == limit, nil
}

// attemptMark is what markAttempt changed.
type attemptMark struct {
	due  []int
	orig map[int]Recipient
}

// markAttempt records an attempt of m's due recipients before it is made:
// the attempt count, and the next attempt should this one never end (a
// crash), at the schedule's next retry.
func (q *Queue) markAttempt(cfg *Config, m *Message, now time.Time) attemptMark {
	mark := attemptMark{orig: map[int]Recipient{}}
	for i := range m.Recipients {
		r := &m.Recipients[i]
		if r.State.Final() || r.NextAttempt.After(now) {
			continue
		}
		mark.due = append(mark.due, i)
		mark.orig[i] = *r
		r.Attempts++
		r.LastAttempt = now
		next, _ := q.retryAt(cfg, m, r, now)
		r.NextAttempt = next
	}
	m.NextAttempt = m.nextAttempt()
	return mark
}

// vars are the rule variables of recipient r of m.
func vars(m *Message, r *Recipient, now time.Time) rules.Vars {
	v := rules.Vars{
		RetryNum:     int64(r.Attempts),
		Sender:       m.From,
		SenderDomain: Domain(m.From),
		Rcpt:         r.Addr,
		RcptDomain:   Domain(r.Addr),
		LastError:    r.LastError,
		Size:         m.Size,
		Priority:     int64(m.Priority),
		QueueAge:     int64(ageOf(now, m.Arrived) / time.Second),
		Source:       m.Source,
	}
	if r.LastReply != nil {
		v.LastStatus = int64(r.LastReply.Code)
	}
	return v
}

// retryAt returns when r's next attempt is due after a failed one at now:
// the schedule's delay with jitter, but never after the message expires;
// expired is true when it has expired already.
func (q *Queue) retryAt(cfg *Config, m *Message, r *Recipient, now time.Time) (next time.Time, expired bool) {
	v := vars(m, r, now)
	delay, err := cfg.Policy.Retry(&v)
	if err != nil || delay <= 0 {
		if err != nil {
			cfg.Logger.Error("queue.retry", zap.String("id", m.ID), zap.Error(err))
		}
		delay = 5 * time.Minute
	}
	if cfg.Jitter > 0 {
		delay = time.Duration(float64(delay) * (1 + cfg.Jitter*(2*rand.Float64()-1)))
	}
	next = now.Add(delay)
	expire, err := cfg.Policy.Expire(&v)
	if err != nil {
		cfg.Logger.Error("queue.expire", zap.String("id", m.ID), zap.Error(err))
		expire = 5 * 24 * time.Hour
	}
	deadline := m.Arrived.Add(expire)
	if !now.Before(deadline) {
		return now, true
	}
	if next.After(deadline) {
		// The last attempt is made when the message expires.
		next = deadline
	}
	return next, false
}

// route routes a leased message into jobs.
func (q *Queue) route(cfg *Config, am *activeMsg, due []int) {
	defer q.jobs.Done()
	m := am.lease.Message
	if len(due) == 0 {
		// Nothing due: a message whose last attempt ended without its
		// release (a crash) has notices to make, or nothing to do.
		q.release(am)
		return
	}
	if why := q.holdFor(m); why != "" {
		// A hold rule came while the message was queued, or in delivery.
		q.undoUntried(am)
		am.mu.Lock()
		m.Held, m.HoldReason = true, why
		am.mu.Unlock()
		q.release(am)
		return
	}
	now := q.now()
	first := &m.Recipients[due[0]]
	dm := &delivery.Message{
		From: m.From, Size: m.Size, EightBit: m.EightBit, SMTPUTF8: m.SMTPUTF8, RequireTLS: m.RequireTLS,
		Ret: m.Ret, EnvID: m.EnvID, Priority: m.Priority, Source: m.Source,
	}
	// retry_num is the attempts before this one.
	dm.Vars = vars(m, first, now)
	dm.Vars.RetryNum--
	for _, i := range due {
		r := m.Recipients[i]
		dm.To = append(dm.To, transport.Recipient{Addr: r.Addr, Notify: r.Notify, ORCPT: r.ORCPT})
		am.idx = append(am.idx, i)
	}
	am.dmsg = dm
	ctx, cancel := context.WithTimeout(q.jobCtx, time.Minute)
	routes := cfg.Deliverer.Routes(ctx, dm)
	cancel()
	var jobs []*job
	for _, rt := range routes {
		if rt.Err != nil {
			reports := make([]delivery.RecipientReport, len(rt.Rcpts))
			for k := range reports {
				reports[k] = delivery.RecipientReport{Rcpt: dm.To[rt.Rcpts[k]].Addr, Status: transport.Deferred,
					Error: rt.Err.Error(), ErrorClass: "config",
					Reply: &transport.Reply{Code: 451, Enhanced: "4.3.5", Lines: []string{"routing: " + rt.Err.Error()}, Local: true}}
			}
			outs := q.apply(cfg, &job{am: am, route: rt}, reports, false)
			q.save(cfg, am)
			q.reportAll(cfg, m, outs)
			continue
		}
		jobs = append(jobs, &job{am: am, route: rt})
	}
	q.mu.Lock()
	am.pending = len(jobs)
	stopping := q.stopping
	if !stopping {
		for _, j := range jobs {
			q.enqueueJob(cfg, j)
		}
	}
	q.mu.Unlock()
	if stopping {
		q.undoUntried(am)
	}
	if len(jobs) == 0 || stopping {
		q.release(am)
		return
	}
	q.wake()
}

// undoUntried undoes the attempt marks of the recipients whose job never
// started, so that they are due at once when the queue starts again.
func (q *Queue) undoUntried(am *activeMsg) {
	now := q.now()
	am.mu.Lock()
	defer am.mu.Unlock()
	m := am.lease.Message
	for i, r := range am.orig {
		if !am.tried[i] {
			if r.NextAttempt.IsZero() || r.NextAttempt.After(now) {
				r.NextAttempt = now
			}
			m.Recipients[i] = r
		}
	}
}

// enqueueJob puts j on its destination's queue, after the jobs of the same
// or higher priority. Called with q.mu held.
func (q *Queue) enqueueJob(cfg *Config, j *job) {
	d := q.dests[j.route.Destination]
	if d == nil {
		d = &destination{name: j.route.Destination, window: cfg.InitialDestinationConcurrency}
		q.dests[d.name] = d
	}
	j.dest = d
	prio := j.am.lease.Message.Priority
	at := len(d.jobs)
	for at > 0 && d.jobs[at-1].am.lease.Message.Priority < prio {
		at--
	}
	d.jobs = slices.Insert(d.jobs, at, j)
	if !d.inRing {
		d.inRing = true
		q.ring = append(q.ring, d)
	}
}

// dispatch starts jobs in turn across destinations, within the caps.
func (q *Queue) dispatch() {
	cfg := q.config()
	if cfg == nil {
		return
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.stopping {
		return
	}
	now := q.now()
	for progressed := true; progressed && len(q.ring) > 0; {
		progressed = false
		for i := 0; i < len(q.ring); {
			d := q.ring[i]
			if len(d.jobs) == 0 {
				d.inRing = false
				q.ring = slices.Delete(q.ring, i, i+1)
				continue
			}
			if d.suspendedUntil.After(now) {
				// Dead: defer what waits for it, without connecting.
				for _, j := range d.jobs {
					q.startJob(cfg, j, true)
				}
				d.jobs = nil
				continue
			}
			if !d.suspendedUntil.IsZero() {
				// The suspension is over: one job probes.
				d.suspendedUntil, d.probing = time.Time{}, true
			}
			limit := min(d.window, cfg.DestinationConcurrency)
			if c := d.jobs[0].route.Concurrency; c > 0 {
				// A remote's own cap on its connections.
				limit = min(limit, c)
			}
			if q.shared {
				// The instances share the cap: what the store granted
				// this one (none before the first grant, which a sync
				// brings at once).
				limit = min(limit, d.granted)
				if !d.synced {
					q.syncSoon()
				}
			}
			if d.probing {
				limit = 1
			}
			if q.paused || q.inflight >= cfg.Concurrency || d.inflight >= limit {
				i++
				continue
			}
			j := d.jobs[0]
			d.jobs = d.jobs[1:]
			d.inflight++
			q.inflight++
			q.startJob(cfg, j, false)
			progressed = true
			i++
		}
	}
	q.forgetIdleDestinations(now)
}

// forgetIdleDestinations drops the state of destinations with nothing
// queued, nothing in flight and no suspension, once there are many, so that
// the map does not grow with every domain ever seen. Called with q.mu
// held.
func (q *Queue) forgetIdleDestinations(now time.Time) {
	if len(q.dests) < 10000 {
		return
	}
	for name, d := range q.dests {
		if len(d.jobs) == 0 && d.inflight == 0 && !d.suspendedUntil.After(now) && !d.probing {
			delete(q.dests, name)
		}
	}
}

// startJob runs j: a delivery attempt, or (suspended) a deferral to the
// end of its destination's suspension. Called with q.mu held.
func (q *Queue) startJob(cfg *Config, j *job, suspended bool) {
	if !suspended {
		for _, ri := range j.route.Rcpts {
			j.am.tried[j.am.idx[ri]] = true
		}
	}
	var snapshot destination
	if suspended {
		snapshot = *j.dest
		snapshot.jobs = nil
	}
	q.jobs.Add(1)
	go func() {
		defer q.jobs.Done()
		var reports []delivery.RecipientReport
		if suspended {
			reports = suspendedReports(j, &snapshot)
		} else {
			reports = q.deliver(cfg, j)
		}
		outs := q.apply(cfg, j, reports, suspended)
		q.mu.Lock()
		if !suspended {
			if !q.stopping && j.am.ctx.Err() == nil {
				// At a stop, attempts cut short say nothing of the
				// destination; nor do attempts cut by the end of the
				// lease (taken over by another instance, or not
				// renewed), which would otherwise suspend it for every
				// instance.
				q.feedback(cfg, j, reports)
			}
			// The destination's slot is free once the attempt ended
			// and its feedback is in, not once the results are
			// written: the next job starts meanwhile.
			j.dest.inflight--
			q.inflight--
		}
		j.am.pending--
		last := j.am.pending == 0
		q.mu.Unlock()
		if !suspended {
			q.wake()
		}
		// The last job's results are written by the release, in the
		// same transaction that removes the message or sets its next
		// attempt: one write, not two. The others' are written at once.
		if last {
			q.release(j.am)
		} else {
			q.save(cfg, j.am)
		}
		// Logged and emitted once written.
		q.reportAll(cfg, j.am.lease.Message, outs)
		q.wake()
	}()
}

// deliver makes the attempt of one job.
func (q *Queue) deliver(cfg *Config, j *job) []delivery.RecipientReport {
	am := j.am
	fail := func(class, why string, rep *transport.Reply) []delivery.RecipientReport {
		reports := make([]delivery.RecipientReport, len(j.route.Rcpts))
		for k, ri := range j.route.Rcpts {
			reports[k] = delivery.RecipientReport{Rcpt: am.dmsg.To[ri].Addr, Status: transport.Deferred, Error: why, ErrorClass: class, Reply: rep}
		}
		return reports
	}
	if am.stale {
		return fail("lease", "the lease was lost: another instance took the message over", nil)
	}
	if am.ctx.Err() != nil {
		// The lease is over (its renewal failed): another instance may
		// take the message, so this one does not deliver it.
		return fail("lease", "the lease ended: it could not be renewed", nil)
	}
	am.bodyOnce.Do(func() {
		if b := am.lease.Body; b != nil {
			// Read with the lease.
			am.body = q.withPrefix(am.lease.Message, MemBody(b))
			return
		}
		am.body, am.bodyErr = q.Body(q.jobCtx, am.lease.Message)
	})
	if am.bodyErr != nil {
		return fail("io", "reading the message: "+am.bodyErr.Error(),
			&transport.Reply{Code: 451, Enhanced: "4.3.0", Lines: []string{"the queued message cannot be read"}, Local: true})
	}
	msg := *am.dmsg
	msg.Body, msg.Size = am.body, am.body.Size()
	return cfg.Deliverer.DeliverRoute(am.ctx, &msg, j.route)
}

// suspendedReports defers a job of a suspended destination.
func suspendedReports(j *job, d *destination) []delivery.RecipientReport {
	reports := make([]delivery.RecipientReport, len(j.route.Rcpts))
	why := fmt.Sprintf("destination %s is suspended until %s after failing: %s", d.name,
		d.suspendedUntil.UTC().Format(time.RFC3339), d.lastError)
	rep := d.lastReply
	if rep == nil {
		rep = &transport.Reply{Code: 451, Enhanced: "4.4.1", Lines: []string{why}, Local: true}
	}
	for k, ri := range j.route.Rcpts {
		reports[k] = delivery.RecipientReport{Rcpt: j.am.dmsg.To[ri].Addr, Status: transport.Deferred,
			Error: why, ErrorClass: d.lastClass, Reply: rep}
	}
	return reports
}

// outcome is a recipient's outcome of a job, to report.
type outcome struct {
	r       Recipient
	rr      delivery.RecipientReport
	expired bool
}

// apply writes the outcome of a job into its message, in memory; it
// returns the recipients' outcomes, for reportAll once they are written
// (save, or the release).
func (q *Queue) apply(cfg *Config, j *job, reports []delivery.RecipientReport, suspended bool) []outcome {
	am := j.am
	now := q.now()
	var outs []outcome
	am.mu.Lock()
	m := am.lease.Message
	for k, ri := range j.route.Rcpts {
		if k >= len(reports) {
			break
		}
		rr := reports[k]
		idx := am.idx[ri]
		r := &m.Recipients[idx]
		if j.route.Destination != "" {
			r.Destination = j.route.Destination
		}
		if rr.Host != "" || !suspended {
			r.Host, r.Address = rr.Host, rr.Address
		}
		r.LastReply, r.LastError, r.LastDetail = rr.Reply, rr.ErrorClass, rr.Error
		expired := false
		switch rr.Status {
		case transport.Delivered:
			r.State, r.DoneAt, r.NextAttempt = Delivered, now, time.Time{}
			r.LastError, r.LastDetail = "", ""
			r.Protocol, r.DSNPassed = rr.Protocol, rr.DSNPassed
		case transport.Failed:
			r.State, r.DoneAt, r.NextAttempt = Failed, now, time.Time{}
		default:
			r.State = Deferred
			var next time.Time
			next, expired = q.retryAt(cfg, m, r, now)
			if suspended && !expired && j.dest != nil {
				// Due when the destination may be probed again.
				next = j.dest.suspendedUntil
				if next.Before(now) {
					next = now
				}
				if deadline := r.NextAttempt; !deadline.IsZero() && deadline.Before(next) {
					next = deadline
				}
			}
			if expired {
				r.State, r.DoneAt, r.NextAttempt = Failed, now, time.Time{}
				r.LastError = "expired"
				if r.LastReply == nil || r.LastReply.Class() != transport.PermanentNegative {
					why := "delivery time expired"
					if rr.Error != "" {
						why += "; last error: " + rr.Error
					} else if rr.Reply != nil {
						why += "; last reply: " + rr.Reply.String()
					}
					r.LastReply = &transport.Reply{Code: 550, Enhanced: "5.4.7", Lines: []string{why}, Local: true}
				}
			} else {
				r.NextAttempt = next
			}
		}
		r.record(Attempt{At: now, Host: rr.Host, Address: rr.Address, State: r.State, Reply: rr.Reply, Error: rr.Error})
		outs = append(outs, outcome{r: *r, rr: rr, expired: expired})
	}
	am.mu.Unlock()
	return outs
}

// save writes the results of an active message under its lease.
func (q *Queue) save(cfg *Config, am *activeMsg) {
	var err error
	am.mu.Lock()
	m := am.lease.Message
	if !am.stale {
		err = q.persist(func(ctx context.Context) error { return q.store.Save(ctx, am.lease) })
		if errors.Is(err, ErrStaleLease) {
			am.stale = true
		}
	}
	am.mu.Unlock()
	if errors.Is(err, ErrStaleLease) {
		cfg.Logger.Warn("result not recorded: the lease was lost to another instance", zap.String("id", m.ID))
	}
	if err != nil && !errors.Is(err, ErrStaleLease) {
		// What happened happened, and is reported as it did; but the
		// store does not know it, so the recipients may be tried again.
		cfg.Logger.Error("saving results failed: these recipients may be tried again", zap.String("id", m.ID), zap.Error(err))
	}
}

// reportAll logs and emits the outcomes of a job.
func (q *Queue) reportAll(cfg *Config, m *Message, outs []outcome) {
	for _, o := range outs {
		q.report(cfg, m, o.r, o.rr, o.expired)
	}
}

// report logs one recipient's outcome and emits its event.
func (q *Queue) report(cfg *Config, m *Message, r Recipient, rr delivery.RecipientReport, expired bool) {
	fields := []zap.Field{
		zap.String("id", m.ID), zap.String("from", m.From), zap.String("rcpt", r.Addr),
		zap.String("destination", r.Destination), zap.String("host", rr.Host), zap.String("address", rr.Address),
		zap.String("source", rr.Source), zap.String("tls", rr.TLSVersion), zap.String("tls_policy", rr.TLSPolicy),
		zap.Int("attempts", r.Attempts), zap.Duration("duration", rr.Duration),
		zap.Duration("queue_age", ageOf(q.now(), m.Arrived)),
	}
	if r.LastReply != nil {
		fields = append(fields, zap.String("reply", r.LastReply.String()))
	}
	if rr.Error != "" {
		fields = append(fields, zap.String("error", rr.Error))
	}
	data := map[string]any{
		"id": m.ID, "from": m.From, "rcpt": r.Addr, "status": string(r.State), "destination": r.Destination,
		"host": rr.Host, "address": rr.Address, "source": rr.Source, "tls_version": rr.TLSVersion,
		"tls_policy": rr.TLSPolicy, "error": rr.Error, "error_class": r.LastError, "attempts": r.Attempts,
		"duration_ms": rr.Duration.Milliseconds(),
	}
	if r.LastReply != nil {
		data["reply_code"] = r.LastReply.Code
		data["reply_enhanced"] = r.LastReply.Enhanced
		data["reply"] = r.LastReply.String()
	}
	event := EventDeferred
	switch {
	case expired:
		event = EventExpired
		q.metrics.outcome(Failed)
		cfg.Logger.Warn("expired", fields...)
	case r.State == Delivered:
		event = EventDelivered
		q.metrics.outcome(Delivered)
		cfg.Logger.Info("delivered", fields...)
	case r.State == Failed:
		event = EventFailed
		q.metrics.outcome(Failed)
		cfg.Logger.Warn("failed", fields...)
	default:
		data["next_attempt"] = r.NextAttempt.UTC().Format(time.RFC3339)
		q.metrics.outcome(Deferred)
		cfg.Logger.Warn("deferred", append(fields, zap.Time("next_attempt", r.NextAttempt))...)
	}
	q.emit(cfg, event, data)
}

// feedback adjusts the destination after a delivery attempt. Called with
// q.mu held.
func (q *Queue) feedback(cfg *Config, j *job, reports []delivery.RecipientReport) {
	d := j.dest
	answered, dead := false, len(reports) > 0
	var last delivery.RecipientReport
	for _, rr := range reports {
		if rr.Status == transport.Delivered || (rr.Reply != nil && !rr.Reply.Local) {
			answered = true
		}
		if rr.Status != transport.Deferred || (rr.ErrorClass != "connection" && rr.ErrorClass != "dns") {
			dead = false
		}
		last = rr
	}
	switch {
	case answered:
		d.probing, d.suspendedUntil = false, time.Time{}
		d.lastError, d.lastClass, d.lastReply = "", "", nil
		if d.window < cfg.DestinationConcurrency {
			d.window++
		}
	case dead:
		// Every host failed: suspended until the recipients' next retry.
		until := time.Time{}
		j.am.mu.Lock()
		for _, ri := range j.route.Rcpts {
			if r := j.am.lease.Message.Recipients[j.am.idx[ri]]; r.State == Deferred && (until.IsZero() || r.NextAttempt.Before(until)) {
				until = r.NextAttempt
			}
		}
		j.am.mu.Unlock()
		if until.After(d.suspendedUntil) {
			d.suspendedUntil = until
		}
		d.probing = false
		d.lastError, d.lastClass, d.lastReply = last.Error, last.ErrorClass, last.Reply
		d.window = max(1, d.window-1)
		if !d.inRing && len(d.jobs) > 0 {
			d.inRing = true
			q.ring = append(q.ring, d)
		}
		if q.shared {
			if q.deadSinceSync == nil {
				q.deadSinceSync = map[string]Suspension{}
			}
			q.deadSinceSync[d.name] = Suspension{Until: d.suspendedUntil, LastError: d.lastError}
		}
		cfg.Logger.Warn("destination suspended", zap.String("destination", d.name),
			zap.Time("until", d.suspendedUntil), zap.String("error", last.Error))
	}
}

// persistFor bounds how long a write about an attempt is tried again while
// the store cannot be reached: a delivery made must be recorded when the
// store comes back, or the recipient would be delivered to again.
const persistFor = 15 * time.Minute

// persist runs a write about an attempt, trying it again, with a growing
// delay, while the store is unavailable (a database that is down), until
// persistFor has passed or the queue's hard stop came.
func (q *Queue) persist(write func(ctx context.Context) error) error {
	deadline := time.Now().Add(persistFor)
	backoff := 100 * time.Millisecond
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		err := write(ctx)
		cancel()
		retry := errors.Is(err, delivery.ErrQueueUnavailable) || errors.Is(err, delivery.ErrQueueFull)
		if err == nil || !retry || time.Now().After(deadline) {
			return err
		}
		select {
		case <-q.jobCtx.Done():
			return err
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

// release ends the attempt of a message: notices are made for the
// recipients with news, and the lease is released (the message removed
// when it is done).
func (q *Queue) release(am *activeMsg) {
	cfg := q.config()
	m := am.lease.Message
	defer func() {
		am.ctx.cancel(context.Canceled)
		if am.body != nil {
			_ = am.body.Close()
		}
		q.mu.Lock()
		delete(q.active, m.ID)
		q.mu.Unlock()
		q.wake()
	}()
	am.mu.Lock()
	defer am.mu.Unlock()
	if am.stale {
		return
	}
	if q.applyPending(cfg, am) {
		am.lease.Remove = true
	}
	var notices []Notice
	if !am.lease.Remove {
		notices = q.notices(cfg, am)
	}
	m.NextAttempt = m.nextAttempt()
	if cfg != nil && !m.NextAttempt.IsZero() {
		if n := nextNotify(cfg, m, q.now()); !n.IsZero() && n.Before(m.NextAttempt) {
			m.NextAttempt = n
		}
	}
	if err := q.persist(func(ctx context.Context) error { return q.store.Release(ctx, am.lease, notices) }); err != nil {
		switch {
		case cfg == nil:
		case errors.Is(err, ErrStaleLease):
			// Another instance took the message over: its results are
			// its own, this attempt's are not written.
			am.stale = true
			cfg.Logger.Warn("result not recorded: the lease was lost to another instance", zap.String("id", m.ID))
		default:
			cfg.Logger.Error("releasing a message: these recipients may be tried again", zap.String("id", m.ID), zap.Error(err))
		}
		return
	}
	for _, n := range notices {
		q.announce(cfg, n.Message)
	}
	if len(notices) > 0 {
		q.wake()
	}
}

// releaseAll releases, at Stop, the messages still leased: the attempts of
// recipients never tried are undone, so that they are due at once when the
// queue starts again.
func (q *Queue) releaseAll() {
	q.mu.Lock()
	active := make([]*activeMsg, 0, len(q.active))
	for _, am := range q.active {
		active = append(active, am)
	}
	q.dests, q.ring = map[string]*destination{}, nil
	q.mu.Unlock()
	for _, am := range active {
		q.undoUntried(am)
		q.release(am)
	}
}

// renew extends the leases of the active messages that need it.
func (q *Queue) renew() {
	cfg := q.config()
	if cfg == nil {
		return
	}
	now := q.now()
	q.mu.Lock()
	var leases []*Lease
	byToken := map[string]*activeMsg{}
	for _, am := range q.active {
		if am.lease.Until.Sub(now) < cfg.Lease*2/3 {
			leases = append(leases, am.lease)
			byToken[am.lease.Token] = am
		}
	}
	q.mu.Unlock()
	if len(leases) == 0 {
		return
	}
	stale, err := q.store.Renew(q.ctx, leases, now.Add(cfg.Lease))
	if err != nil {
		cfg.Logger.Error("renewing leases", zap.Error(err))
		return
	}
	for _, am := range byToken {
		am.ctx.extend(am.lease.Until)
	}
	for _, l := range stale {
		if am := byToken[l.Token]; am != nil {
			q.mu.Lock()
			released := am.releasing
			q.mu.Unlock()
			if released {
				// Released (and removed) meanwhile: not lost.
				continue
			}
			am.ctx.cancel(ErrStaleLease)
			am.mu.Lock()
			am.stale = true
			am.mu.Unlock()
			cfg.Logger.Warn("lease lost: another instance took the message over", zap.String("id", l.Message.ID))
		}
	}
}
