package kv

import (
	"context"
	"fmt"
	"sync"
)

// Locks are named in-process locks, DB.Lock for an index one process
// owns (bbolt, pebble). Each is a channel rather than a sync.Mutex so
// that ctx can end the wait.
type Locks struct {
	mu sync.Mutex
	m  map[string]chan struct{}
}

// Lock takes the named lock; what names the index in errors.
func (l *Locks) Lock(ctx context.Context, what, name string) (func(), error) {
	l.mu.Lock()
	if l.m == nil {
		l.m = map[string]chan struct{}{}
	}
	m := l.m[name]
	if m == nil {
		m = make(chan struct{}, 1)
		l.m[name] = m
	}
	l.mu.Unlock()
	select {
	case m <- struct{}{}:
	case <-ctx.Done():
		return nil, fmt.Errorf("%s: lock %q: %w", what, name, ctx.Err())
	}
	var once sync.Once
	return func() { once.Do(func() { <-m }) }, nil
}
