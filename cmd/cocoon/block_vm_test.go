package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cocoon-runtime/cocoon/internal/testutil"
)

// TestRunImageRootfs: `cocoon run` of a bundle whose rootfs is an ext4
// image (not a directory) runs the container from a virtio-blk disk.
func TestRunImageRootfs(t *testing.T) {
	c := needVM(t)
	if _, err := exec.LookPath("mkfs.ext4"); err != nil {
		t.Skip("no mkfs.ext4 (apt-get install e2fsprogs)")
	}
	b := c.bundle(t, "sh", "-c", "grep ' / ' /proc/mounts")
	dir := filepath.Join(b, "rootfs")
	img := filepath.Join(t.TempDir(), "rootfs.ext4")
	if out, err := exec.Command("mkfs.ext4", "-q", "-d", dir, img, "64M").CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v: %s", err, out)
	}
	// The image takes the directory's place.
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(img, dir); err != nil {
		t.Fatal(err)
	}
	c.deleteAtEnd(t, "imgroot")
	r := c.run(t, nil, "run", "--boot-timeout", "2m", "--bundle", b, "imgroot")
	if r.code != 0 || !strings.Contains(r.stdout, "/dev/vd") || !strings.Contains(r.stdout, " / ext4 ") {
		t.Fatalf("container from an ext4 image: %v", r)
	}
	c.assertGone(t, "imgroot")
}

// TestRunDevice: `cocoon run --device LOOP:/dev/xvdb` gives the container
// the host's loop device at /dev/xvdb, readable under its device cgroup.
func TestRunDevice(t *testing.T) {
	c := needVM(t)
	loop := testutil.LoopDevice(t, "HELLO-DEVICE", 8<<20)
	b := c.bundle(t, "head", "-c", "12", "/dev/xvdb")
	c.deleteAtEnd(t, "devrun")
	r := c.run(t, nil, "run", "--boot-timeout", "2m", "--device", loop+":/dev/xvdb:r", "--bundle", b, "devrun")
	if r.code != 0 || r.stdout != "HELLO-DEVICE" {
		t.Fatalf("container reading --device %s: %v", loop, r)
	}
	if r := c.run(t, nil, "run", "--device", "/etc/passwd", "--bundle", b, "devbad"); r.code == 0 || !strings.Contains(r.stderr, "not a device") {
		t.Errorf("--device /etc/passwd: %v", r)
	}
	c.assertGone(t, "devbad")
}
