// Package coalesce lets concurrent callers share one run of an expensive
// step whose single run serves many of them: a commit of the index, where
// one transaction and its fsyncs can hold the writes of every caller
// waiting, or a directory fsync, which makes durable every rename done
// before it started. While one run is going on, the callers that arrive
// queue up and the first of them runs the next one for all of them, so
// the step runs at most one batch behind demand and never waits to gather
// callers: a lone call runs at once.
package coalesce

import (
	"sync"
	"sync/atomic"
)

// Batcher runs batches of items one at a time on the goroutines of the
// callers that queued them. Each Do returns only once the batch holding
// its item has run; its items are in arrival order, so whatever run
// decides per item (an error, a result) can be left in the item for its
// caller to read after Do.
type Batcher[T any] struct {
	run func(batch []T)

	mu    sync.Mutex
	queue []*call[T]
	busy  bool // a caller is running a batch

	calls, batches atomic.Uint64
}

type call[T any] struct {
	item  T
	done  chan struct{} // closed once its batch has run
	lead  chan struct{} // closed when this caller is to run the queue
	panic *panicked     // set before done when run panicked
}

// panicked is what a run that panicked panicked with, passed on to every
// caller of its batch.
type panicked struct{ v any }

// New returns a Batcher that runs its batches with run.
func New[T any](run func(batch []T)) *Batcher[T] { return &Batcher[T]{run: run} }

// Do queues item and returns once run has been called on a batch holding
// it: at once on this goroutine when no batch is running, else with the
// items that arrive while the current one runs, in the next batch. If run
// panics, every Do of its batch panics with the same value, and the
// batches after it still run.
func (b *Batcher[T]) Do(item T) {
	c := &call[T]{item: item, done: make(chan struct{}), lead: make(chan struct{})}
	b.mu.Lock()
	b.queue = append(b.queue, c)
	b.calls.Add(1) // under mu: a call counted is queued or running
	if b.busy {
		b.mu.Unlock()
		select {
		case <-c.done:
			c.repanic()
			return
		case <-c.lead:
		}
		b.mu.Lock()
	}
	b.busy = true
	batch := b.queue
	b.queue = nil
	b.mu.Unlock()

	p := b.runBatch(batch)
	for _, o := range batch {
		o.panic = p
		if o != c {
			close(o.done)
		}
	}

	// The next caller in the queue runs it: none waits on a caller that
	// has its answer.
	b.mu.Lock()
	if len(b.queue) > 0 {
		close(b.queue[0].lead)
	} else {
		b.busy = false
	}
	b.mu.Unlock()
	c.repanic()
}

// runBatch calls run; a panic is recovered, or the batches queued behind
// this one, on other callers' goroutines, would wait forever.
func (b *Batcher[T]) runBatch(batch []*call[T]) (p *panicked) {
	b.batches.Add(1)
	items := make([]T, len(batch))
	for i, c := range batch {
		items[i] = c.item
	}
	defer func() {
		if r := recover(); r != nil {
			p = &panicked{r}
		}
	}()
	b.run(items)
	return nil
}

func (c *call[T]) repanic() {
	if c.panic != nil {
		panic(c.panic.v)
	}
}

// Stats returns how many calls of Do there were and how many batches ran
// them: their ratio is how much the callers shared. A call is counted as
// soon as it is queued, before its batch runs.
func (b *Batcher[T]) Stats() (calls, batches uint64) {
	return b.calls.Load(), b.batches.Load()
}
