package storage

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"

	"github.com/cocoon-runtime/cocoon/internal/safefs"
	pathrs "github.com/cyphar/filepath-securejoin/pathrs-lite"
	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"
)

// Shared is a sandbox's shared file tree, in two views of one directory:
//
//   - Dir/host is the host's: the host creates mount targets there and
//     bind-mounts container root filesystems and volumes onto them. It is
//     never exported.
//   - Dir/export is what virtiofsd exports to the guest: a read-only bind
//     of Dir/host that receives its bind mounts (it is a slave of it).
//
// The guest can therefore write only inside the bind mounts the host made,
// as far as each allows, and never create, rename or replace an entry on a
// path the host resolves later (the guest may own its kernel and send any
// FUSE request): a symlink planted at a future mount target is impossible,
// not merely checked for.
type Shared struct {
	Dir string
}

// Subdirectories of a shared tree.
const (
	hostView   = "host"
	exportView = "export"
)

// HostDir is where the host creates mount targets.
func (s *Shared) HostDir() string { return filepath.Join(s.Dir, hostView) }

// ExportDir is the read-only view virtiofsd exports.
func (s *Shared) ExportDir() string { return filepath.Join(s.Dir, exportView) }

// NewShared creates the shared tree in dir, a new directory.
func NewShared(dir string) (_ *Shared, err error) {
	s := &Shared{Dir: dir}
	if err := os.Mkdir(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create shared dir: %w", err)
	}
	defer func() {
		if err != nil {
			s.Destroy()
		}
	}()
	host, export := s.HostDir(), s.ExportDir()
	for _, d := range []string{host, export} {
		if err := os.Mkdir(d, 0o755); err != nil {
			return nil, fmt.Errorf("create shared dir: %w", err)
		}
	}
	// host: a mount of its own, in a peer group of its own (private first,
	// so it does not join the group of the mount it is in).
	for _, step := range []struct {
		src, dst string
		flags    uintptr
	}{
		{host, host, unix.MS_BIND},
		{"", host, unix.MS_PRIVATE},
		{"", host, unix.MS_SHARED},
		// export: a bind of host, read-only, receiving host's mounts and
		// sending none back.
		{host, export, unix.MS_BIND},
		{"", export, unix.MS_BIND | unix.MS_REMOUNT | unix.MS_RDONLY | unix.MS_NOSUID | unix.MS_NODEV},
		{"", export, unix.MS_SLAVE},
	} {
		if err := unix.Mount(step.src, step.dst, "", step.flags, ""); err != nil {
			return nil, fmt.Errorf("set up shared dir %s (mount %q flags %#x): %w", step.dst, step.src, step.flags, err)
		}
	}
	return s, nil
}

// Access is what the guest may do with a bind mount.
type Access int

const (
	// ReadWrite lets the guest write.
	ReadWrite Access = iota
	// ReadOnly makes the bind read-only; mounts below its source keep their
	// own flags (runc's "ro").
	ReadOnly
	// RecursiveReadOnly makes the whole tree read-only, submounts too
	// (runc's "rro").
	RecursiveReadOnly
)

// validRel is the form of the paths below the shared tree that the host
// binds to: IDs and indexes joined by slashes.
// The first may begin with "_" (a directory no container ID can name).
var validRel = regexp.MustCompile(`^_?[a-zA-Z0-9][a-zA-Z0-9_.-]*(/[a-zA-Z0-9][a-zA-Z0-9_.-]*)*$`)

func checkRel(rel string) error {
	if !validRel.MatchString(rel) || strings.Contains(rel, "..") {
		return fmt.Errorf("%q is not a path below the shared dir", rel)
	}
	return nil
}

// Bind bind-mounts the host path src (a directory or a file, with the
// mounts below it) to rel below the shared tree, where rel must not exist
// yet. The bind is made as a detached mount, given its access, and only
// then attached, so the guest never sees it with more access than asked;
// the target is created and opened without following symlinks or
// crossing mounts.
func (s *Shared) Bind(src, rel string, access Access) error {
	return s.BindWith(src, rel, access, false)
}

