package queue

import (
	"context"
	"sync"
	"time"
)

// leaseCtx is the context of a leased message's deliveries: its deadline
// is the lease's end (less a margin for clocks that differ), moved on each
// time the lease is renewed. The transport sets its connection's deadlines
// from the context's deadline at every read and write, so that once the
// lease is over, not a byte more of the transaction is sent: no instance
// delivers a message whose lease it does not hold, even one that was
// paused (SIGSTOP) past its lease and woke up in the middle of a
// transaction.
type leaseCtx struct {
	parent context.Context

	mu    sync.Mutex
	until time.Time
	timer *time.Timer
	done  chan struct{}
	err   error
}

// leaseMargin is taken off a lease's end, for clocks that differ between
// instances and the store.
const leaseMargin = time.Second

func newLeaseCtx(parent context.Context, until time.Time) *leaseCtx {
	c := &leaseCtx{parent: parent, done: make(chan struct{})}
	c.until = until.Add(-leaseMargin)
	c.timer = time.AfterFunc(time.Until(c.until), func() { c.cancel(context.DeadlineExceeded) })
	stop := context.AfterFunc(parent, func() { c.cancel(parent.Err()) })
	go func() {
		<-c.done
		stop()
	}()
	return c
}

// extend moves the deadline to a renewed lease's end.
func (c *leaseCtx) extend(until time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return
	}
	c.until = until.Add(-leaseMargin)
	c.timer.Reset(time.Until(c.until))
}

// cancel ends the context (the lease is lost, or the message released).
func (c *leaseCtx) cancel(err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return
	}
	c.err = err
	c.timer.Stop()
	close(c.done)
}

func (c *leaseCtx) Deadline() (time.Time, bool) {
	c.mu.Lock()
	d := c.until
	c.mu.Unlock()
	if pd, ok := c.parent.Deadline(); ok && pd.Before(d) {
		d = pd
	}
	return d, true
}

func (c *leaseCtx) Done() <-chan struct{} { return c.done }

func (c *leaseCtx) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err == nil && !time.Now().Before(c.until) {
		// The timer has not run yet, but the time is up.
		return context.DeadlineExceeded
	}
	return c.err
}

func (c *leaseCtx) Value(key any) any { return c.parent.Value(key) }

// Interface guards
var _ context.Context = (*leaseCtx)(nil)
