package cocoon_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cocoon-runtime/cocoon"
	"github.com/cocoon-runtime/cocoon/internal/specutil"
	"github.com/cocoon-runtime/cocoon/internal/testutil"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// ext4Image makes an ext4 image holding a busybox rootfs.
func ext4Image(t *testing.T) string {
	t.Helper()
	if _, err := exec.LookPath("mkfs.ext4"); err != nil {
		t.Skip("no mkfs.ext4 (apt-get install e2fsprogs)")
	}
	dir := t.TempDir()
	if err := specutil.BusyboxRootfs(filepath.Join(dir, "rootfs"), ""); err != nil {
		t.Skip(err)
	}
	img := filepath.Join(dir, "rootfs.ext4")
	if out, err := exec.Command("mkfs.ext4", "-q", "-d", filepath.Join(dir, "rootfs"), img, "64M").CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v: %s", err, out)
	}
	return img
}

// A container whose rootfs is an ext4 image runs from a virtio-blk disk
// of its own, hot-plugged and mounted by the guest (not shared over
// virtio-fs): `/` is the disk in the container, writable; a second
// container of the sandbox gets one too, and deleting it unplugs its disk.
func TestImageRootfs(t *testing.T) {
	rt, env := newRuntime(t)
	ctx := context.Background()
	id := testutil.UniqueID(t)
	imageBundle := func(args ...string) string {
		b := bundle(t, args...)
		spec := specutil.Default(args...)
		spec.Root.Path = ext4Image(t)
		if err := specutil.WriteBundle(b, spec); err != nil {
			t.Fatal(err)
		}
		return b
	}
	cfg := sandboxConfig(env, id, imageBundle("sleep", "1000"))
	cfg.VM.HotplugSlots = 1 // for the second container's disk
	sb, err := rt.RunSandbox(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	cleanup(t, rt, id)
	defer sb.Release()
	out, st := execIn(t, sb, id, "sh", "-c", "grep ' / ' /proc/mounts; echo written > /f && cat /f")
	if st.Code != 0 || !strings.Contains(out, "/dev/vd") || !strings.Contains(out, " / ext4 rw") || !strings.Contains(out, "written") {
		t.Fatalf("the container's root: exit %d, %q; want a writable ext4 on /dev/vd*", st.Code, out)
	}
	if err := sb.CreateContainer(ctx, cocoon.ContainerConfig{ID: "second", Bundle: imageBundle("sleep", "1000")}); err != nil {
		t.Fatal(err)
	}
	if err := sb.StartContainer(ctx, "second"); err != nil {
		t.Fatal(err)
	}
	if out, st := execIn(t, sb, "second", "sh", "-c", "grep ' / ' /proc/mounts; cat /proc/partitions"); st.Code != 0 || !strings.Contains(out, "/dev/vd") {
		t.Fatalf("the second container's root: exit %d, %q", st.Code, out)
	}
	before, _ := execIn(t, sb, id, "sh", "-c", "ls /sys/block | grep vd | wc -l")
	if err := sb.KillContainer(ctx, "second", 9, true); err != nil {
		t.Fatal(err)
	}
	sb.WaitProcess(ctx, "second", "")
	if err := sb.DeleteContainer(ctx, "second"); err != nil {
		t.Fatal(err)
	}
	var after string
	for i := 0; i < 50; i++ {
		if after, _ = execIn(t, sb, id, "sh", "-c", "ls /sys/block | grep vd | wc -l"); after != before {
			break
		}
	}
	if strings.TrimSpace(before) != "2" || strings.TrimSpace(after) != "1" {
		t.Errorf("disks in the guest: %q before deleting the second container, %q after; want 2 then 1", before, after)
	}
}

// A host block device in the spec's linux.devices (a loop device here) is
// attached to the VM as a disk of its own and usable in the container at
// the spec's path: the node has the guest's numbers, and the device
// cgroup rule naming the host's numbers was rewritten to the guest's (the
// container's cgroup denies every other block device).
func TestPassBlockDevice(t *testing.T) {
	rt, env := newRuntime(t)
	ctx := context.Background()
	id := testutil.UniqueID(t)
	loop := testutil.LoopDevice(t, "HELLO-BLOCK", 16<<20)
	var st unix.Stat_t
	if err := unix.Stat(loop, &st); err != nil {
		t.Fatal(err)
	}
	major, minor := int64(unix.Major(st.Rdev)), int64(unix.Minor(st.Rdev))

	args := []string{"sh", "-c", "stat -c %t:%T /dev/xvdb; head -c 11 /dev/xvdb; echo; " +
		"echo WRITTEN-IN-GUEST | dd of=/dev/xvdb bs=4096 seek=1 conv=notrunc,fsync 2>/dev/null && echo wrote"}
	b := bundle(t, args...)
	spec := specutil.Default(args...)
	mode := os.FileMode(0o660)
	zero := uint32(0)
	spec.Linux.Devices = append(spec.Linux.Devices, specs.LinuxDevice{Path: "/dev/xvdb", Type: "b", Major: major, Minor: minor, FileMode: &mode, UID: &zero, GID: &zero})
	if spec.Linux.Resources == nil {
		spec.Linux.Resources = &specs.LinuxResources{}
	}
	spec.Linux.Resources.Devices = append([]specs.LinuxDeviceCgroup{{Allow: false, Access: "rwm"}},
		specs.LinuxDeviceCgroup{Allow: true, Type: "b", Major: &major, Minor: &minor, Access: "rwm"})
	if err := specutil.WriteBundle(b, spec); err != nil {
		t.Fatal(err)
	}
	sb, err := rt.CreateSandbox(ctx, sandboxConfig(env, id, b))
	if err != nil {
		t.Fatal(err)
	}
	cleanup(t, rt, id)
	defer sb.Release()
	o := attach(t, sb, id, "", nil)
	if err := sb.StartContainer(ctx, id); err != nil {
		t.Fatal(err)
	}
	o.wg.Wait()
	if st, err := sb.WaitProcess(ctx, id, ""); err != nil || st.Code != 0 {
		t.Fatalf("container: %v %v, stdout %q, stderr %q", st, err, o.stdout.String(), o.stderr.String())
	}
	lines := strings.Split(o.stdout.String(), "\n")
	if len(lines) < 3 || lines[0] == fmt.Sprintf("%x:%x", major, minor) || lines[1] != "HELLO-BLOCK" || lines[2] != "wrote" {
		t.Fatalf("in the container: %q (host device %x:%x); want the guest's numbers, the host's data and a write", o.stdout.String(), major, minor)
	}
	got := make([]byte, 16)
	f, err := os.Open(loop)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.ReadAt(got, 4096); err != nil || string(got) != "WRITTEN-IN-GUEST" {
		t.Errorf("the host's device at 4096: %q, %v", got, err)
	}
}