// BindWith is Bind, and with private set the bind and the mounts below it
// are private: mounts the host makes below src later do not reach the
// guest (a spec's "private" or "rprivate" bind); otherwise the bind is a
// peer of src's mount (when that is shared) and they do.
func (s *Shared) BindWith(src, rel string, access Access, private bool) error {
	if err := checkRel(rel); err != nil {
		return fmt.Errorf("bind %s: %w", src, err)
	}
	// One lookup of src: the object opened is the one checked and the one
	// cloned, however src is swapped meanwhile (symlinks in src are
	// followed, as for any bind source).
	fd, err := unix.Open(src, unix.O_PATH|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("bind %s: %w", src, err)
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fmt.Errorf("bind %s: %w", src, err)
	}
	tree, err := unix.OpenTree(fd, "", unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC|unix.AT_RECURSIVE|unix.AT_EMPTY_PATH)
	if err != nil {
		return fmt.Errorf("bind %s: clone mount: %w", src, err)
	}
	defer unix.Close(tree)
	// No device node or set-uid file in the tree works on the host side
	// (virtiofsd opens files on the guest's behalf); then the access asked.
	if err := unix.MountSetattr(tree, "", unix.AT_EMPTY_PATH|unix.AT_RECURSIVE, &unix.MountAttr{Attr_set: unix.MOUNT_ATTR_NOSUID | unix.MOUNT_ATTR_NODEV}); err != nil {
		return fmt.Errorf("bind %s: set mount attributes: %w", src, err)
	}
	if access != ReadWrite {
		flags := uint(unix.AT_EMPTY_PATH)
		if access == RecursiveReadOnly {
			flags |= unix.AT_RECURSIVE
		}
		if err := unix.MountSetattr(tree, "", flags, &unix.MountAttr{Attr_set: unix.MOUNT_ATTR_RDONLY}); err != nil {
			return fmt.Errorf("bind %s: make read-only: %w", src, err)
		}
	}
	if private {
		if err := unix.MountSetattr(tree, "", unix.AT_EMPTY_PATH|unix.AT_RECURSIVE, &unix.MountAttr{Propagation: unix.MS_PRIVATE}); err != nil {
			return fmt.Errorf("bind %s: make private: %w", src, err)
		}
	}
	root, err := safefs.OpenRoot(s.HostDir())
	if err != nil {
		return fmt.Errorf("bind %s: %w", src, err)
	}
	defer unix.Close(root)
	kind := safefs.File
	if st.Mode&unix.S_IFMT == unix.S_IFDIR {
		kind = safefs.Dir
	}
	target, err := safefs.CreateTarget(root, rel, kind)
	if err != nil {
		return fmt.Errorf("bind %s: %w", src, err)
	}
	defer unix.Close(target)
	if err := unix.MoveMount(tree, "", target, "", unix.MOVE_MOUNT_F_EMPTY_PATH|unix.MOVE_MOUNT_T_EMPTY_PATH); err != nil {
		return fmt.Errorf("bind %s to %s: %w", src, rel, err)
	}
	return nil
}

// Release unmounts everything below rel and removes it.
func (s *Shared) Release(rel string) error {
	if err := checkRel(rel); err != nil {
		return fmt.Errorf("release: %w", err)
	}
	// The export's copies go with the host's binds; unmount any that did
	// not, so that the tree below can be removed.
	if err := UnmountAll(filepath.Join(s.HostDir(), rel)); err != nil {
		return err
	}
	if err := UnmountAll(filepath.Join(s.ExportDir(), rel)); err != nil {
		return err
	}
	return safefs.RemoveAll(filepath.Join(s.HostDir(), rel))
}

// Destroy unmounts the shared tree and everything in it, and removes it.
func (s *Shared) Destroy() error {
	return RemoveUnmounted(s.Dir)
}

// RemoveUnmounted unmounts everything at or below dir and then removes
// dir. The removal never crosses a mount point: a mount that appears
// meanwhile makes it fail instead of deleting what is mounted there (such
// as a container's rootfs or a volume on the host).
func RemoveUnmounted(dir string) error {
	if err := UnmountAll(dir); err != nil {
		return err
	}
	return safefs.RemoveAll(dir)
}

