package factory

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// A process waiting on a template's lock while another removes the
// template must end up holding the lock file at the path, never the
// deleted one: else it and a process creating the template anew would
// both hold "the" lock.
func TestLockWaiterSurvivesRemoval(t *testing.T) {
	f := testFactory(t, 4)
	ctx := context.Background()
	tp := fakeTemplate(t, f, "0000000000000abc", nil)
	dir := tp.dir
	holder, err := f.lock(ctx, tp, unix.LOCK_EX)
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan *os.File)
	go func() {
		f, err := f.lock(ctx, tp, unix.LOCK_EX)
		if err != nil {
			t.Error(err)
		}
		got <- f
	}()
	// The waiter blocks until the holder lets go; let it open the file and
	// start waiting first (no assertion depends on this, it only makes the
	// race this test is about the likely one).
	waitForLockers(t, filepath.Join(dir, lockFile), 2)
	// What prune and eviction do with a template they hold.
	if err := f.removeTemplate(ctx, tp, holder); err != nil {
		t.Fatal(err)
	}
	w := <-got
	if w == nil {
		return
	}
	defer w.Close()
	var a, b unix.Stat_t
	if err := unix.Fstat(int(w.Fd()), &a); err != nil {
		t.Fatal(err)
	}
	if err := unix.Stat(filepath.Join(dir, lockFile), &b); err != nil {
		t.Fatalf("the waiter holds a lock, but there is no lock file: %v", err)
	}
	if a.Ino != b.Ino || a.Dev != b.Dev {
		t.Fatal("the waiter holds the deleted lock file, not the one at the path")
	}
	// Whoever locks the template next must wait for the waiter.
	if l, err := f.lock(ctx, tp, unix.LOCK_EX|unix.LOCK_NB); err == nil {
		l.Close()
		t.Fatal("a second process took the lock the waiter holds")
	}
}

// waitForLockers waits until n open files of this process are the file
// at path (a waiter opens the lock file, then waits to lock it).
func waitForLockers(t *testing.T, path string, n int) {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	for range 5000 {
		fds, _ := os.ReadDir("/proc/self/fd")
		open := 0
		for _, fd := range fds {
			var fst unix.Stat_t
			if unix.Stat(filepath.Join("/proc/self/fd", fd.Name()), &fst) == nil && fst.Ino == st.Ino && fst.Dev == st.Dev {
				open++
			}
		}
		if open >= n {
			return
		}
		unix.Nanosleep(&unix.Timespec{Nsec: 1e6}, nil)
	}
	t.Fatalf("fewer than %d open files of %s", n, path)
}

// prune runs while another process waits for the template's lock (it
// was held by a third, restoring from it): whichever wins, the waiter
// ends up holding the lock file at the path.
func TestPruneWhileWaiting(t *testing.T) {
	f := testFactory(t, 4)
	ctx := context.Background()
	tp := fakeTemplate(t, f, "0000000000000def", nil) // stale: no sources
	reader, err := f.lock(ctx, tp, unix.LOCK_SH)
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan *os.File)
	go func() {
		l, err := f.lock(ctx, tp, unix.LOCK_EX)
		if err != nil {
			t.Error(err)
		}
		got <- l
	}()
	waitForLockers(t, tp.path(lockFile), 2)
	reader.Close()
	f.prune(ctx, "0000000000000001")
	w := <-got
	if w == nil {
		return
	}
	defer w.Close()
	var a, b unix.Stat_t
	if err := unix.Fstat(int(w.Fd()), &a); err != nil {
		t.Fatal(err)
	}
	if err := unix.Stat(tp.path(lockFile), &b); err != nil {
		t.Fatalf("the waiter holds a lock, but there is no lock file: %v", err)
	}
	if a.Ino != b.Ino || a.Dev != b.Dev {
		t.Fatal("the waiter holds the deleted lock file, not the one at the path")
	}
}
