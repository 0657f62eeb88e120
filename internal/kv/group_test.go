package kv

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
)

// countDB counts Update transactions and runs them one at a time, as an
// index does; its Tx is a map that a failed transaction does not change.
type countDB struct {
	mu      sync.Mutex
	updates atomic.Int64
	data    map[string]int
	hold    chan struct{} // when set, the next Update waits for it
}

type mapTx struct{ m map[string]int }

func (*mapTx) Bucket([]byte) Bucket                           { return nil }
func (*mapTx) CreateBucketIfNotExists([]byte) (Bucket, error) { return nil, nil }
func (*mapTx) DeleteBucket([]byte) error                      { return nil }
func (*mapTx) Commit() error                                  { return nil }
func (*mapTx) Rollback() error                                { return nil }

func (d *countDB) View(func(Tx) error) error                    { return nil }
func (d *countDB) Begin(bool) (Tx, error)                       { return nil, nil }
func (d *countDB) Lock(context.Context, string) (func(), error) { return func() {}, nil }
func (d *countDB) Shared() bool                                 { return false }
func (d *countDB) Close() error                                 { return nil }

func (d *countDB) Update(fn func(Tx) error) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.updates.Add(1)
	if d.hold != nil {
		h := d.hold
		d.hold = nil
		<-h
	}
	tx := &mapTx{m: map[string]int{}}
	for k, v := range d.data {
		tx.m[k] = v
	}
	if err := fn(tx); err != nil {
		return err
	}
	d.data = tx.m
	return nil
}

func incr(key string) func(Tx) error {
	return func(tx Tx) error { tx.(*mapTx).m[key]++; return nil }
}

// queued waits until n calls wait in g's queue behind the one heldFirst
// holds in its transaction (a call is counted once it is queued).
func queued(g *Group, n int) {
	for {
		if calls, _ := g.Stats(); calls >= uint64(n)+1 {
			return
		}
		runtime.Gosched()
	}
}

// heldFirst is a group whose first call, "first", is inside its
// transaction and stays there until hold is closed; its answer comes on
// first.
func heldFirst() (db *countDB, g *Group, hold chan struct{}, first chan error) {
	hold = make(chan struct{})
	db = &countDB{data: map[string]int{}, hold: hold}
	g = NewGroup(db)
	first = make(chan error, 1)
	go func() { first <- g.Update(incr("first")) }()
	for db.updates.Load() == 0 {
		runtime.Gosched()
	}
	return db, g, hold, first
}

// TestGroupCommitsTogether: ten calls arriving while a transaction runs
// are committed by one more transaction, each returning after it, and
// each function ran exactly once.
func TestGroupCommitsTogether(t *testing.T) {
	db, g, hold, first := heldFirst()
	var wg sync.WaitGroup
	errs := make([]error, 10)
	for i := range errs {
		wg.Add(1)
		go func() { defer wg.Done(); errs[i] = g.Update(incr(fmt.Sprint("k", i))) }()
	}
	queued(g, 10)
	close(hold)
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("call %d: %v", i, err)
		}
	}
	if n := db.updates.Load(); n != 2 {
		t.Errorf("%d transactions for 11 calls, want 2 (one, then the ten that queued)", n)
	}
	if calls, txs := g.Stats(); calls != 11 || txs != 2 {
		t.Errorf("Stats = %d calls, %d transactions, want 11, 2", calls, txs)
	}
	for i := range errs {
		if db.data[fmt.Sprint("k", i)] != 1 {
			t.Errorf("k%d = %d, want 1", i, db.data[fmt.Sprint("k", i)])
		}
	}
	if db.data["first"] != 1 {
		t.Errorf("first = %d", db.data["first"])
	}
}

// TestGroupFailureIsItsOwn: a function that fails in a group gets its
// error; the others are committed, each once, and the failed one's writes
// are not. A panicking one is an error, not a hang.
func TestGroupFailureIsItsOwn(t *testing.T) {
	db, g, hold, first := heldFirst()
	refused := errors.New("refused")
	fns := []func(Tx) error{
		incr("a"),
		func(tx Tx) error { tx.(*mapTx).m["bad"]++; return refused },
		incr("b"),
		func(Tx) error { panic("boom") },
		incr("c"),
	}
	errs := make([]error, len(fns))
	var wg sync.WaitGroup
	for i, fn := range fns {
		queued(g, i) // in this order
		wg.Add(1)
		go func() { defer wg.Done(); errs[i] = g.Update(fn) }()
	}
	queued(g, len(fns))
	close(hold)
	<-first
	wg.Wait()
	for i, err := range errs {
		switch i {
		case 1:
			if !errors.Is(err, refused) {
				t.Errorf("failing call: %v, want its own error", err)
			}
		case 3:
			if err == nil {
				t.Error("panicking call: no error")
			}
		default:
			if err != nil {
				t.Errorf("call %d: %v", i, err)
			}
		}
	}
	for _, k := range []string{"first", "a", "b", "c"} {
		if db.data[k] != 1 {
			t.Errorf("%s = %d, want 1", k, db.data[k])
		}
	}
	if db.data["bad"] != 0 {
		t.Errorf("the failed call's write was committed")
	}
}

// TestGroupAlone: a lone call is one transaction, run at once, and a
// commit's error is the caller's.
func TestGroupAlone(t *testing.T) {
	db := &countDB{data: map[string]int{}}
	g := NewGroup(db)
	for i := 0; i < 3; i++ {
		if err := g.Update(incr("x")); err != nil {
			t.Fatal(err)
		}
	}
	if db.updates.Load() != 3 || db.data["x"] != 3 {
		t.Errorf("%d transactions, x = %d", db.updates.Load(), db.data["x"])
	}
}

// TestGroupUnderLoad: many callers at once, each increment lands once.
func TestGroupUnderLoad(t *testing.T) {
	db := &countDB{data: map[string]int{}}
	g := NewGroup(db)
	var wg sync.WaitGroup
	for i := 0; i < 64; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; j < 50; j++ {
				if err := g.Update(incr("n")); err != nil {
					t.Error(err)
				}
			}
		}()
	}
	wg.Wait()
	if db.data["n"] != 64*50 {
		t.Errorf("n = %d, want %d", db.data["n"], 64*50)
	}
	t.Logf("%d transactions for %d calls", db.updates.Load(), 64*50)
}
