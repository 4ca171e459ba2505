package storage

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/moby/sys/mountinfo"
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
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount")
	}
	base := t.TempDir()
	src := filepath.Join(base, "src")
	os.MkdirAll(src, 0o755)
	os.WriteFile(filepath.Join(src, "hello"), []byte("hi"), 0o644)
	file := filepath.Join(base, "file")
	os.WriteFile(file, []byte("f"), 0o644)

	s, err := NewShared(filepath.Join(base, "shared"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { UnmountAll(s.Dir) })
	if err := s.Bind(src, "c1/rootfs", false); err != nil {
		t.Fatal(err)
	}
	if err := s.Bind(file, "c1/mounts/0", true); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(s.Dir, "c1/rootfs/hello")); err != nil || string(b) != "hi" {
		t.Fatalf("bound dir reads %q, %v", b, err)
	}
	if err := os.WriteFile(filepath.Join(s.Dir, "c1/mounts/0"), []byte("x"), 0o644); err == nil {
		t.Error("read-only bind is writable")
	}
	for _, bad := range []string{"../escape", "c1/../../escape", ""} {
		if err := s.Bind(src, bad, false); err == nil {
			t.Errorf("Bind to %q accepted", bad)
		}
	}
	if got := len(mountsUnder(t, s.Dir)); got != 3 { // shared itself + 2 binds
		t.Fatalf("%d mounts under %s, want 3: %v", got, s.Dir, mountsUnder(t, s.Dir))
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

func TestFindVirtiofsd(t *testing.T) {
	if _, err := FindVirtiofsd("/nonexistent/virtiofsd"); err == nil {
		t.Error("a missing virtiofsd was accepted")
	}
}
