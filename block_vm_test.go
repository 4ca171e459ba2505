package cocoon_test

import (
	"context"
	"errors"
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
	dir := filepath.Join(t.TempDir(), "rootfs")
	if err := specutil.BusyboxRootfs(dir, ""); err != nil {
		t.Skip(err)
	}
	return ext4Of(t, dir, "64M")
}

// ext4Of makes an ext4 image of size holding the files of dir.
func ext4Of(t *testing.T, dir, size string) string {
	t.Helper()
	if _, err := exec.LookPath("mkfs.ext4"); err != nil {
		t.Skip("no mkfs.ext4 (apt-get install e2fsprogs)")
	}
	img := filepath.Join(t.TempDir(), "image.ext4")
	if out, err := exec.Command("mkfs.ext4", "-q", "-d", dir, img, size).CombinedOutput(); err != nil {
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

// dataImage makes an ext4 image holding one file, "hello", with content.
func dataImage(t *testing.T, content string) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "hello"), []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return ext4Of(t, dir, "16M")
}

// Block volumes: a mount of type ext4 whose source is an image file is
// the guest's own disk (`/dev/vd*` at the mount, never mounted on the
// host), read-write or read-only (a write fails with EROFS); what the
// container wrote is in the image; deleting the container unplugs the
// disks. A mount whose source holds another file system is refused
// before anything is attached.
func TestBlockVolumes(t *testing.T) {
	rt, env := newRuntime(t)
	ctx := context.Background()
	id := testutil.UniqueID(t)
	rw, ro := dataImage(t, "read-write"), dataImage(t, "read-only")
	cfg := sandboxConfig(env, id, bundle(t, "sleep", "1000"))
	cfg.VM.HotplugSlots = 2
	sb, err := rt.RunSandbox(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	cleanup(t, rt, id)
	defer sb.Release()

	vb := bundle(t, "sleep", "1000")
	spec := specutil.Default("sleep", "1000")
	spec.Mounts = append(spec.Mounts,
		specs.Mount{Destination: "/rw", Type: "ext4", Source: rw, Options: []string{"loop", "rw", "nosuid"}},
		specs.Mount{Destination: "/ro", Type: "ext4", Source: ro, Options: []string{"loop", "ro"}})
	if err := specutil.WriteBundle(vb, spec); err != nil {
		t.Fatal(err)
	}
	if err := sb.CreateContainer(ctx, cocoon.ContainerConfig{ID: "vols", Bundle: vb}); err != nil {
		t.Fatal(err)
	}
	if err := sb.StartContainer(ctx, "vols"); err != nil {
		t.Fatal(err)
	}
	out, st := execIn(t, sb, "vols", "sh", "-c", "cat /rw/hello /ro/hello; echo; grep -E ' /(rw|ro) ' /proc/mounts; echo from-the-guest > /rw/written && echo wrote-rw; echo x > /ro/x || echo refused-ro")
	if st.Code != 0 || !strings.Contains(out, "read-writeread-only") || strings.Count(out, "/dev/vd") != 2 ||
		!strings.Contains(out, "wrote-rw") || !strings.Contains(out, "refused-ro") || !strings.Contains(out, "Read-only file system") {
		t.Fatalf("exit %d, %q; want both images read from /dev/vd* disks, /rw written, /ro refusing with EROFS", st.Code, out)
	}
	for _, img := range []string{rw, ro} {
		if loops := testutil.LoopsBackedBy(img, false); len(loops) > 0 {
			t.Errorf("the host mounted %s itself (%v)", img, loops)
		}
	}
	disks := func() string {
		out, _ := execIn(t, sb, id, "sh", "-c", "ls /sys/block | grep -c vd")
		return strings.TrimSpace(out)
	}
	if n := disks(); n != "2" {
		t.Errorf("%s disks in the guest with the volumes, want 2", n)
	}
	if err := sb.KillContainer(ctx, "vols", 9, true); err != nil {
		t.Fatal(err)
	}
	sb.WaitProcess(ctx, "vols", "")
	if err := sb.DeleteContainer(ctx, "vols"); err != nil {
		t.Fatal(err)
	}
	n := disks()
	for i := 0; i < 50 && n != "0"; i++ {
		n = disks()
	}
	if n != "0" {
		t.Errorf("%s disks in the guest after deleting the container, want 0", n)
	}
	if out, err := exec.Command("debugfs", "-R", "cat /written", rw).Output(); err != nil || string(out) != "from-the-guest\n" {
		t.Errorf("the image holds %q (%v), want what the container wrote", out, err)
	}

	// The source is not an ext4 file system: refused, nothing attached.
	bad := bundle(t, "true")
	spec = specutil.Default("true")
	junk := filepath.Join(t.TempDir(), "junk.img")
	if err := os.WriteFile(junk, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	spec.Mounts = append(spec.Mounts, specs.Mount{Destination: "/data", Type: "ext4", Source: junk})
	if err := specutil.WriteBundle(bad, spec); err != nil {
		t.Fatal(err)
	}
	if err := sb.CreateContainer(ctx, cocoon.ContainerConfig{ID: "bad", Bundle: bad}); !errors.Is(err, cocoon.ErrInvalidConfig) {
		t.Errorf("a volume of junk: %v, want ErrInvalidConfig", err)
	}
	if n := disks(); n != "0" {
		t.Errorf("%s disks in the guest after a refused volume, want 0", n)
	}
}

// Two handles on one sandbox (a shim's long-lived one and a CLI's): a
// disk the second hot-plugs takes a root port the first then sees as
// used, and the first can remove it. Each hot-plug picks its port from
// the VM's record, not from what its own handle remembers.
func TestHotplugFromTwoHandles(t *testing.T) {
	rt, env := newRuntime(t)
	ctx := context.Background()
	id := testutil.UniqueID(t)
	cfg := sandboxConfig(env, id, bundle(t, "sleep", "1000"))
	cfg.VM.HotplugSlots = 2
	sb, err := rt.RunSandbox(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	cleanup(t, rt, id)
	defer sb.Release()
	rt2, err := cocoon.New(cocoon.Options{StateDir: env.StateDir, DataDir: filepath.Dir(env.CacheDir)})
	if err != nil {
		t.Fatal(err)
	}
	sb2, err := rt2.FetchSandbox(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sb2.AddDevice(ctx, cocoon.DeviceConfig{ID: "fromtwo", Path: dataImage(t, "two")}); err != nil {
		t.Fatal(err)
	}
	sb2.Release()
	if _, err := sb.AddDevice(ctx, cocoon.DeviceConfig{ID: "fromone", Path: dataImage(t, "one")}); err != nil {
		t.Fatalf("the first handle's hot-plug after the second's: %v", err)
	}
	if err := sb.RemoveDevice(ctx, "fromtwo"); err != nil {
		t.Fatalf("the first handle removes the second's disk: %v", err)
	}
	var serials string
	for i := 0; i < 50; i++ {
		serials, _ = execIn(t, sb, id, "sh", "-c", "cat /sys/block/vd*/serial")
		if strings.TrimSpace(serials) == "fromone" {
			break
		}
	}
	if strings.TrimSpace(serials) != "fromone" {
		t.Errorf("the guest's disks: %q, want only fromone", serials)
	}
}
