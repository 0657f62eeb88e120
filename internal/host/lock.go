package host

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/bos55/concordia/internal/hostverb"
)

// LockedError is returned when another deploy holds the lock.
type LockedError struct{ Holder *hostverb.Holder }

func (e *LockedError) Error() string {
	h := e.Holder
	if h == nil {
		return hostverb.ErrLocked.Error() + " (holder unknown)"
	}
	return fmt.Sprintf("%v: deploy %s (mode %s, %s) started %s", hostverb.ErrLocked, h.ID, h.Mode, h.Path, h.Started.Format(time.RFC3339))
}

func (e *LockedError) Unwrap() error { return hostverb.ErrLocked }

// lockHost takes the host lock (a flock on <state dir>/lock) and records h as
// its holder. The lock lives as long as the returned file's open file
// description, so handing the file to the watchdog process keeps the host
// locked until the deploy ends, and a crash can never leave it locked.
func lockHost(o Options, h *hostverb.Holder) (*os.File, error) {
	if err := os.MkdirAll(o.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("create state dir: %w", err)
	}
	f, err := os.OpenFile(filepath.Join(o.StateDir, "lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open lock: %w", err)
	}
	// Nothing but a deploy or a rollback ever takes this lock (lockHolder
	// reads the kernel's lock table instead of probing it), so a refusal
	// means another one holds the host, unless that deploy has finished:
	// its record is final before its worker exits and lets go, so the
	// verb that comes right after it (a reboot after a boot deploy, the
	// next deploy) waits that moment out instead of being refused.
	deadline := time.Now().Add(finishingWorker)
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			break
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("lock: %w", err)
		}
		holder := readHolder(o)
		if time.Now().After(deadline) || !finished(o, holder) {
			f.Close()
			return nil, &LockedError{Holder: holder}
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := writeJSON(filepath.Join(o.StateDir, "holder.json"), h); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// finishingWorker bounds the wait for a finished deploy's worker to exit.
const finishingWorker = 10 * time.Second

// finished reports whether the holder is a deploy whose record is final.
func finished(o Options, h *hostverb.Holder) bool {
	if h == nil || hostverb.ValidID(h.ID) != nil {
		return false
	}
	r, err := Load(o, h.ID)
	return err == nil && r.State.Final()
}

func readHolder(o Options) *hostverb.Holder {
	b, err := os.ReadFile(filepath.Join(o.StateDir, "holder.json"))
	if err != nil {
		return nil
	}
	var h hostverb.Holder
	if json.Unmarshal(b, &h) != nil {
		return nil
	}
	return &h
}

// lockHolder returns the current holder, or nil when the host is not locked.
func lockHolder(o Options) *hostverb.Holder {
	if !lockHeld(filepath.Join(o.StateDir, "lock")) {
		return nil
	}
	if h := readHolder(o); h != nil {
		return h
	}
	return &hostverb.Holder{ID: "unknown"}
}

// procLocks is the kernel's table of file locks.
var procLocks = "/proc/locks"

// lockHeld reports whether anyone holds a flock on the file at path. It
// reads /proc/locks rather than trying the lock: a probe holds the lock
// for an instant, and a deploy taking it in that instant would be refused
// as "locked" (status and wait ask often; under load the instant grows).
// When the table cannot be read it falls back to the probe.
//
// The table is not one snapshot: each read(2) of it is taken under the
// kernel's lock, but the next read resumes at a line number, so a lock
// released between two reads shifts the rest up and a line is skipped.
// os.ReadFile's first reads are of 512 bytes and a little more, which a
// fleet host's table (nix-daemon's and SQLite's locks, the agent's)
// outgrows, and under load a running deploy's lock went missing that way.
// So the table is read a page per read (the most the kernel gives), and a
// table longer than that which lacks the lock is read again before the
// lock counts as free. The worker's own check (workerHolds) is exact.
func lockHeld(path string) bool {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return false
	}
	for try := 0; ; try++ {
		table, reads, err := readLockTable()
		if err != nil {
			return probeHeld(path)
		}
		if flockedIn(table, uint64(st.Dev), st.Ino) {
			return true
		}
		if reads <= 1 || try == 2 {
			return false
		}
	}
}

// readLockTable reads procLocks with as few reads as the kernel allows and
// says how many it took (more than one: the table may be torn).
func readLockTable() (table []byte, reads int, err error) {
	f, err := os.Open(procLocks)
	if err != nil {
		return nil, 0, err
	}
	defer f.Close()
	buf := make([]byte, 0, 64<<10)
	for {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		n, err := f.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if n > 0 {
			reads++
		}
		if err == io.EOF || (err == nil && n == 0) {
			return buf, reads, nil
		}
		if err != nil {
			return nil, reads, err
		}
	}
}

// workerHolds reports whether process pid holds a flock on the file at
// path, from /proc/<pid>/fdinfo: the kernel lists each open file's locks
// there, read under that file's own lock, so unlike /proc/locks the answer
// cannot skip a lock. ok is false when that cannot be read (no such
// process, no /proc, not ours to read): the caller falls back to the table.
func workerHolds(pid int, path string) (held, ok bool) {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return false, true // no lock file: nobody holds it
	}
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	fds, err := os.ReadDir(dir)
	if err != nil {
		return false, false
	}
	for _, fd := range fds {
		var fst syscall.Stat_t
		if err := syscall.Stat(filepath.Join(dir, fd.Name()), &fst); err != nil {
			if errors.Is(err, fs.ErrPermission) {
				return false, false // not ours to look into: no answer, not "free"
			}
			continue // closed since the listing
		}
		if fst.Dev != st.Dev || fst.Ino != st.Ino {
			continue
		}
		info, err := os.ReadFile(fmt.Sprintf("/proc/%d/fdinfo/%s", pid, fd.Name()))
		if err != nil {
			continue // closed since the listing
		}
		if flockedIn(fdinfoLocks(info), uint64(st.Dev), st.Ino) {
			return true, true
		}
	}
	return false, true
}

// fdinfoLocks returns the lock lines of an fdinfo file ("lock:\t1: FLOCK
// ADVISORY WRITE 1234 08:01:5678 0 EOF") in the format of /proc/locks.
func fdinfoLocks(info []byte) []byte {
	var out []byte
	for _, line := range strings.Split(string(info), "\n") {
		if rest, ok := strings.CutPrefix(line, "lock:"); ok {
			out = append(append(out, strings.TrimSpace(rest)...), '\n')
		}
	}
	return out
}

// flockedIn reports whether table (the format of /proc/locks) lists a
// granted FLOCK on the file dev:ino. Lines look like
//
//	3: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF
//
// with the device as hexadecimal major:minor; waiters ("3: -> FLOCK ...")
// hold nothing.
func flockedIn(table []byte, dev, ino uint64) bool {
	want := fmt.Sprintf("%02x:%02x:%d", unix.Major(dev), unix.Minor(dev), ino)
	for _, line := range strings.Split(string(table), "\n") {
		f := strings.Fields(line)
		if len(f) < 6 || f[1] != "FLOCK" {
			continue // a waiter ("->"), a POSIX lock, or no lock at all
		}
		if f[5] == want {
			return true
		}
	}
	return false
}

// probeHeld tries a shared lock for an instant (the fallback of lockHeld).
func probeHeld(path string) bool {
	f, err := os.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_SH|syscall.LOCK_NB); err == nil {
		syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		return false
	}
	return true
}
