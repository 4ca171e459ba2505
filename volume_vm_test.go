package cocoon_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cocoon-runtime/cocoon"
	"github.com/cocoon-runtime/cocoon/internal/specutil"
	"github.com/cocoon-runtime/cocoon/internal/testutil"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// Host directories bind-mounted into a container are shared through the
// sandbox's virtio-fs both ways: the container reads what the host wrote
// before and while it runs (the guest caches file data, but revalidates
// within a second and drops data whose file changed), the host reads what
// the container wrote, and a read-only mount refuses writes.
func TestBindMountVolumes(t *testing.T) {
	rt, env := newRuntime(t)
	ctx := context.Background()
	id := testutil.UniqueID(t)
	rw, ro := t.TempDir(), t.TempDir()
	if err := os.WriteFile(filepath.Join(rw, "f"), []byte("before"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(ro, "f"), []byte("read-only"), 0o644); err != nil {
		t.Fatal(err)
	}
	b := bundle(t, "sleep", "1000")
	spec := specutil.Default("sleep", "1000")
	spec.Mounts = append(spec.Mounts,
		specs.Mount{Destination: "/rw", Type: "bind", Source: rw, Options: []string{"rbind", "rw"}},
		specs.Mount{Destination: "/ro", Type: "bind", Source: ro, Options: []string{"rbind", "ro"}})
	if err := specutil.WriteBundle(b, spec); err != nil {
		t.Fatal(err)
	}
	sb, err := rt.RunSandbox(ctx, sandboxConfig(env, id, b))
	if err != nil {
		t.Fatal(err)
	}
	cleanup(t, rt, id)
	run := func(args ...string) (string, cocoon.ExitStatus) {
		t.Helper()
		return execIn(t, sb, id, args...)
	}
	if out, _ := run("cat", "/rw/f", "/ro/f"); out != "beforeread-only" {
		t.Fatalf("container read %q, want the host's files", out)
	}
	// The host changes the file, same size and a new one: the container
	// must see both within a few seconds.
	if err := os.WriteFile(filepath.Join(rw, "f"), []byte("after!"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(rw, "new"), []byte("new file"), 0o644); err != nil {
		t.Fatal(err)
	}
	var out string
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(500 * time.Millisecond) {
		if out, _ = run("cat", "/rw/f", "/rw/new"); out == "after!new file" {
			break
		}
	}
	if out != "after!new file" {
		t.Errorf("container still reads %q after the host changed its volume", out)
	}
	if out, st := run("sh", "-c", "echo from-guest > /rw/g"); st.Code != 0 {
		t.Fatalf("write to the rw volume: %v %q", st, out)
	}
	if b, err := os.ReadFile(filepath.Join(rw, "g")); err != nil || string(b) != "from-guest\n" {
		t.Errorf("host reads %q, %v from the container's write", b, err)
	}
	if out, st := run("sh", "-c", "echo x > /ro/g"); st.Code == 0 {
		t.Errorf("write to the read-only volume succeeded: %q", out)
	}
	if _, err := os.Stat(filepath.Join(ro, "g")); err == nil {
		t.Error("the container wrote into a read-only volume")
	}
}

// A Kubernetes emptyDir of medium Memory (a tmpfs the kubelet mounts at
// .../volumes/kubernetes.io~empty-dir/NAME) is a tmpfs of the same size in
// the guest, shared by the pod's containers that bind it, and never
// reaches the host's tmpfs: it is the pod's memory, inside the VM.
func TestMemoryEmptyDir(t *testing.T) {
	rt, env := newRuntime(t)
	ctx := context.Background()
	id := testutil.UniqueID(t)
	vol := filepath.Join(t.TempDir(), "pods", "uid", "volumes", "kubernetes.io~empty-dir", "cache")
	if err := os.MkdirAll(vol, 0o777); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("tmpfs", vol, "tmpfs", 0, "size=8m"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(vol, unix.MNT_DETACH) })
	withCache := func(args ...string) string {
		b := bundle(t, args...)
		spec := specutil.Default(args...)
		spec.Mounts = append(spec.Mounts, specs.Mount{Destination: "/cache", Type: "bind", Source: vol, Options: []string{"rbind", "rw"}})
		if err := specutil.WriteBundle(b, spec); err != nil {
			t.Fatal(err)
		}
		return b
	}
	sb, err := rt.RunSandbox(ctx, sandboxConfig(env, id, withCache("sleep", "1000")))
	if err != nil {
		t.Fatal(err)
	}
	cleanup(t, rt, id)
	defer sb.Release()
	if out, st := execIn(t, sb, id, "sh", "-c", "grep ' /cache ' /proc/mounts; df -k /cache | tail -1; echo from-first > /cache/f"); st.Code != 0 ||
		!strings.Contains(out, "tmpfs /cache tmpfs") || !strings.Contains(out, " 8192 ") {
		t.Fatalf("the emptyDir in the container: exit %d, %q; want a tmpfs of 8192 KiB", st.Code, out)
	}
	if err := sb.CreateContainer(ctx, cocoon.ContainerConfig{ID: "second", Bundle: withCache("sleep", "1000")}); err != nil {
		t.Fatal(err)
	}
	if err := sb.StartContainer(ctx, "second"); err != nil {
		t.Fatal(err)
	}
	if out, st := execIn(t, sb, "second", "cat", "/cache/f"); st.Code != 0 || out != "from-first\n" {
		t.Errorf("the pod's second container reads %q (exit %d), want the first's file", out, st.Code)
	}
	if entries, _ := os.ReadDir(vol); len(entries) != 0 {
		t.Errorf("the host's tmpfs got %v", entries)
	}
}

// A ConfigMap or Secret volume, as the kubelet's atomic writer keeps it
// (the files in a timestamped directory, "..data" a symlink to it, each
// key a symlink through "..data"), updates in the guest when the kubelet
// swaps "..data" to a new directory on the host by a rename.
func TestConfigMapSymlinkSwap(t *testing.T) {
	rt, env := newRuntime(t)
	ctx := context.Background()
	id := testutil.UniqueID(t)
	vol := t.TempDir()
	publish := func(version, value string) {
		t.Helper()
		dir := "..2026_12_03_" + version
		if err := os.Mkdir(filepath.Join(vol, dir), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(vol, dir, "key"), []byte(value), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(dir, filepath.Join(vol, "..data_tmp")); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(filepath.Join(vol, "..data_tmp"), filepath.Join(vol, "..data")); err != nil {
			t.Fatal(err)
		}
	}
	publish("v1", "one")
	if err := os.Symlink("..data/key", filepath.Join(vol, "key")); err != nil {
		t.Fatal(err)
	}
	b := bundle(t, "sleep", "1000")
	spec := specutil.Default("sleep", "1000")
	spec.Mounts = append(spec.Mounts, specs.Mount{Destination: "/cfg", Type: "bind", Source: vol, Options: []string{"rbind", "ro"}})
	if err := specutil.WriteBundle(b, spec); err != nil {
		t.Fatal(err)
	}
	sb, err := rt.RunSandbox(ctx, sandboxConfig(env, id, b))
	if err != nil {
		t.Fatal(err)
	}
	cleanup(t, rt, id)
	defer sb.Release()
	if out, _ := execIn(t, sb, id, "cat", "/cfg/key"); out != "one" {
		t.Fatalf("container reads %q, want the first version", out)
	}
	publish("v2", "two")
	os.RemoveAll(filepath.Join(vol, "..2026_12_03_v1"))
	var out string
	began := time.Now()
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(250 * time.Millisecond) {
		if out, _ = execIn(t, sb, id, "cat", "/cfg/key"); out == "two" {
			break
		}
	}
	if out != "two" {
		t.Fatalf("after the swap the container reads %q, want the new version", out)
	}
	t.Logf("the swap reached the container within %v", time.Since(began).Round(10*time.Millisecond))
}
