// Package safefs creates, mounts onto and removes host paths without
// following symlinks and without crossing mount points.
//
// The host prepares mount targets in trees that a guest must never be able
// to redirect. Every path here is resolved one component at a time with
// openat2(RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS|RESOLVE_NO_XDEV), so a symlink,
// a ".." or a mount planted on the way fails the operation instead of
// taking it somewhere else, and removal stops at mount points instead of
// deleting what is mounted there.
package safefs

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// ErrCrossesMount is returned when an operation would cross a mount point.
var ErrCrossesMount = errors.New("crosses a mount point")

// resolveFlags confine a lookup to the directory it starts from.
const resolveFlags = unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_XDEV | unix.RESOLVE_NO_MAGICLINKS

// openat opens name below dirfd with resolveFlags.
func openat(dirfd int, name string, flags int, mode uint32) (int, error) {
	for {
		fd, err := unix.Openat2(dirfd, name, &unix.OpenHow{Flags: uint64(flags | unix.O_CLOEXEC | unix.O_NOFOLLOW), Mode: uint64(mode), Resolve: resolveFlags})
		if errors.Is(err, unix.EINTR) || errors.Is(err, unix.EAGAIN) {
			continue
		}
		if errors.Is(err, unix.EXDEV) {
			return -1, fmt.Errorf("open %s: %w", name, ErrCrossesMount)
		}
		return fd, err
	}
}

// components splits rel, a relative path, into its names, refusing empty,
// absolute and ".." paths.
func components(rel string) ([]string, error) {
	if rel == "" || !filepath.IsLocal(rel) || filepath.Clean(rel) != rel {
		return nil, fmt.Errorf("path %q: want a clean relative path", rel)
	}
	return strings.Split(rel, "/"), nil
}

// OpenRoot opens the directory dir, which must not be a symlink, as the
// root of later lookups. The caller closes the returned descriptor.
func OpenRoot(dir string) (int, error) {
	fd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("open %s: %w", dir, err)
	}
	return fd, nil
}

// Kind of a new mount target.
type Kind int

const (
	Dir Kind = iota
	File
)

// CreateTarget creates rel below root, with the directories leading to it,
// as a new empty directory or file, and returns an O_PATH descriptor of it
// (to mount onto). It fails if rel exists already or if anything on the
// way is a symlink or a mount point.
func CreateTarget(root int, rel string, kind Kind) (int, error) {
	names, err := components(rel)
	if err != nil {
		return -1, err
	}
	dir, err := unix.Dup(root)
	if err != nil {
		return -1, err
	}
	defer func() { unix.Close(dir) }()
	for _, name := range names[:len(names)-1] {
		if err := unix.Mkdirat(dir, name, 0o755); err != nil && !errors.Is(err, unix.EEXIST) {
			return -1, fmt.Errorf("create %s: %w", rel, err)
		}
		next, err := openat(dir, name, unix.O_PATH|unix.O_DIRECTORY, 0)
		if err != nil {
			return -1, fmt.Errorf("create %s: %w", rel, err)
		}
		unix.Close(dir)
		dir = next
	}
	leaf := names[len(names)-1]
	switch kind {
	case Dir:
		if err := unix.Mkdirat(dir, leaf, 0o755); err != nil {
			return -1, fmt.Errorf("create %s: %w", rel, err)
		}
	case File:
		fd, err := openat(dir, leaf, unix.O_CREAT|unix.O_EXCL|unix.O_WRONLY, 0o600)
		if err != nil {
			return -1, fmt.Errorf("create %s: %w", rel, err)
		}
		unix.Close(fd)
	}
	flags := unix.O_PATH
	if kind == Dir {
		flags |= unix.O_DIRECTORY
	}
	fd, err := openat(dir, leaf, flags, 0)
	if err != nil {
		return -1, fmt.Errorf("create %s: %w", rel, err)
	}
	return fd, nil
}

// RemoveAll removes path and everything below it, like os.RemoveAll, but
// never follows a symlink and never crosses a mount point: a directory or
// file that is a mount point (or is below one) makes it fail with
// ErrCrossesMount or EBUSY, leaving what is mounted untouched. A missing
// path is not an error.
func RemoveAll(path string) error {
	path = filepath.Clean(path)
	parent, name := filepath.Dir(path), filepath.Base(path)
	if name == "/" || name == "." || name == ".." {
		return fmt.Errorf("remove %s: refusing", path)
	}
	pfd, err := unix.Open(parent, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if errors.Is(err, unix.ENOENT) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("remove %s: %w", path, err)
	}
	defer unix.Close(pfd)
	if err := removeAt(pfd, name); err != nil {
		return fmt.Errorf("remove %s: %w", path, err)
	}
	return nil
}

// removeAt removes name below the directory dirfd, recursively.
func removeAt(dirfd int, name string) error {
	err := unix.Unlinkat(dirfd, name, 0)
	switch {
	case err == nil, errors.Is(err, unix.ENOENT):
		return nil
	case errors.Is(err, unix.EBUSY):
		return fmt.Errorf("%s: %w", name, ErrCrossesMount)
	case !errors.Is(err, unix.EISDIR) && !errors.Is(err, unix.EPERM):
		return fmt.Errorf("%s: %w", name, err)
	}
	// A directory (unlink of a directory fails with EISDIR, or EPERM on
	// some file systems). Opening it fails if it is a mount point.
	fd, err := openat(dirfd, name, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if errors.Is(err, unix.ENOENT) {
		return nil
	}
	if err != nil {
		return err
	}
	d := os.NewFile(uintptr(fd), name)
	names, err := d.Readdirnames(-1)
	if err != nil {
		d.Close()
		return fmt.Errorf("%s: %w", name, err)
	}
	for _, n := range names {
		if err := removeAt(fd, n); err != nil {
			d.Close()
			return fmt.Errorf("%s/%w", name, err)
		}
	}
	d.Close()
	if err := unix.Unlinkat(dirfd, name, unix.AT_REMOVEDIR); err != nil && !errors.Is(err, unix.ENOENT) {
		if errors.Is(err, unix.EBUSY) {
			return fmt.Errorf("%s: %w", name, ErrCrossesMount)
		}
		return fmt.Errorf("%s: %w", name, err)
	}
	return nil
}
