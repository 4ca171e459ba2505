// Package boundedfs gives files a guest can make grow a hard size cap.
//
// A guest may own its kernel, and it can make the host processes that
// serve it (QEMU, virtiofsd) write without end: to the console, or to a
// log. The runtime's state lives on /run, in RAM, so an unbounded file is
// a way to exhaust host memory. Such files live on a tmpfs of their own,
// of a fixed size: once it is full, writes fail with ENOSPC and nothing
// grows further, whatever process writes, for however long it lives.
//
// The alternatives do not bound it: a copier in the starting process dies
// with it while QEMU and virtiofsd outlive it, and RLIMIT_FSIZE would also
// cap the guest's disks and shared files, which the same processes write.
//
// Mounting needs CAP_SYS_ADMIN. A mount made here must be unmounted
// (Unmount, or the runtime's removal of a sandbox directory, which
// unmounts everything below it) before its directory is removed.
package boundedfs

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/cocoon-runtime/cocoon/internal/flock"
	"golang.org/x/sys/unix"
)

// Mount mounts a tmpfs of size bytes and at most inodes files (0: no
// limit but the kernel's) at dir, mode 0700, without devices, set-user-ID
// or executables, creating dir. A tmpfs already mounted there is left as
// it is (with its size); another file system mounted there is an error.
func Mount(dir string, size int64, inodes int) error {
	if size <= 0 {
		return fmt.Errorf("bounded dir %s: size %d", dir, size)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("bounded dir: %w", err)
	}
	if mounted, err := isMountPoint(dir); err != nil || mounted {
		return err
	}
	opts := fmt.Sprintf("size=%d,mode=0700", size)
	if inodes > 0 {
		opts += fmt.Sprintf(",nr_inodes=%d", inodes)
	}
	if err := unix.Mount("tmpfs", dir, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, opts); err != nil {
		return fmt.Errorf("mount tmpfs of %d bytes on %s: %w", size, dir, err)
	}
	return nil
}

// MountShared is Mount for a directory that several processes may mount
// at once (such as the tmpfs of VM memory): a lock file beside dir makes
// the check and the mount one step, so that it is mounted once.
func MountShared(ctx context.Context, dir string, size int64) error {
	if err := os.MkdirAll(filepath.Dir(dir), 0o700); err != nil {
		return fmt.Errorf("bounded dir: %w", err)
	}
	lock, err := flock.Lock(ctx, filepath.Join(filepath.Dir(dir), "."+filepath.Base(dir)+".lock"), unix.LOCK_EX)
	if err != nil {
		return fmt.Errorf("bounded dir %s: %w", dir, err)
	}
	defer lock.Close()
	return Mount(dir, size, 0)
}

// Unmount unmounts what Mount mounted at dir, if anything.
func Unmount(dir string) error {
	mounted, err := isMountPoint(dir)
	if err != nil || !mounted {
		return err
	}
	if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("unmount %s: %w", dir, err)
	}
	return nil
}

// isMountPoint reports whether a tmpfs is mounted at dir (the root of a
// mount, bind mounts included); false when dir does not exist. A mount of
// another file system there is an error.
func isMountPoint(dir string) (bool, error) {
	var st unix.Statx_t
	if err := unix.Statx(unix.AT_FDCWD, dir, unix.AT_SYMLINK_NOFOLLOW, 0, &st); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return false, nil
		}
		return false, fmt.Errorf("bounded dir: %w", err)
	}
	if st.Attributes_mask&unix.STATX_ATTR_MOUNT_ROOT == 0 {
		return false, fmt.Errorf("bounded dir %s: the kernel does not report mount points", dir)
	}
	if st.Attributes&unix.STATX_ATTR_MOUNT_ROOT == 0 {
		return false, nil
	}
	var fs unix.Statfs_t
	if err := unix.Statfs(dir, &fs); err != nil {
		return false, fmt.Errorf("bounded dir: %w", err)
	}
	if fs.Type != unix.TMPFS_MAGIC {
		return false, fmt.Errorf("bounded dir %s: a file system other than tmpfs is mounted there", dir)
	}
	return true, nil
}

// LogDir is where OpenLog keeps the log at path: a directory beside it.
func LogDir(path string) string { return path + ".d" }

// logInodes is how many files a log's tmpfs holds: the log, with room.
const logInodes = 4

// OpenLog creates (or truncates) a log file that never grows past limit
// bytes, for a child process's output. The file lives on a tmpfs of its
// own at LogDir(path); path itself is a symbolic link to it, so the log
// reads as before.
func OpenLog(path string, limit int64) (*os.File, error) {
	dir := LogDir(path)
	if err := Mount(dir, limit, logInodes); err != nil {
		return nil, fmt.Errorf("log %s: %w", path, err)
	}
	name := filepath.Join(dir, filepath.Base(path))
	f, err := os.OpenFile(name, os.O_CREATE|os.O_WRONLY|os.O_TRUNC|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("log %s: %w", path, err)
	}
	target := filepath.Join(filepath.Base(dir), filepath.Base(path))
	if cur, err := os.Readlink(path); err != nil || cur != target {
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			f.Close()
			return nil, fmt.Errorf("log %s: %w", path, err)
		}
		if err := os.Symlink(target, path); err != nil {
			f.Close()
			return nil, fmt.Errorf("log %s: %w", path, err)
		}
	}
	return f, nil
}
