// Package tmpfs mounts the size-limited tmpfs file systems Cocoon keeps
// guest memory on, so that guests filling their memory files fill that
// file system and not one the whole host shares (such as /run).
package tmpfs

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/cocoon-runtime/cocoon/internal/flock"
	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"
)

// Ensure makes dir a mount point of a tmpfs of sizeMiB MiB, mode 0700,
// without devices, set-user-ID or executables, unless a tmpfs is already
// mounted there (by an earlier call, of this or another process): Ensure
// is idempotent, and an existing mount keeps its size. A file system of
// another type mounted at dir is an error.
func Ensure(ctx context.Context, dir string, sizeMiB uint32) error {
	if sizeMiB == 0 {
		return fmt.Errorf("tmpfs %s: size 0", dir)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("tmpfs %s: %w", dir, err)
	}
	// Two processes checking at once would both mount. (mountinfo lists
	// stacked mounts in mount order: the last one is visible.)
	lock, err := flock.Lock(ctx, filepath.Join(filepath.Dir(dir), "."+filepath.Base(dir)+".lock"), unix.LOCK_EX)
	if err != nil {
		return fmt.Errorf("tmpfs %s: %w", dir, err)
	}
	defer lock.Close()
	real, err := filepath.EvalSymlinks(dir)
	if err != nil {
		return fmt.Errorf("tmpfs %s: %w", dir, err)
	}
	mounts, err := mountinfo.GetMounts(func(m *mountinfo.Info) (skip, stop bool) {
		return m.Mountpoint != real, false
	})
	if err != nil {
		return fmt.Errorf("tmpfs %s: %w", dir, err)
	}
	if n := len(mounts); n > 0 {
		if fs := mounts[n-1].FSType; fs != "tmpfs" {
			return fmt.Errorf("tmpfs %s: a %s file system is mounted there", dir, fs)
		}
		return nil
	}
	opts := fmt.Sprintf("size=%dm,mode=0700", sizeMiB)
	if err := unix.Mount("tmpfs", dir, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, opts); err != nil {
		return fmt.Errorf("mount tmpfs on %s: %w", dir, err)
	}
	return nil
}
