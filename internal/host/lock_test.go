package host

import (
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/bos55/concordia/internal/hostverb"
)

// TestLockHeldReadsTheTable: the holder test sees a lock another open file
// holds, and a free lock as free, without taking it.
func TestLockHeldReadsTheTable(t *testing.T) {
	o := Options{StateDir: t.TempDir()}
	if lockHolder(o) != nil {
		t.Fatal("no lock file: reported held")
	}
	f, err := lockHost(o, &hostverb.Holder{ID: "d1"})
	if err != nil {
		t.Fatal(err)
	}
	if h := lockHolder(o); h == nil || h.ID != "d1" {
		t.Fatalf("held lock: holder %+v, want d1", h)
	}
	f.Close()
	if h := lockHolder(o); h != nil {
		t.Fatalf("released lock: holder %+v", h)
	}
}

// TestLockNotRefusedByStatus: many status and wait probes at once never
// make a deploy's lock fail (the probes used to take the lock for an
// instant, which refused a deploy arriving in it as "locked").
func TestLockNotRefusedByStatus(t *testing.T) {
	o := Options{StateDir: t.TempDir()}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 4 {
		repeatUntil(&wg, stop, func() { lockHolder(o) })
	}
	defer func() { close(stop); wg.Wait() }()
	for i := range 300 {
		f, err := lockHost(o, &hostverb.Holder{ID: "d"})
		if err != nil {
			t.Fatalf("attempt %d: %v", i, err)
		}
		f.Close()
	}
}

// TestLockStillRefusesAHolder: the lock itself still excludes a second
// deploy, naming the first.
func TestLockStillRefusesAHolder(t *testing.T) {
	o := Options{StateDir: t.TempDir()}
	f, err := lockHost(o, &hostverb.Holder{ID: "first"})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	_, err = lockHost(o, &hostverb.Holder{ID: "second"})
	var le *LockedError
	if !asLocked(err, &le) || le.Holder == nil || le.Holder.ID != "first" {
		t.Fatalf("second lock: %v, want LockedError naming first", err)
	}
}

func asLocked(err error, le **LockedError) bool {
	e, ok := err.(*LockedError)
	*le = e
	return ok
}

func TestFlockedIn(t *testing.T) {
	table := []byte("1: POSIX  ADVISORY  WRITE 99 08:01:77 0 EOF\n" +
		"2: FLOCK  ADVISORY  WRITE 1234 fd:01:5678 0 EOF\n" +
		"2: -> FLOCK  ADVISORY  WRITE 1235 08:01:42 0 EOF\n")
	dev := uint64(0xfd<<8 | 0x01)
	for _, c := range []struct {
		dev, ino uint64
		want     bool
	}{
		{dev, 5678, true},
		{dev, 567, false},
		{0x0801, 77, false}, // a POSIX lock is not ours
		{0x0801, 42, false}, // a waiter holds nothing
	} {
		if got := flockedIn(table, c.dev, c.ino); got != c.want {
			t.Errorf("flockedIn(%x, %d) = %v, want %v", c.dev, c.ino, got, c.want)
		}
	}
}

