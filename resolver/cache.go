package resolver

import (
	"container/list"
	"sync"
	"time"
)

// cacheKey names one question.
type cacheKey struct {
	name  string // lowercased, fully qualified
	qtype uint16
}

type cacheEntry struct {
	key     cacheKey
	ans     *answer
	expires time.Time
}

// cache keeps answers for their TTL, at most size of them, dropping the
// least recently used first. A nil *cache keeps nothing.
type cache struct {
	mu      sync.Mutex
	size    int
	entries map[cacheKey]*list.Element
	lru     *list.List // front: most recently used
}

func newCache(size int) *cache {
	if size <= 0 {
		return nil
	}
	return &cache{size: size, entries: make(map[cacheKey]*list.Element), lru: list.New()}
}

// get returns a live answer for k.
func (c *cache) get(k cacheKey, at time.Time) (*answer, bool) {
	if c == nil {
		return nil, false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	el, ok := c.entries[k]
	if !ok {
		return nil, false
	}
	e := el.Value.(*cacheEntry)
	if !at.Before(e.expires) {
		c.lru.Remove(el)
		delete(c.entries, k)
		return nil, false
	}
	c.lru.MoveToFront(el)
	return e.ans, true
}

// put keeps a for ttl (nothing for a ttl of zero).
func (c *cache) put(k cacheKey, a *answer, ttl time.Duration, at time.Time) {
	if c == nil || ttl <= 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.entries[k]; ok {
		e := el.Value.(*cacheEntry)
		e.ans, e.expires = a, at.Add(ttl)
		c.lru.MoveToFront(el)
		return
	}
	c.entries[k] = c.lru.PushFront(&cacheEntry{key: k, ans: a, expires: at.Add(ttl)})
	for c.lru.Len() > c.size {
		oldest := c.lru.Back()
		c.lru.Remove(oldest)
		delete(c.entries, oldest.Value.(*cacheEntry).key)
	}
}

// len returns how many answers are kept (expired ones included until
// they are asked for or pushed out).
func (c *cache) len() int {
	if c == nil {
		return 0
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lru.Len()
}

// clamp bounds ttl to [lo, hi].
func clamp(ttl, lo, hi time.Duration) time.Duration {
	return min(max(ttl, lo), hi)
}
