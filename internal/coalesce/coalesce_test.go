package coalesce

import (
	"fmt"
	"runtime"
	"slices"
	"sync"
	"testing"
)

// recorder is a run function that records its batches; when hold is set,
// the next batch waits inside run until it is closed.
type recorder struct {
	mu      sync.Mutex
	batches [][]int
	hold    chan struct{}
	running chan struct{} // closed when a held batch is inside run
}

func (r *recorder) run(batch []int) {
	r.mu.Lock()
	r.batches = append(r.batches, slices.Clone(batch))
	h := r.hold
	r.hold = nil
	r.mu.Unlock()
	if h != nil {
		close(r.running)
		<-h
	}
}

func (r *recorder) got() [][]int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.batches)
}

// queued waits until b has counted n calls.
func queued(b *Batcher[int], n uint64) {
	for {
		if calls, _ := b.Stats(); calls >= n {
			return
		}
		runtime.Gosched()
	}
}

// TestLoneCallRunsAtOnce: with nothing running, Do runs its batch of one
// on the caller's goroutine before returning.
func TestLoneCallRunsAtOnce(t *testing.T) {
	r := &recorder{}
	b := New(r.run)
	for i := range 3 {
		b.Do(i)
		if got := r.got(); len(got) != i+1 || !slices.Equal(got[i], []int{i}) {
			t.Fatalf("after Do(%d): batches %v", i, got)
		}
	}
	if calls, batches := b.Stats(); calls != 3 || batches != 3 {
		t.Errorf("Stats = %d, %d, want 3, 3", calls, batches)
	}
}

// TestArrivalsShareTheNextBatch: the calls arriving while a batch runs are
// run together, in arrival order, by one next batch, and none of them
// returns before that batch has run.
func TestArrivalsShareTheNextBatch(t *testing.T) {
	hold := make(chan struct{})
	r := &recorder{hold: hold, running: make(chan struct{})}
	b := New(r.run)
	first := make(chan struct{})
	go func() { b.Do(0); close(first) }()
	<-r.running

	const n = 8
	returned := make(chan int, n)
	for i := 1; i <= n; i++ {
		go func() { b.Do(i); returned <- i }()
		queued(b, uint64(i)+1) // in this order
	}
	select {
	case i := <-returned:
		t.Fatalf("Do(%d) returned while the batch before its own was running", i)
	case <-first:
		t.Fatal("the first Do returned before its batch finished")
	default:
	}
	close(hold)
	<-first
	for range n {
		<-returned
	}
	want := [][]int{{0}, {1, 2, 3, 4, 5, 6, 7, 8}}
	if got := r.got(); !slices.EqualFunc(got, want, slices.Equal) {
		t.Errorf("batches %v, want %v", got, want)
	}
	if calls, batches := b.Stats(); calls != n+1 || batches != 2 {
		t.Errorf("Stats = %d, %d, want %d, 2", calls, batches, n+1)
	}
}

// TestDoWaitsForItsBatch: each Do returns after run has seen its item,
// whatever the interleaving, under many goroutines.
func TestDoWaitsForItsBatch(t *testing.T) {
	var (
		mu   sync.Mutex
		seen = map[int]bool{}
	)
	b := New(func(batch []int) {
		runtime.Gosched() // let others queue
		mu.Lock()
		for _, i := range batch {
			if seen[i] {
				panic(fmt.Sprint("item ", i, " run twice"))
			}
			seen[i] = true
		}
		mu.Unlock()
	})
	var wg sync.WaitGroup
	const goroutines, each = 64, 50
	for g := range goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range each {
				i := g*each + j
				b.Do(i)
				mu.Lock()
				ok := seen[i]
				mu.Unlock()
				if !ok {
					t.Errorf("Do(%d) returned before its batch ran", i)
				}
			}
		}()
	}
	wg.Wait()
	calls, batches := b.Stats()
	if calls != goroutines*each || len(seen) != goroutines*each {
		t.Errorf("%d calls, %d items run, want %d", calls, len(seen), goroutines*each)
	}
	t.Logf("%d batches for %d calls", batches, calls)
}

// TestPanicReachesItsBatch: a run that panics makes every Do of its batch
// panic, and the batches after it still run.
func TestPanicReachesItsBatch(t *testing.T) {
	hold := make(chan struct{})
	running := make(chan struct{})
	var later []int
	b := New(func(batch []int) {
		if batch[0] == 0 {
			close(running)
			<-hold
			return
		}
		if batch[0] == 1 {
			panic("boom")
		}
		later = append(later, batch...)
	})
	go b.Do(0)
	<-running
	panics := make(chan any, 2)
	for i := 1; i <= 2; i++ {
		go func() {
			defer func() { panics <- recover() }()
			b.Do(i)
		}()
		queued(b, uint64(i)+1)
	}
	close(hold)
	for range 2 {
		if p := <-panics; p != "boom" {
			t.Errorf("Do of the panicking batch: recovered %v, want boom", p)
		}
	}
	b.Do(3)
	if !slices.Equal(later, []int{3}) {
		t.Errorf("after the panic, ran %v, want [3]", later)
	}
}
