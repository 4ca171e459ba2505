package agent

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// The host's name and size of an ephemeral storage are checked before
// anything is made from them.
func TestEphemeralRejectsBadInput(t *testing.T) {
	dir := t.TempDir()
	e := &ephemeralStorages{dir: dir, mounted: map[string]string{}}
	for _, c := range []struct {
		name string
		size uint64
	}{
		{"../../etc/x12345", 1 << 20},
		{"0123456789ABCDEF", 1 << 20},
		{"0123456789abcde", 1 << 20},
		{"0123456789abcdef0", 1 << 20},
		{"0123456789abcdef", 0},
		{"0123456789abcdef", 1 << 60},
	} {
		if _, err := e.mount(c.name, c.size); err == nil {
			t.Errorf("mount(%q, %d) succeeded", c.name, c.size)
		}
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Errorf("refused storages left %v", entries)
	}
}

// A storage is a tmpfs of its size, mounted once however many containers
// name it.
func TestEphemeralMountsOnce(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	dir := t.TempDir()
	e := &ephemeralStorages{dir: dir, mounted: map[string]string{}}
	const name = "00112233445566ff"
	p, err := e.mount(name, 4<<20)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(p, unix.MNT_DETACH) })
	if p != filepath.Join(dir, name) {
		t.Fatalf("mounted at %s", p)
	}
	var st unix.Statfs_t
	if err := unix.Statfs(p, &st); err != nil || st.Type != unix.TMPFS_MAGIC || st.Blocks*uint64(st.Bsize) != 4<<20 {
		t.Fatalf("statfs %s: type %x, %d bytes, %v", p, st.Type, st.Blocks*uint64(st.Bsize), err)
	}
	if q, err := e.mount(name, 8<<20); err != nil || q != p {
		t.Fatalf("second mount: %s, %v", q, err)
	}
	mi, _ := os.ReadFile("/proc/self/mountinfo")
	if n := strings.Count(string(mi), " "+p+" "); n != 1 {
		t.Errorf("%s mounted %d times", p, n)
	}
}
