package pgkv

import (
	"context"
	"fmt"
	"hash/fnv"
	"sync"
)

// Lock takes the named lock across every replica: first an in-process
// mutex, so goroutines of one process wait cheaply without a connection
// each, then a session advisory lock, pg_advisory_lock(1, hash(name)), on
// a connection held until unlock. ctx ends the wait.
//
// If that connection dies while held, the server releases the lock and
// another replica may take it before unlock is called: the lock is lost
// silently. Unlock then only returns the connection and the mutex.
func (d *DB) Lock(ctx context.Context, name string) (func(), error) {
	m := d.mutex(name)
	select {
	case m <- struct{}{}:
	case <-ctx.Done():
		return nil, fmt.Errorf("pgkv: lock %q: %w", name, ctx.Err())
	}
	c, err := d.pool.Acquire(ctx)
	if err != nil {
		<-m
		return nil, fmt.Errorf("pgkv: lock %q: %w", name, err)
	}
	key := lockKey(name)
	if _, err := c.Exec(ctx, "SELECT pg_advisory_lock(1, $1)", key); err != nil {
		// An interrupted wait may leave the session unclear: close it,
		// which releases anything it holds.
		cctx, cancel := d.op()
		c.Conn().Close(cctx)
		cancel()
		c.Release()
		<-m
		return nil, fmt.Errorf("pgkv: lock %q: %w", name, err)
	}
	var once sync.Once
	return func() {
		once.Do(func() {
			uctx, cancel := d.op()
			defer cancel()
			if _, err := c.Exec(uctx, "SELECT pg_advisory_unlock(1, $1)", key); err != nil {
				c.Conn().Close(uctx)
			}
			c.Release()
			<-m
		})
	}, nil
}

func (d *DB) mutex(name string) chan struct{} {
	d.mu.Lock()
	defer d.mu.Unlock()
	m := d.locks[name]
	if m == nil {
		m = make(chan struct{}, 1)
		d.locks[name] = m
	}
	return m
}

// lockKey is name hashed into the int4 of the two-key advisory lock form.
func lockKey(name string) int32 {
	h := fnv.New32a()
	h.Write([]byte(name))
	return int32(h.Sum32())
}