// UnmountAll unmounts every mount at or below dir, deepest first. The
// paths are the host's own (no guest can create entries where they lead).
func UnmountAll(dir string) error {
	dir = filepath.Clean(dir)
	infos, err := mountinfo.GetMounts(func(m *mountinfo.Info) (skip, stop bool) {
		return m.Mountpoint != dir && !strings.HasPrefix(m.Mountpoint, dir+"/"), false
	})
	if err != nil {
		return fmt.Errorf("unmount %s: %w", dir, err)
	}
	// Deepest first; a path mounted several times appears several times.
	sort.Slice(infos, func(i, j int) bool { return len(infos[i].Mountpoint) > len(infos[j].Mountpoint) })
	for _, m := range infos {
		if err := unix.Unmount(m.Mountpoint, unix.MNT_DETACH|unix.UMOUNT_NOFOLLOW); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("unmount %s: %w", m.Mountpoint, err)
		}
	}
	return nil
}

// MakeMountpoints creates, inside the root filesystem rootfs, each of
// dests (paths inside the container) that does not exist yet: a directory,
// or an empty file for the dests in files. The guest creates mount points
// itself when it can, but not in a root filesystem the host shares
// read-only (root.readonly): runc creates them before it makes the root
// read-only, and so does this, on the host. Symlinks in the image are
// resolved inside rootfs, never outside it.
func MakeMountpoints(rootfs string, dests []string, files map[string]bool) error {
	root, err := os.OpenFile(rootfs, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("mount points in %s: %w", rootfs, err)
	}
	defer root.Close()
	for _, dest := range dests {
		if err := makeMountpoint(root, dest, files[dest]); err != nil {
			return fmt.Errorf("mount point %s in %s: %w", dest, rootfs, err)
		}
	}
	return nil
}

func makeMountpoint(root *os.File, dest string, file bool) error {
	if f, err := pathrs.OpenatInRoot(root, dest); err == nil {
		f.Close()
		return nil // exists (whatever it is: the guest's mount decides)
	}
	dir := dest
	if file {
		dir = filepath.Dir(dest)
	}
	d, err := pathrs.MkdirAllHandle(root, dir, 0o755)
	if err != nil {
		return err
	}
	defer d.Close()
	if !file {
		return nil
	}
	fd, err := unix.Openat2(int(d.Fd()), filepath.Base(dest), &unix.OpenHow{
		Flags: unix.O_CREAT | unix.O_EXCL | unix.O_WRONLY | unix.O_NOFOLLOW | unix.O_CLOEXEC, Mode: 0o644,
		Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS,
	})
	if err != nil && !errors.Is(err, unix.EEXIST) {
		return err
	}
	if err == nil {
		unix.Close(fd)
	}
	return nil
}

// MaxSubmounts caps how many mounts below one bind source are announced to
// the guest.
const MaxSubmounts = 256

// Submounts returns the host's mount points strictly below src, relative
// to it, parents before their children: the mounts a bind of src (with
// its submounts) carries along. Only the first MaxSubmounts are returned.
func Submounts(src string) ([]string, error) {
	dir, err := filepath.EvalSymlinks(src)
	if err != nil {
		return nil, fmt.Errorf("submounts of %s: %w", src, err)
	}
	dir = filepath.Clean(dir)
	prefix := strings.TrimSuffix(dir, "/") + "/"
	infos, err := mountinfo.GetMounts(func(m *mountinfo.Info) (skip, stop bool) {
		return !strings.HasPrefix(m.Mountpoint, prefix), false
	})
	if err != nil {
		return nil, fmt.Errorf("submounts of %s: %w", src, err)
	}
	seen := map[string]bool{}
	var rels []string
	for _, m := range infos {
		rel, err := filepath.Rel(dir, m.Mountpoint)
		if err != nil || rel == "." || strings.HasPrefix(rel, "../") || seen[rel] {
			continue
		}
		seen[rel] = true
		rels = append(rels, rel)
	}
	sort.Slice(rels, func(i, j int) bool {
		if ci, cj := strings.Count(rels[i], "/"), strings.Count(rels[j], "/"); ci != cj {
			return ci < cj
		}
		return rels[i] < rels[j]
	})
	if len(rels) > MaxSubmounts {
		rels = rels[:MaxSubmounts]
	}
	return rels, nil
}