// TestLockHeldFallback: without the table the probe answers.
func TestLockHeldFallback(t *testing.T) {
	old := procLocks
	procLocks = filepath.Join(t.TempDir(), "missing")
	defer func() { procLocks = old }()
	path := filepath.Join(t.TempDir(), "lock")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if lockHeld(path) {
		t.Fatal("free lock reported held")
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	if !lockHeld(path) {
		t.Fatal("held lock reported free")
	}
}

// TestLockWaitsForAFinishedWorker: a deploy's record is final a moment
// before its worker lets go of the lock; the next verb waits that moment
// out, while a deploy still running refuses at once.
func TestLockWaitsForAFinishedWorker(t *testing.T) {
	o := Options{StateDir: t.TempDir()}
	rec := &hostverb.Record{ID: "done1", Mode: hostverb.Test}
	rec.Set(hostverb.Activating, "")
	if err := create(o, rec); err != nil {
		t.Fatal(err)
	}
	f, err := lockHost(o, &hostverb.Holder{ID: "done1"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := lockHost(o, &hostverb.Holder{ID: "next"}); err == nil {
		t.Fatal("took the lock of a running deploy")
	}
	if _, err := update(o, "done1", func(r *hostverb.Record) error { r.Set(hostverb.Failed, "refused"); return nil }); err != nil {
		t.Fatal(err)
	}
	released := make(chan struct{})
	go func() {
		time.Sleep(300 * time.Millisecond)
		f.Close()
		close(released)
	}()
	g, err := lockHost(o, &hostverb.Holder{ID: "next"})
	if err != nil {
		t.Fatalf("lock after a finished deploy: %v", err)
	}
	<-released
	g.Close()
}

// TestLockSeenUnderChurn: while other files are locked and unlocked
// without pause, a held host lock is seen held every time, both by the
// table check and by the worker's own check. /proc/locks is handed out one
// read at a time, each resuming at a line number, so a table read in small
// pieces skips lines as locks come and go: what a 100-host deploy on one
// machine hit ("the deploy's worker died" while it ran). The count of
// misses of a plain os.ReadFile is logged to show the tearing.
func TestLockSeenUnderChurn(t *testing.T) {
	o := Options{StateDir: t.TempDir()}
	lock, err := lockHost(o, &hostverb.Holder{ID: "d1"})
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close()
	path := filepath.Join(o.StateDir, "lock")
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	churn := t.TempDir()
	for i := range 24 {
		f, err := os.Create(filepath.Join(churn, fmt.Sprint(i)))
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		repeatUntil(&wg, stop, func() {
			syscall.Flock(int(f.Fd()), syscall.LOCK_EX)
			syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		})
	}
	// Some locks stay held, so the table needs several of os.ReadFile's
	// small reads whatever else the machine holds, and still fits in the
	// one read of a page that readLockTable takes on a quiet machine.
	for i := range 40 {
		f, err := os.Create(filepath.Join(churn, fmt.Sprint("held", i)))
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
			t.Fatal(err)
		}
	}
	plainMisses := 0
	for i := range 500 {
		if table, err := os.ReadFile(procLocks); err == nil && !flockedIn(table, uint64(st.Dev), st.Ino) {
			plainMisses++
		}
		// One read is one snapshot; a longer table (other tests' locks)
		// is what lockHeld reads again and the worker check is exact for.
		if table, reads, err := readLockTable(); err == nil && reads == 1 && !flockedIn(table, uint64(st.Dev), st.Ino) {
			t.Fatalf("check %d: a table of one read (%d bytes) lacks the held lock", i, len(table))
		}
		if held, ok := workerHolds(os.Getpid(), path); !ok || !held {
			t.Fatalf("check %d: workerHolds = %v, %v; want held", i, held, ok)
		}
		if workerGone(o, "d1", os.Getpid()) {
			t.Fatalf("check %d: a live worker holding the lock reported gone", i)
		}
	}
	close(stop)
	wg.Wait()
	t.Logf("a plain os.ReadFile of %s missed the held lock %d times in 500", procLocks, plainMisses)
	if !workerGone(o, "d2", os.Getpid()) {
		t.Error("the lock is held for d1: worker of d2 reported alive")
	}
	lock.Close()
	if held, ok := workerHolds(os.Getpid(), path); !ok || held {
		t.Errorf("released lock: workerHolds = %v, %v", held, ok)
	}
	if !workerGone(o, "d1", os.Getpid()) {
		t.Error("released lock: worker reported alive")
	}
}

// repeatUntil runs f over and over in a goroutine of wg until stop closes.
func repeatUntil(wg *sync.WaitGroup, stop <-chan struct{}, f func()) {
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
				f()
			}
		}
	}()
}
