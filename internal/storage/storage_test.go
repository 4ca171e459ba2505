package storage

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"errors"
	"fmt"

	"github.com/cocoon-runtime/cocoon/internal/safefs"
	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"
)

func mountsUnder(t *testing.T, dir string) []string {
	t.Helper()
	infos, err := mountinfo.GetMounts(mountinfo.PrefixFilter(dir))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, m := range infos {
		out = append(out, m.Mountpoint)
	}
	return out
}

func TestSharedBindReleaseDestroy(t *testing.T) {
	base := t.TempDir()
	src := filepath.Join(base, "src")
	os.MkdirAll(src, 0o755)
	os.WriteFile(filepath.Join(src, "hello"), []byte("hi"), 0o644)
	file := filepath.Join(base, "file")
	os.WriteFile(file, []byte("f"), 0o644)

	s := newShared(t, filepath.Join(base, "shared"))
	if err := s.Bind(src, "c1/rootfs", ReadWrite); err != nil {
		t.Fatal(err)
	}
	if err := s.Bind(file, "c1/mounts/0", ReadOnly); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(s.ExportDir(), "c1/rootfs/hello")); err != nil || string(b) != "hi" {
		t.Fatalf("bound dir reads %q through the export, %v", b, err)
	}
	if err := os.WriteFile(filepath.Join(s.ExportDir(), "c1/mounts/0"), []byte("x"), 0o644); err == nil {
		t.Error("read-only bind is writable")
	}
	for _, bad := range []string{"../escape", "c1/../../escape", "", "/abs", "c1//x", "c1/./x"} {
		if err := s.Bind(src, bad, ReadWrite); err == nil {
			t.Errorf("Bind to %q accepted", bad)
		}
	}
	if err := s.Bind(src, "c1/rootfs", ReadWrite); err == nil {
		t.Error("a second bind onto an existing target was accepted")
	}
	// host and export themselves, and each bind in both views.
	if got := len(mountsUnder(t, s.Dir)); got != 6 {
		t.Fatalf("%d mounts under %s, want 6: %v", got, s.Dir, mountsUnder(t, s.Dir))
	}
	if err := s.Release("c1"); err != nil {
		t.Fatal(err)
	}
	if m := mountsUnder(t, filepath.Join(s.Dir, "c1")); len(m) != 0 {
		t.Fatalf("mounts left after Release: %v", m)
	}
	if err := s.Destroy(); err != nil {
		t.Fatal(err)
	}
	if m := mountsUnder(t, s.Dir); len(m) != 0 {
		t.Fatalf("mounts left after Destroy: %v", m)
	}
	if _, err := os.Stat(s.Dir); !os.IsNotExist(err) {
		t.Fatalf("shared dir left: %v", err)
	}
	if b, _ := os.ReadFile(filepath.Join(src, "hello")); !strings.Contains(string(b), "hi") {
		t.Fatal("Destroy removed the bind source's contents")
	}
}

func newShared(t *testing.T, dir string) *Shared {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount")
	}
	s, err := NewShared(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { RemoveUnmounted(s.Dir) })
	return s
}

