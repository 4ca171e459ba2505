package integration

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cocoon-runtime/cocoon/internal/ctrtest"
	"golang.org/x/sys/unix"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// hostTmpfs mounts a small tmpfs on dir (created if missing) for the
// test, shared when shared is set (a Bidirectional or HostToContainer
// volume must be on a shared mount); it is unmounted when the test ends.
func hostTmpfs(t *testing.T, dir string, shared bool) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("tmpfs", dir, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "size=4m,mode=0755"); err != nil {
		t.Fatalf("mount tmpfs on %s: %v", dir, err)
	}
	t.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) })
	if shared {
		if err := unix.Mount("", dir, "", unix.MS_SHARED, ""); err != nil {
			t.Fatalf("make %s shared: %v", dir, err)
		}
	}
}

// volumeDir is a new directory for a test's volume, on the host's /run
// (below the test containerd's directory).
func (e *env) volumeDir(t *testing.T, name string) string {
	t.Helper()
	dir := filepath.Join(e.dir, "vol-"+name)
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// run runs cmd in container cid and returns its exit code and output.
func (p *criPod) run(t *testing.T, ctx context.Context, cid string, cmd ...string) (int32, string) {
	t.Helper()
	r, err := p.rs.ExecSync(ctx, &runtimeapi.ExecSyncRequest{ContainerId: cid, Cmd: cmd, Timeout: 30})
	if err != nil {
		t.Fatalf("ExecSync %v: %v", cmd, err)
	}
	return r.ExitCode, strings.TrimSpace(string(r.Stdout) + string(r.Stderr))
}

// mountOptions returns the options of the mount at dest in container cid
// (the fourth field of /proc/self/mounts).
func (p *criPod) mountOptions(t *testing.T, ctx context.Context, cid, dest string) string {
	t.Helper()
	out := p.exec(t, ctx, cid, "cat", "/proc/self/mounts")
	opts := ""
	for _, l := range strings.Split(out, "\n") {
		if f := strings.Fields(l); len(f) >= 4 && f[1] == dest {
			opts = f[3] // the last mount on dest is the one seen
		}
	}
	if opts == "" {
		t.Fatalf("no mount on %s in %s:\n%s", dest, cid, out)
	}
	return opts
}

func TestCRIReadOnlyNotRecursive(t *testing.T)     { testReadOnlyNotRecursive(t, "cocoon") }
func TestCRIReadOnlyNotRecursiveRunc(t *testing.T) { testReadOnlyNotRecursive(t, "runc") }

// A read-only volume is read-only at its top only, as under runc: a
// writable mount below its source (a tmpfs) stays writable in the
// container, and the host's copy of it shows the write.
func testReadOnlyNotRecursive(t *testing.T, handler string) {
	e := needContainerd(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	rs := criAPI(t, ctx, e)

	vol := e.volumeDir(t, "ro-"+handler)
	if err := os.WriteFile(filepath.Join(vol, "top"), []byte("top\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	hostTmpfs(t, filepath.Join(vol, "sub"), false)

	pod, err := runPodWith(t, ctx, e, rs, handler, "pod-ro-"+handler)
	if err != nil {
		t.Fatalf("RunPodSandbox: %v\n%s", err, e.ctrd.LogTail(40))
	}
	cid := pod.createIn(t, ctx, &runtimeapi.ContainerConfig{
		Metadata: &runtimeapi.ContainerMetadata{Name: "ro"},
		Command:  []string{"sleep", "1000"},
		Mounts:   []*runtimeapi.Mount{{ContainerPath: "/vol", HostPath: vol, Readonly: true}},
	})
	if code, out := pod.run(t, ctx, cid, "touch", "/vol/new"); code == 0 {
		t.Errorf("touch /vol/new in a read-only volume succeeded")
	} else if !strings.Contains(out, "Read-only file system") {
		t.Errorf("touch /vol/new: exit %d, %q; want a read-only file system error", code, out)
	}
	if got := pod.exec(t, ctx, cid, "cat", "/vol/top"); got != "top" {
		t.Errorf("/vol/top: %q", got)
	}
	if code, out := pod.run(t, ctx, cid, "sh", "-c", "echo sub > /vol/sub/f"); code != 0 {
		t.Errorf("write to the tmpfs below a read-only (not rro) volume: exit %d, %s\nmounts in the container:\n%s",
			code, out, pod.exec(t, ctx, cid, "cat", "/proc/self/mounts"))
	} else if b, err := os.ReadFile(filepath.Join(vol, "sub", "f")); err != nil || string(b) != "sub\n" {
		t.Errorf("host's copy of /vol/sub/f: %q, %v", b, err)
	}
	if opts := pod.mountOptions(t, ctx, cid, "/vol"); !strings.HasPrefix(opts, "ro,") {
		t.Errorf("/vol is mounted %s, want ro", opts)
	}
	if opts := pod.mountOptions(t, ctx, cid, "/vol/sub"); !strings.HasPrefix(opts, "rw,") {
		t.Errorf("/vol/sub is mounted %s, want rw", opts)
	}
}

func TestCRIMountPropagation(t *testing.T)     { testMountPropagation(t, "cocoon") }
func TestCRIMountPropagationRunc(t *testing.T) { testMountPropagation(t, "runc") }

// waitFile polls for cat path in container cid to print want, for up to
// a few seconds (a host's mount reaches the guest once virtio-fs
// revalidates the directory, within its one-second attribute timeout).
func (p *criPod) waitFile(t *testing.T, ctx context.Context, cid, path, want string) (string, bool) {
	t.Helper()
	var out string
	for deadline := time.Now().Add(5 * time.Second); ; {
		var code int32
		code, out = p.run(t, ctx, cid, "cat", path)
		if code == 0 && out == want {
			return out, true
		}
		if time.Now().After(deadline) {
			return out, false
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// Mount propagation between the containers of a pod and from the host:
// a tmpfs that a privileged container with a Bidirectional volume mounts
// below it shows in another container's HostToContainer volume of the same
// host directory, and so does a tmpfs the host mounts there after the
// containers started; a Private volume sees neither.
func testMountPropagation(t *testing.T, handler string) {
	e := needContainerd(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	rs := criAPI(t, ctx, e)

	vol := e.volumeDir(t, "prop-"+handler)
	hostTmpfs(t, vol, true) // Bidirectional and HostToContainer need a shared mount
	pod, err := runPrivilegedPod(t, ctx, e, rs, handler, "pod-prop-"+handler)
	if err != nil {
		t.Fatalf("RunPodSandbox: %v\n%s", err, e.ctrd.LogTail(40))
	}
	volume := func(p runtimeapi.MountPropagation) []*runtimeapi.Mount {
		return []*runtimeapi.Mount{{ContainerPath: "/vol", HostPath: vol, Propagation: p}}
	}
	bidi := pod.createIn(t, ctx, &runtimeapi.ContainerConfig{
		Metadata: &runtimeapi.ContainerMetadata{Name: "bidi"},
		Command:  []string{"sleep", "1000"},
		Mounts:   volume(runtimeapi.MountPropagation_PROPAGATION_BIDIRECTIONAL),
		Linux: &runtimeapi.LinuxContainerConfig{SecurityContext: &runtimeapi.LinuxContainerSecurityContext{
			Privileged: true,
		}},
	})
	slave := pod.createIn(t, ctx, &runtimeapi.ContainerConfig{
		Metadata: &runtimeapi.ContainerMetadata{Name: "slave"},
		Command:  []string{"sleep", "1000"},
		Mounts:   volume(runtimeapi.MountPropagation_PROPAGATION_HOST_TO_CONTAINER),
	})
	private := pod.createIn(t, ctx, &runtimeapi.ContainerConfig{
		Metadata: &runtimeapi.ContainerMetadata{Name: "private"},
		Command:  []string{"sleep", "1000"},
		Mounts:   volume(runtimeapi.MountPropagation_PROPAGATION_PRIVATE),
	})

	// Container to container.
	pod.exec(t, ctx, bidi, "sh", "-c", "mkdir /vol/c && mount -t tmpfs -o size=1m tmpfs /vol/c && echo from-bidi > /vol/c/f")
	if got, ok := pod.waitFile(t, ctx, slave, "/vol/c/f", "from-bidi"); !ok {
		t.Errorf("HostToContainer container: /vol/c/f = %q, want the Bidirectional container's tmpfs\nmounts:\n%s",
			got, pod.exec(t, ctx, slave, "cat", "/proc/self/mounts"))
	}
	if code, out := pod.run(t, ctx, private, "cat", "/vol/c/f"); code == 0 {
		t.Errorf("Private container sees the Bidirectional container's mount: /vol/c/f = %q", out)
	}
	// To the host: only where the container's mount namespace is the host's.
	b, err := os.ReadFile(filepath.Join(vol, "c", "f"))
	if handler == "runc" && string(b) != "from-bidi\n" {
		t.Errorf("host: %s/c/f = %q, %v; want the Bidirectional container's tmpfs", vol, b, err)
	}
	if handler == "cocoon" && err == nil {
		t.Errorf("host: %s/c/f = %q; a mount in the VM cannot reach the host", vol, b)
	}

	// Host to container, after the containers started.
	hostTmpfs(t, filepath.Join(vol, "h"), false)
	if err := os.WriteFile(filepath.Join(vol, "h", "f"), []byte("from-host\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, cid := range []string{slave, bidi} {
		if got, ok := pod.waitFile(t, ctx, cid, "/vol/h/f", "from-host"); !ok {
			t.Errorf("container %s: /vol/h/f = %q, want the host's new tmpfs\nmounts:\n%s",
				cid, got, pod.exec(t, ctx, cid, "cat", "/proc/self/mounts"))
		}
	}
	if code, out := pod.run(t, ctx, private, "cat", "/vol/h/f"); code == 0 {
		t.Errorf("Private container sees the host's new mount: /vol/h/f = %q", out)
	}
}

// runPrivilegedPod runs a pod that may hold privileged containers with
// runtime handler handler; it is stopped and removed when the test ends.
func runPrivilegedPod(t *testing.T, ctx context.Context, e *env, rs runtimeapi.RuntimeServiceClient, handler, name string) (*criPod, error) {
	t.Helper()
	cfg := e.podConfig(t, name)
	cfg.Linux.SecurityContext.Privileged = true
	return runPodConfig(t, ctx, e, rs, handler, cfg)
}

func TestCtrReadOnlyRecursive(t *testing.T)     { testCtrReadOnlyRecursive(t, true) }
func TestCtrReadOnlyRecursiveRunc(t *testing.T) { testCtrReadOnlyRecursive(t, false) }

// A bind mount with "ro" is read-only at its top, with "rro" below it too
// (a tmpfs there included), as runc does: here through ctr, whose mount
// options reach the runtime's spec as given (the CRI of containerd 2.x
// asks runc's shim alone whether it supports recursive read-only mounts).
func testCtrReadOnlyRecursive(t *testing.T, cocoon bool) {
	e := needContainerd(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	name := "rro-runc"
	if cocoon {
		name = "rro-cocoon"
	}
	vol := e.volumeDir(t, name)
	hostTmpfs(t, filepath.Join(vol, "sub"), false)
	cid := id(t)
	e.removeOnCleanup(t, cid)
	args := []string{"run", "--rm",
		"--mount", "type=bind,src=" + vol + ",dst=/ro,options=rbind:ro",
		"--mount", "type=bind,src=" + vol + ",dst=/rro,options=rbind:rro"}
	if cocoon {
		args = append(args, e.runtimeFlags()...)
	}
	script := `for d in /ro/sub /rro/sub; do if touch $d/f 2>/dev/null; then echo $d rw; else echo $d ro; fi; done
touch /ro/f 2>/dev/null && echo /ro top rw || echo /ro top ro`
	args = append(args, ctrtest.BusyboxImage, cid, "sh", "-c", script)
	stdout, stderr, err := e.ctrd.Ctr(ctx, args...)
	if err != nil {
		t.Fatalf("ctr run: %v\nstdout %q\nstderr %q\n%s", err, stdout, stderr, e.ctrd.LogTail(30))
	}
	want := "/ro/sub rw\n/rro/sub ro\n/ro top ro"
	if got := strings.TrimSpace(stdout); got != want {
		t.Errorf("writes: %q, want %q", got, want)
	}
}

// TestCRIMemoryEmptyDir: a volume at the kubelet's path of an emptyDir of
// medium Memory (a tmpfs below volumes/kubernetes.io~empty-dir/) is, in a
// Cocoon pod, a tmpfs of its size shared by the pod's containers.
func TestCRIMemoryEmptyDir(t *testing.T) {
	e := needContainerd(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	rs := criAPI(t, ctx, e)
	vol := filepath.Join(e.volumeDir(t, "pods"), "uid", "volumes", "kubernetes.io~empty-dir", "cache")
	hostTmpfs(t, vol, false)
	pod, err := runPodWith(t, ctx, e, rs, "cocoon", "pod-emptydir")
	if err != nil {
		t.Fatalf("RunPodSandbox: %v\n%s", err, e.ctrd.LogTail(40))
	}
	cache := []*runtimeapi.Mount{{ContainerPath: "/cache", HostPath: vol}}
	first := pod.createIn(t, ctx, &runtimeapi.ContainerConfig{
		Metadata: &runtimeapi.ContainerMetadata{Name: "first"}, Command: []string{"sleep", "1000"}, Mounts: cache,
	})
	second := pod.createIn(t, ctx, &runtimeapi.ContainerConfig{
		Metadata: &runtimeapi.ContainerMetadata{Name: "second"}, Command: []string{"sleep", "1000"}, Mounts: cache,
	})
	if out := pod.exec(t, ctx, first, "sh", "-c", "df -k /cache | tail -1; echo shared > /cache/f"); !strings.Contains(out, " 4096 ") {
		t.Errorf("df of the emptyDir: %q, want a 4096 KiB filesystem", out)
	}
	if got := pod.exec(t, ctx, second, "cat", "/cache/f"); got != "shared" {
		t.Errorf("the second container reads %q", got)
	}
	if opts := pod.mountOptions(t, ctx, second, "/cache"); !strings.HasPrefix(opts, "rw,") {
		t.Errorf("/cache is mounted %s", opts)
	}
	if entries, _ := os.ReadDir(vol); len(entries) != 0 {
		t.Errorf("the host's tmpfs got %v", entries)
	}
}
