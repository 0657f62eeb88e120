package upstream

import (
	"container/list"
	"sync"
	"time"
)

// cacheKey names one upstream's answer for one hash part.
type cacheKey struct {
	up   *Upstream
	hash string
}

// cached is an answer kept in memory: a found narinfo (a) or a miss (nil).
type cached struct {
	key     cacheKey
	a       *Answer
	expires time.Time
}

// answerCache is a bounded LRU of answers, so a popular path costs one
// upstream request per TTL and a flood of distinct misses cannot grow it
// without end.
type answerCache struct {
	mu    sync.Mutex
	max   int
	ll    *list.List // front: most recently used
	items map[cacheKey]*list.Element
}

func newAnswerCache(max int) *answerCache {
	return &answerCache{max: max, ll: list.New(), items: map[cacheKey]*list.Element{}}
}

// get returns the answer kept for k (nil for a kept miss) and whether one
// was kept and is still fresh at now.
func (c *answerCache) get(k cacheKey, now time.Time) (*Answer, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.items[k]
	if !ok {
		return nil, false
	}
	v := e.Value.(*cached)
	if !now.Before(v.expires) {
		c.ll.Remove(e)
		delete(c.items, k)
		return nil, false
	}
	c.ll.MoveToFront(e)
	return v.a, true
}

// put keeps a (nil: a miss) for k until expires, evicting the least
// recently used entry when full.
func (c *answerCache) put(k cacheKey, a *Answer, expires time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.items[k]; ok {
		e.Value = &cached{key: k, a: a, expires: expires}
		c.ll.MoveToFront(e)
		return
	}
	c.items[k] = c.ll.PushFront(&cached{key: k, a: a, expires: expires})
	for c.ll.Len() > c.max {
		old := c.ll.Back()
		c.ll.Remove(old)
		delete(c.items, old.Value.(*cached).key)
	}
}

// len is the number of entries kept (tests).
func (c *answerCache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.ll.Len()
}

// flight coalesces concurrent fetches of one key into one request.
type flight struct {
	mu    sync.Mutex
	calls map[cacheKey]*call
}

// call is one fetch in progress; done closes when a and err are set.
type call struct {
	done chan struct{}
	a    *Answer
	err  error
}

// start returns the call in progress for k, or starts fn for it in a
// goroutine of its own: the fetch must not depend on the caller that
// started it staying, since others may be waiting for the same answer.
func (f *flight) start(k cacheKey, fn func() (*Answer, error)) *call {
	f.mu.Lock()
	defer f.mu.Unlock()
	if c, ok := f.calls[k]; ok {
		return c
	}
	if f.calls == nil {
		f.calls = map[cacheKey]*call{}
	}
	c := &call{done: make(chan struct{})}
	f.calls[k] = c
	go func() {
		c.a, c.err = fn()
		f.mu.Lock()
		delete(f.calls, k)
		f.mu.Unlock()
		close(c.done)
	}()
	return c
}
