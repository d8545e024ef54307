package queue

import (
	"context"
	"io"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
)

// notices finds what a message's senders should be told, as its lease is
// released, and asks the Notifier for the notices (RFC 3461, section 6.2):
//
//   - a recipient that failed (refused for good, or expired): a failure
//     notice, unless its NOTIFY does not ask for FAILURE (no NOTIFY asks
//     for failures and delays);
//   - a recipient delivered, when its NOTIFY asks for SUCCESS and the
//     server did not take the duty of reporting (it offers no DSN):
//     "delivered" over LMTP, "relayed" over SMTP;
//   - recipients still to be delivered when the message's age passes the
//     next of queue.notify's times: a delay notice, unless their NOTIFY
//     does not ask for DELAY.
//
// Each recipient is reported once (Reported), and each notify time once
// (Message.Notified); the notices are added in the same transaction that
// records this, so none is lost or sent twice. Called with am.mu held.
func (q *Queue) notices(cfg *Config, am *activeMsg) []Notice {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	return q.noticesFor(ctx, cfg, am.lease.Message, am.body)
}

// noticesFor is notices for a message that is not leased (an
// administrator's bounce) or whose body is at hand (body; nil opens it
// when a notice needs it).
func (q *Queue) noticesFor(ctx context.Context, cfg *Config, m *Message, body Body) []Notice {
	if cfg == nil {
		return nil
	}
	now := q.now()
	var news []News
	for i := range m.Recipients {
		r := &m.Recipients[i]
		if !r.State.Final() || r.Reported {
			continue
		}
		r.Reported = true
		switch {
		case r.State == Failed && wants(r.Notify, "FAILURE"):
			news = append(news, News{Index: i, Kind: "failed"})
		case r.State == Delivered && wants(r.Notify, "SUCCESS") && !r.DSNPassed:
			kind := "relayed"
			if r.Protocol == "lmtp" {
				kind = "delivered"
			}
			news = append(news, News{Index: i, Kind: kind})
		}
	}
	if delayed := q.delayNews(cfg, m, now); len(delayed) > 0 {
		news = append(news, delayed...)
	}
	if len(news) == 0 || cfg.Notifier == nil {
		return nil
	}
	opened := false
	if body == nil {
		if b, err := q.Body(ctx, m); err == nil {
			body, opened = b, true
		}
	}
	notices, err := cfg.Notifier.Notices(ctx, m, body, news)
	if err != nil {
		cfg.Logger.Error("making delivery status notifications", zap.String("id", m.ID), zap.Error(err))
		notices = nil
	}
	if cfg.Signer != nil {
		// Notices are signed too (with the reporting host's domain's
		// keys, when it has some).
		for i := range notices {
			notices[i].Body = signed(cfg.Signer, notices[i].Message, notices[i].Body)
		}
	}
	if opened {
		// The notices stream the original from the body as the store
		// reads them: it is closed once the last of them has been read.
		closeAfter(body, notices)
	}
	return notices
}

// closeAfter closes body once every notice's Body has been read to its end
// (at once, when there is none).
func closeAfter(body Body, notices []Notice) {
	if len(notices) == 0 {
		_ = body.Close()
		return
	}
	left := new(atomic.Int32)
	left.Store(int32(len(notices)))
	for i := range notices {
		notices[i].Body = &closeAtEOF{r: notices[i].Body, done: func() {
			if left.Add(-1) == 0 {
				_ = body.Close()
			}
		}}
	}
}

// closeAtEOF calls done (once) when its reader ends.
type closeAtEOF struct {
	r    io.Reader
	done func()
	once sync.Once
}

func (c *closeAtEOF) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	if err != nil {
		c.once.Do(c.done)
	}
	return n, err
}

// delayNews returns the delay news due for m: when its age has passed the
// next notify time and some recipient is still to be delivered. Called with
// the message's lock held.
func (q *Queue) delayNews(cfg *Config, m *Message, now time.Time) []News {
	var open []int
	for i, r := range m.Recipients {
		if !r.State.Final() {
			open = append(open, i)
		}
	}
	if len(open) == 0 || m.Held {
		return nil
	}
	r := &m.Recipients[open[0]]
	v := vars(m, r, now)
	times, err := cfg.Policy.Notify(&v)
	if err != nil {
		cfg.Logger.Error("queue.notify", zap.String("id", m.ID), zap.Error(err))
		return nil
	}
	slices.Sort(times)
	age := ageOf(now, m.Arrived)
	due := 0
	for due < len(times) && times[due] <= age {
		due++
	}
	if due <= m.Notified {
		return nil
	}
	m.Notified = due
	expire, err := cfg.Policy.Expire(&v)
	if err != nil {
		expire = 5 * 24 * time.Hour
	}
	var news []News
	for _, i := range open {
		if wants(m.Recipients[i].Notify, "DELAY") {
			news = append(news, News{Index: i, Kind: "delayed", WillRetryUntil: m.Arrived.Add(expire)})
		}
	}
	return news
}

// nextNotify returns when m's next delay notice is due (zero: none), so
// that a message is leased again then even when no retry falls on it.
func nextNotify(cfg *Config, m *Message, now time.Time) time.Time {
	for i, r := range m.Recipients {
		if r.State.Final() {
			continue
		}
		v := vars(m, &m.Recipients[i], now)
		times, err := cfg.Policy.Notify(&v)
		if err != nil {
			return time.Time{}
		}
		slices.Sort(times)
		if m.Notified < len(times) {
			return m.Arrived.Add(times[m.Notified])
		}
		return time.Time{}
	}
	return time.Time{}
}

// wants reports whether a recipient's NOTIFY asks for kind: with no NOTIFY,
// failures and delays are reported (RFC 3461, section 4.1); NEVER reports
// nothing.
func wants(notify []string, kind string) bool {
	if len(notify) == 0 {
		return kind == "FAILURE" || kind == "DELAY"
	}
	for _, n := range notify {
		if strings.EqualFold(n, kind) {
			return true
		}
	}
	return false
}
