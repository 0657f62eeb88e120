package kv

import (
	"fmt"
	"sync/atomic"

	"github.com/bos55/concordia/internal/coalesce"
)

// Group commits the write transactions of concurrent callers together:
// while one Update of the index is running (for bbolt, mostly its two
// fsyncs), the calls that arrive queue up, and the next transaction runs
// all of them and commits once. Nix uploads the paths of a closure that do
// not depend on each other in parallel, so their narinfo commits arrive
// together; each still returns only once its writes are committed, as
// with DB.Update.
//
// A lone call waits for nothing: it runs at once, unlike bbolt's Batch,
// which holds every call for its MaxBatchDelay to gather others.
//
// The functions of a group run one after another in one transaction, so
// each sees the writes of those before it, as if committed in that order.
// One that fails would undo the others' writes, so the group is run again
// without it and the failed one alone after it, which returns its own
// error: a function given to Group may run more than once and must do
// nothing outside the transaction that a second run would get wrong.
type Group struct {
	db    DB
	calls *coalesce.Batcher[*groupCall]

	transactions atomic.Uint64
}

type groupCall struct {
	fn  func(Tx) error
	err error // final once its batch has run
}

// NewGroup groups the write transactions given to it on db.
func NewGroup(db DB) *Group {
	g := &Group{db: db}
	g.calls = coalesce.New(g.run)
	return g
}

// Update runs fn in a write transaction, possibly shared with other
// concurrent calls, and returns once it is committed (or failed).
func (g *Group) Update(fn func(Tx) error) error {
	c := &groupCall{fn: fn}
	g.calls.Do(c)
	return c.err
}

// Stats returns how many calls of Update there were and how many write
// transactions ran them (a group with a failing function takes more than
// one).
func (g *Group) Stats() (calls, transactions uint64) {
	calls, _ = g.calls.Stats()
	return calls, g.transactions.Load()
}

// run commits batch in one transaction; a function that fails is taken
// out, the ones before it committed together, then it alone, then the
// ones after it.
func (g *Group) run(batch []*groupCall) {
	for len(batch) > 0 {
		failed := -1
		g.transactions.Add(1)
		err := g.db.Update(func(tx Tx) error {
			for i, c := range batch {
				if err := c.call(tx); err != nil {
					failed = i
					return err
				}
			}
			return nil
		})
		switch {
		case err == nil:
			finish(batch, nil)
			return
		case failed < 0 || len(batch) == 1:
			// The commit failed (or a read the transaction remembers),
			// or the one function did: that is everyone's answer.
			finish(batch, err)
			return
		}
		g.run(batch[:failed])
		solo := batch[failed]
		g.transactions.Add(1)
		finish([]*groupCall{solo}, g.db.Update(solo.call))
		batch = batch[failed+1:]
	}
}

// call runs the function; a panic in it is its error, since it runs on
// another caller's goroutine, whose panic would leave every caller of the
// group waiting.
func (c *groupCall) call(tx Tx) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("kv: panic in a grouped transaction: %v", r)
		}
	}()
	return c.fn(tx)
}

func finish(calls []*groupCall, err error) {
	for _, c := range calls {
		c.err = err
	}
}