// The guest reaches the shared tree only through what virtiofsd exports,
// with root's powers there: it must not be able to create any entry the
// host later resolves, such as a symlink at a future mount target.
func TestSharedGuestCannotRedirectBinds(t *testing.T) {
	base := t.TempDir()
	s := newShared(t, filepath.Join(base, "shared"))
	victim := filepath.Join(base, "victim")
	os.Mkdir(victim, 0o755)
	src := filepath.Join(base, "rootfs")
	os.Mkdir(src, 0o755)
	os.WriteFile(filepath.Join(src, "marker"), []byte("rootfs"), 0o644)

	// What a hostile guest would plant with FUSE requests.
	if err := os.Mkdir(filepath.Join(s.ExportDir(), "c1"), 0o755); err == nil {
		t.Error("the guest's view lets it create a directory")
	}
	if err := os.Symlink(victim, filepath.Join(s.ExportDir(), "c1-rootfs")); err == nil {
		t.Error("the guest's view lets it create a symlink")
	}
	if err := os.WriteFile(filepath.Join(s.ExportDir(), "f"), nil, 0o644); err == nil {
		t.Error("the guest's view lets it create a file")
	}
	// Had a symlink reached the host's tree anyway, binds must not follow it.
	os.MkdirAll(filepath.Join(s.HostDir(), "c2"), 0o755)
	os.Symlink(victim, filepath.Join(s.HostDir(), "c2", "rootfs"))
	os.Symlink(victim, filepath.Join(s.HostDir(), "c3"))
	for _, rel := range []string{"c2/rootfs", "c3/rootfs", "c3/mounts/0"} {
		if err := s.Bind(src, rel, ReadWrite); err == nil {
			t.Errorf("bind to %s through a symlink succeeded", rel)
		}
	}
	if m := mountsUnder(t, victim); len(m) != 0 {
		t.Fatalf("a bind landed on the victim: %v", m)
	}
	if _, err := os.Stat(filepath.Join(victim, "marker")); err == nil {
		t.Fatal("the rootfs was mounted over the victim")
	}
}

// Read-only is enforced on the host side as the spec asks: "ro" makes the
// bind read-only and leaves submounts their own flags, "rro" makes the
// whole tree read-only.
func TestSharedAccess(t *testing.T) {
	base := t.TempDir()
	s := newShared(t, filepath.Join(base, "shared"))
	src := filepath.Join(base, "vol")
	sub := filepath.Join(src, "sub")
	os.MkdirAll(sub, 0o755)
	if err := unix.Mount("tmpfs", sub, "tmpfs", 0, "size=1m"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(sub, unix.MNT_DETACH) })
	writable := func(rel string) bool {
		p := filepath.Join(s.ExportDir(), rel, "probe")
		err := os.WriteFile(p, []byte("x"), 0o644)
		os.Remove(p)
		return err == nil
	}
	for _, tc := range []struct {
		access   Access
		top, sub bool
	}{
		{ReadWrite, true, true},
		{ReadOnly, false, true},
		{RecursiveReadOnly, false, false},
	} {
		rel := fmt.Sprintf("c%d/mounts/0", tc.access)
		if err := s.Bind(src, rel, tc.access); err != nil {
			t.Fatal(err)
		}
		if got := writable(rel); got != tc.top {
			t.Errorf("access %d: bind writable %v, want %v", tc.access, got, tc.top)
		}
		if got := writable(rel + "/sub"); got != tc.sub {
			t.Errorf("access %d: submount writable %v, want %v", tc.access, got, tc.sub)
		}
	}
}

// Removing a tree never deletes through a mount that appeared in it, for
// example a bind that a concurrent container create made after the
// unmount pass.
func TestRemoveNeverCrossesMounts(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount")
	}
	base := t.TempDir()
	data := filepath.Join(base, "volume")
	os.Mkdir(data, 0o755)
	os.WriteFile(filepath.Join(data, "precious"), []byte("x"), 0o644)
	file := filepath.Join(base, "file")
	os.WriteFile(file, []byte("y"), 0o644)
	tree := filepath.Join(base, "tree")
	os.MkdirAll(filepath.Join(tree, "a", "b"), 0o755)
	os.WriteFile(filepath.Join(tree, "a", "f"), nil, 0o644)
	os.WriteFile(filepath.Join(tree, "a", "target"), nil, 0o644)
	os.Symlink(data, filepath.Join(tree, "link"))
	if err := unix.Mount(data, filepath.Join(tree, "a", "b"), "", unix.MS_BIND, ""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(filepath.Join(tree, "a", "b"), unix.MNT_DETACH) })
	if err := unix.Mount(file, filepath.Join(tree, "a", "target"), "", unix.MS_BIND, ""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(filepath.Join(tree, "a", "target"), unix.MNT_DETACH) })
	if err := safefs.RemoveAll(tree); !errors.Is(err, safefs.ErrCrossesMount) {
		t.Errorf("removing a tree with mounts in it: %v, want ErrCrossesMount", err)
	}
	if _, err := os.Stat(filepath.Join(data, "precious")); err != nil {
		t.Fatalf("data behind a mount was deleted: %v", err)
	}
	if _, err := os.Stat(file); err != nil {
		t.Fatalf("a bind-mounted file was deleted: %v", err)
	}
	if _, err := os.Lstat(filepath.Join(tree, "link")); err == nil {
		// Entries before the mount may or may not be gone; the symlink was
		// never followed.
		if _, err := os.Stat(filepath.Join(data, "precious")); err != nil {
			t.Fatal("the symlink was followed")
		}
	}
	unix.Unmount(filepath.Join(tree, "a", "b"), unix.MNT_DETACH)
	unix.Unmount(filepath.Join(tree, "a", "target"), unix.MNT_DETACH)
	if err := safefs.RemoveAll(tree); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(tree); !os.IsNotExist(err) {
		t.Fatalf("tree left: %v", err)
	}
}

