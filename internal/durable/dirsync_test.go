package durable

import (
	"errors"
	"fmt"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// syncClock is a fake directory fsync that tells which fsync a caller got:
// fsync number i returns syncErr(i), and started[i] is the tick of the
// clock it started at, so a caller that read the clock before Sync can
// check its fsync started after it.
type syncClock struct {
	clock atomic.Int64
	mu    sync.Mutex
	start []int64
	hold  chan struct{} // when set, the next fsync waits for it
	began chan struct{} // closed when that held fsync has started
	slow  bool          // each fsync takes a little while after its start
}

type syncErr int

func (e syncErr) Error() string { return fmt.Sprint("fsync ", int(e)) }

func (c *syncClock) sync(string) error {
	c.mu.Lock()
	i := len(c.start)
	c.start = append(c.start, c.clock.Add(1))
	h := c.hold
	c.hold = nil
	c.mu.Unlock()
	if h != nil {
		close(c.began)
		<-h
	}
	if c.slow {
		time.Sleep(50 * time.Microsecond)
	}
	return syncErr(i)
}

// call calls Sync and checks that the fsync whose error it returned
// started after the call; it returns that fsync's number.
func (c *syncClock) call(t *testing.T, s *DirSyncer) int {
	arrived := c.clock.Add(1)
	var e syncErr
	if err := s.Sync(); !errors.As(err, &e) {
		t.Errorf("Sync: %v, want an fsync's error", err)
		return -1
	}
	c.mu.Lock()
	started := c.start[e]
	c.mu.Unlock()
	if started < arrived {
		t.Errorf("a Sync called at %d got fsync %d, which started at %d, before it", arrived, int(e), started)
	}
	return int(e)
}

// TestDirSyncerArrivalsShareTheNextSync: callers arriving while an fsync
// runs are not answered by it (it may have started before their renames)
// but all by one fsync after it, and each gets that fsync's error.
func TestDirSyncerArrivalsShareTheNextSync(t *testing.T) {
	hold := make(chan struct{})
	c := &syncClock{hold: hold, began: make(chan struct{})}
	s := newDirSyncer("d", c.sync)
	first := make(chan int, 1)
	go func() { first <- c.call(t, s) }()
	<-c.began

	const n = 10
	got := make(chan int, n)
	for range n {
		go func() { got <- c.call(t, s) }()
	}
	for deadline := time.Now().Add(5 * time.Second); ; {
		if calls, _ := s.Stats(); calls == n+1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the callers never queued behind the running fsync")
		}
		runtime.Gosched()
	}
	close(hold)
	if i := <-first; i != 0 {
		t.Errorf("first caller got fsync %d, want 0", i)
	}
	for range n {
		if i := <-got; i != 1 {
			t.Errorf("a caller arriving during fsync 0 got fsync %d, want 1 (the one after it)", i)
		}
	}
	if calls, syncs := s.Stats(); calls != n+1 || syncs != 2 {
		t.Errorf("Stats = %d calls, %d fsyncs, want %d, 2", calls, syncs, n+1)
	}
}

// TestDirSyncerUnderLoad: under many concurrent callers each Sync is
// answered by an fsync that started after it was called.
func TestDirSyncerUnderLoad(t *testing.T) {
	c := &syncClock{slow: true}
	s := newDirSyncer("d", c.sync)
	var wg sync.WaitGroup
	for range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 50 {
				c.call(t, s)
			}
		}()
	}
	wg.Wait()
	calls, syncs := s.Stats()
	t.Logf("%d fsyncs for %d calls", syncs, calls)
}

// TestDirSyncerReal: the real fsync of a directory, and its error when
// the directory is missing.
func TestDirSyncerReal(t *testing.T) {
	dir := t.TempDir()
	if err := NewDirSyncer(dir).Sync(); err != nil {
		t.Fatal(err)
	}
	if err := NewDirSyncer(filepath.Join(dir, "missing")).Sync(); err == nil {
		t.Fatal("fsync of a missing directory succeeded")
	}
}
