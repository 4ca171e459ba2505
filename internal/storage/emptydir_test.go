package storage

import (
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

func TestMemoryEmptyDir(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	pod := filepath.Join(t.TempDir(), "pods", "uid1", "volumes")
	mem := filepath.Join(pod, "kubernetes.io~empty-dir", "cache")
	disk := filepath.Join(pod, "kubernetes.io~empty-dir", "scratch")
	other := filepath.Join(t.TempDir(), "tmpfs")
	mem2 := filepath.Join(t.TempDir(), "pods", "uid2", "volumes", "kubernetes.io~empty-dir", "cache")
	for _, d := range []string{mem, disk, other, mem2} {
		if err := os.MkdirAll(d, 0o777); err != nil {
			t.Fatal(err)
		}
	}
	for _, d := range []string{mem, other, mem2} {
		if err := unix.Mount("tmpfs", d, "tmpfs", 0, "size=8m"); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { unix.Unmount(d, unix.MNT_DETACH) })
	}
	name, size, ok := MemoryEmptyDir(mem)
	if !ok || size != 8<<20 || len(name) != 16 {
		t.Fatalf("memory emptyDir: %q, %d, %v", name, size, ok)
	}
	if again, _, _ := MemoryEmptyDir(mem); again != name {
		t.Errorf("the same volume got names %q and %q", name, again)
	}
	if n2, _, ok := MemoryEmptyDir(mem2); !ok || n2 == name {
		t.Errorf("another pod's volume: %q, %v (the first is %q)", n2, ok, name)
	}
	if _, _, ok := MemoryEmptyDir(disk); ok {
		t.Error("a disk-backed emptyDir was taken for a memory one")
	}
	if _, _, ok := MemoryEmptyDir(other); ok {
		t.Error("a tmpfs that is no emptyDir was taken for one")
	}
}