func TestFindVirtiofsd(t *testing.T) {
	if _, err := FindVirtiofsd("/nonexistent/virtiofsd"); err == nil {
		t.Error("a missing virtiofsd was accepted")
	}
}

func TestSubmounts(t *testing.T) {
	src := t.TempDir()
	for _, d := range []string{"b", "a", "b/deep/er", "b/deep"} {
		p := filepath.Join(src, d)
		if err := os.MkdirAll(p, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := unix.Mount("tmpfs", p, "tmpfs", 0, "size=1m"); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { unix.Unmount(p, unix.MNT_DETACH) })
	}
	// A sibling whose name extends src's is not below it.
	other := src + "x"
	os.MkdirAll(other, 0o755)
	defer os.RemoveAll(other)
	if err := unix.Mount("tmpfs", other, "tmpfs", 0, "size=1m"); err != nil {
		t.Fatal(err)
	}
	defer unix.Unmount(other, unix.MNT_DETACH)

	got, err := Submounts(src)
	if err != nil {
		t.Fatal(err)
	}
	// Parents before their children, whatever the order of mounting.
	want := []string{"a", "b", "b/deep", "b/deep/er"}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("Submounts = %q, want %q", got, want)
	}
	if got, err := Submounts(filepath.Join(src, "a")); err != nil || len(got) != 0 {
		t.Errorf("Submounts of a mount with none below = %q, %v", got, err)
	}
}

// A bind receives the mounts the host makes below its source afterwards
// (the source being shared), unless it is private.
func TestSharedBindPropagation(t *testing.T) {
	base := t.TempDir()
	src := filepath.Join(base, "src")
	os.MkdirAll(src, 0o755)
	if err := unix.Mount("tmpfs", src, "tmpfs", 0, "size=1m"); err != nil {
		t.Fatal(err)
	}
	defer unix.Unmount(src, unix.MNT_DETACH)
	if err := unix.Mount("", src, "", unix.MS_SHARED, ""); err != nil {
		t.Fatal(err)
	}
	s := newShared(t, filepath.Join(base, "shared"))
	if err := s.BindWith(src, "c1/mounts/0", ReadWrite, false); err != nil {
		t.Fatal(err)
	}
	if err := s.BindWith(src, "c1/mounts/1", ReadWrite, true); err != nil {
		t.Fatal(err)
	}
	later := filepath.Join(src, "later")
	os.Mkdir(later, 0o755)
	if err := unix.Mount("tmpfs", later, "tmpfs", 0, "size=1m"); err != nil {
		t.Fatal(err)
	}
	defer unix.Unmount(later, unix.MNT_DETACH)
	os.WriteFile(filepath.Join(later, "f"), []byte("x"), 0o644)
	for rel, want := range map[string]bool{"c1/mounts/0": true, "c1/mounts/1": false} {
		_, err := os.Stat(filepath.Join(s.ExportDir(), rel, "later", "f"))
		if got := err == nil; got != want {
			t.Errorf("%s: the host's later mount seen in the export: %v, want %v", rel, got, want)
		}
	}
}
