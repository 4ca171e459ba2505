// Package flock takes flock(2) locks on lock files that their holder may
// delete.
//
// A process that waits on a lock file opens it first and then waits for
// the lock; if the holder deletes the file meanwhile, the waiter ends up
// holding a lock on a file no longer at the path, while a newcomer creates
// a new file there and locks that one: both believe they hold the lock.
// Lock therefore checks, once it holds the lock, that the file it locked
// is still the one at the path, and starts again if not; Remove deletes a
// lock file only while holding it, so every waiter notices.
package flock

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// ErrLocked is returned by Lock with LOCK_NB when another holds the lock.
var ErrLocked = errors.New("locked")

// pollInterval is how often a waiting Lock tries again: a blocking
// flock(2) cannot be cancelled, a poll stops when the context is done.
const pollInterval = 5 * time.Millisecond

// Lock opens the lock file at path, creating it, and takes the flock(2)
// lock how (LOCK_SH or LOCK_EX, with LOCK_NB to fail with ErrLocked
// instead of waiting). It waits until ctx is done. The returned file is
// the file at path while the lock is held; closing it releases the lock.
func Lock(ctx context.Context, path string, how int) (*os.File, error) {
	for {
		f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
		if err != nil {
			return nil, fmt.Errorf("lock %s: %w", path, err)
		}
		if err := flock(ctx, f, how); err != nil {
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", path, err)
		}
		if same(f, path) {
			return f, nil
		}
		// Deleted (and maybe created anew) while we waited: this lock
		// guards nothing.
		f.Close()
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("lock %s: %w", path, err)
		}
	}
}

func flock(ctx context.Context, f *os.File, how int) error {
	wait := how&unix.LOCK_NB == 0
	for {
		err := unix.Flock(int(f.Fd()), how|unix.LOCK_NB)
		if err == nil {
			return nil
		}
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if !errors.Is(err, unix.EWOULDBLOCK) {
			return err
		}
		if !wait {
			return ErrLocked
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(pollInterval):
		}
	}
}

// same reports whether the open file f is the file at path.
func same(f *os.File, path string) bool {
	var a, b unix.Stat_t
	if unix.Fstat(int(f.Fd()), &a) != nil || unix.Lstat(path, &b) != nil {
		return false
	}
	return a.Dev == b.Dev && a.Ino == b.Ino
}

// Remove deletes the lock file at path, which f, from Lock with LOCK_EX,
// holds, and then releases the lock by closing f. Processes waiting on
// the lock notice and lock the file at path anew. Remove does nothing to
// path if f is not the file there.
func Remove(path string, f *os.File) error {
	defer f.Close()
	if !same(f, path) {
		return nil
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove lock %s: %w", path, err)
	}
	return nil
}
