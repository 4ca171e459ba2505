package boundedfs

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"
)

func mountsAt(t *testing.T, dir string) []*mountinfo.Info {
	t.Helper()
	ms, err := mountinfo.GetMounts(func(m *mountinfo.Info) (bool, bool) { return m.Mountpoint != dir, false })
	if err != nil {
		t.Fatal(err)
	}
	return ms
}

// MountShared mounts a tmpfs of the size once, however often called, with
// the options and the bound asked; another file system there is refused.
func TestMountShared(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mounting needs root")
	}
	dir := filepath.Join(t.TempDir(), "mem")
	t.Cleanup(func() {
		for range mountsAt(t, dir) {
			unix.Unmount(dir, unix.MNT_DETACH)
		}
	})
	ctx := context.Background()
	for range 2 {
		if err := MountShared(ctx, dir, 8<<20); err != nil {
			t.Fatal(err)
		}
	}
	ms := mountsAt(t, dir)
	if len(ms) != 1 {
		t.Fatalf("%d mounts at %s after two calls, want 1", len(ms), dir)
	}
	m := ms[0]
	if m.FSType != "tmpfs" {
		t.Fatalf("mounted %s, want tmpfs", m.FSType)
	}
	for _, o := range []string{"nosuid", "nodev", "noexec"} {
		if !strings.Contains(","+m.Options+",", ","+o+",") {
			t.Errorf("mount options %q lack %s", m.Options, o)
		}
	}
	if !strings.Contains(m.VFSOptions, "mode=700") {
		t.Errorf("super options %q: want mode=700", m.VFSOptions)
	}
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	if size := st.Blocks * uint64(st.Bsize); size != 8<<20 {
		t.Errorf("tmpfs size %d, want %d", size, 8<<20)
	}
	// The size is a bound: writing past it fails.
	f, err := os.Create(filepath.Join(dir, "big"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	_, err = f.Write(make([]byte, 9<<20))
	if !errors.Is(err, unix.ENOSPC) {
		t.Errorf("writing 9 MiB to an 8 MiB tmpfs: %v, want ENOSPC", err)
	}
	// Another file system at the place is refused.
	other := filepath.Join(t.TempDir(), "other")
	os.Mkdir(other, 0o700)
	if err := unix.Mount(other, other, "", unix.MS_BIND, ""); err != nil {
		t.Fatal(err)
	}
	defer unix.Unmount(other, unix.MNT_DETACH)
	if ms := mountsAt(t, other); len(ms) == 0 || ms[0].FSType == "tmpfs" {
		return // the temporary directory is on a tmpfs itself
	}
	if err := MountShared(ctx, other, 8<<20); err == nil {
		t.Error("MountShared accepted a bind mount that is not a tmpfs")
	}
}
