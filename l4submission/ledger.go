package l4submission

import (
	"container/list"
	"crypto/sha256"
	"hash"
	"sync"
	"time"
)

// The ledger's bounds: an entry is kept for a client's usual retry period
// (Postfix's maximal_queue_lifetime is five days), and at most
// ledgerEntries are kept, the oldest dropped first.
const (
	ledgerTTL     = 5 * 24 * time.Hour
	ledgerEntries = 10000
)

// deliveredLedger is the process's ledger: it outlives config reloads, as
// the clients' retries do.
var deliveredLedger = newLedger(ledgerTTL, ledgerEntries)

// messageKey identifies a message as the client sent it: a SHA-256 over
// the envelope sender and the data.
type messageKey [sha256.Size]byte

// newMessageHash starts a messageKey for the sender; write the data to it.
func newMessageHash(from string) hash.Hash {
	h := sha256.New()
	h.Write([]byte(from))
	h.Write([]byte{0})
	return h
}

func keyOf(h hash.Hash) messageKey {
	var k messageKey
	copy(k[:], h.Sum(nil))
	return k
}

// ledger remembers the recipients a message was delivered to when its
// transaction was answered 451, so that the client's retry of the same
// message is not delivered to them again (see the package documentation).
type ledger struct {
	ttl time.Duration
	max int

	mu      sync.Mutex
	entries map[messageKey]*list.Element
	order   *list.List // of *ledgerEntry, oldest first
}

type ledgerEntry struct {
	key     messageKey
	rcpts   map[string]bool
	expires time.Time
}

func newLedger(ttl time.Duration, max int) *ledger {
	return &ledger{ttl: ttl, max: max, entries: map[messageKey]*list.Element{}, order: list.New()}
}

// delivered returns the recipients the message was delivered to already.
func (l *ledger) delivered(k messageKey, now time.Time) map[string]bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	el, ok := l.entries[k]
	if !ok {
		return nil
	}
	e := el.Value.(*ledgerEntry)
	if now.After(e.expires) {
		l.remove(el)
		return nil
	}
	out := make(map[string]bool, len(e.rcpts))
	for r := range e.rcpts {
		out[r] = true
	}
	return out
}

// remember records that the message has been delivered to rcpts (every
// one so far: the record replaces the one before), for the TTL from now.
func (l *ledger) remember(k messageKey, rcpts []string, now time.Time) {
	if len(rcpts) == 0 {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if el, ok := l.entries[k]; ok {
		l.remove(el)
	}
	e := &ledgerEntry{key: k, rcpts: make(map[string]bool, len(rcpts)), expires: now.Add(l.ttl)}
	for _, r := range rcpts {
		e.rcpts[r] = true
	}
	l.entries[k] = l.order.PushBack(e)
	for l.order.Len() > l.max {
		l.remove(l.order.Front())
	}
	for el := l.order.Front(); el != nil && now.After(el.Value.(*ledgerEntry).expires); el = l.order.Front() {
		l.remove(el)
	}
}

// forget drops the message's record: its transaction was answered for good.
func (l *ledger) forget(k messageKey) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if el, ok := l.entries[k]; ok {
		l.remove(el)
	}
}

func (l *ledger) remove(el *list.Element) {
	delete(l.entries, el.Value.(*ledgerEntry).key)
	l.order.Remove(el)
}
