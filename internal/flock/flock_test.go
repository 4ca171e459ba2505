package flock

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

func ino(t *testing.T, f *os.File) uint64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

// A waiter whose lock file the holder removes locks the file created at
// the path afterwards, and excludes others from it.
func TestWaiterOfRemovedLock(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "lock")
	holder, err := Lock(ctx, path, unix.LOCK_EX)
	if err != nil {
		t.Fatal(err)
	}
	oldIno := ino(t, holder)
	got := make(chan *os.File, 1)
	go func() {
		f, err := Lock(ctx, path, unix.LOCK_EX)
		if err != nil {
			t.Error(err)
		}
		got <- f
	}()
	// Remove once the waiter opened the old file and waits on it.
	for opens(oldIno) < 2 {
		unix.Nanosleep(&unix.Timespec{Nsec: 1e6}, nil)
	}
	if err := Remove(path, holder); err != nil {
		t.Fatal(err)
	}
	w := <-got
	if w == nil {
		t.FailNow()
	}
	defer w.Close()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatalf("the waiter holds a lock but no file is at the path: %v", err)
	}
	// (The number of the removed inode may be reused by now: compare with
	// the path only.)
	if got := ino(t, w); got != st.Ino {
		t.Fatalf("the waiter locked inode %d, the path holds %d", got, st.Ino)
	}
	if _, err := Lock(ctx, path, unix.LOCK_EX|unix.LOCK_NB); !errors.Is(err, ErrLocked) {
		t.Fatalf("a second locker: %v, want ErrLocked", err)
	}
	if _, err := Lock(ctx, path, unix.LOCK_SH|unix.LOCK_NB); !errors.Is(err, ErrLocked) {
		t.Fatalf("a shared locker: %v, want ErrLocked", err)
	}
}

// The race Lock exists for: a file opened before its removal and locked
// after it. Lock must not return such a lock.
func TestLockRechecksThePath(t *testing.T) {
	path := filepath.Join(t.TempDir(), "lock")
	f, err := Lock(context.Background(), path, unix.LOCK_EX)
	if err != nil {
		t.Fatal(err)
	}
	// Shared locks coexist; the holder's file is the one at the path.
	s, err := Lock(context.Background(), path, unix.LOCK_SH|unix.LOCK_NB)
	if err == nil {
		s.Close()
		t.Fatal("a shared lock while an exclusive one is held")
	}
	if !same(f, path) {
		t.Fatal("same: the locked file is not the one at the path")
	}
	os.Remove(path)
	if same(f, path) {
		t.Fatal("same: a removed file is still the one at the path")
	}
	// Remove of a file no longer at the path leaves the path alone.
	other, err := Lock(context.Background(), path, unix.LOCK_EX)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if err := Remove(path, f); err != nil {
		t.Fatal(err)
	}
	if !same(other, path) {
		t.Fatal("Remove with a stale file removed the live lock file")
	}
}

func TestLockHonoursContext(t *testing.T) {
	path := filepath.Join(t.TempDir(), "lock")
	f, err := Lock(context.Background(), path, unix.LOCK_EX)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := Lock(ctx, path, unix.LOCK_SH); !errors.Is(err, context.Canceled) {
		t.Fatalf("Lock with a done context on a held lock: %v", err)
	}
}

// opens counts this process's open files of inode ino.
func opens(ino uint64) int {
	fds, _ := os.ReadDir("/proc/self/fd")
	n := 0
	for _, fd := range fds {
		var st unix.Stat_t
		if unix.Stat(filepath.Join("/proc/self/fd", fd.Name()), &st) == nil && st.Ino == ino {
			n++
		}
	}
	return n
}
