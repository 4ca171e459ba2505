package container

import (
	"os"
	"path/filepath"
	"slices"
	"testing"

	"golang.org/x/sys/unix"
)

func TestVMDevices(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mknod needs root")
	}
	dev := t.TempDir()
	for _, n := range []struct {
		path     string
		mode     uint32
		maj, min uint32
	}{
		{"null", unix.S_IFCHR | 0o666, 1, 3},
		{"net/tun", unix.S_IFCHR | 0o600, 10, 200},
		{"vda", unix.S_IFBLK | 0o660, 254, 0},
		{"console", unix.S_IFCHR | 0o600, 5, 1},
		{"vport2p1", unix.S_IFCHR | 0o600, 248, 1},
		{"hvc0", unix.S_IFCHR | 0o600, 229, 0},
		{"pts/0", unix.S_IFCHR | 0o620, 136, 0},
	} {
		p := filepath.Join(dev, n.path)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := unix.Mknod(p, n.mode, int(unix.Mkdev(n.maj, n.min))); err != nil {
			t.Fatal(err)
		}
	}
	os.WriteFile(filepath.Join(dev, "regular"), nil, 0o644)
	os.Symlink("null", filepath.Join(dev, "link"))

	got, err := vmDevices(dev)
	if err != nil {
		t.Fatal(err)
	}
	var paths []string
	for _, d := range got {
		paths = append(paths, d.Path)
		if d.Path == "/dev/net/tun" && (d.Type != "c" || d.Major != 10 || d.Minor != 200 || *d.FileMode != 0o600) {
			t.Errorf("tun: %+v", d)
		}
		if d.Path == "/dev/vda" && d.Type != "b" {
			t.Errorf("vda: %+v", d)
		}
	}
	if want := []string{"/dev/net/tun", "/dev/null", "/dev/vda"}; !slices.Equal(paths, want) {
		t.Errorf("devices %v, want %v", paths, want)
	}
}
