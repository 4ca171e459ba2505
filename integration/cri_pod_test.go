package integration

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cocoon-runtime/cocoon/internal/ctrtest"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// criAPI opens a CRI connection closed when the test ends.
func criAPI(t *testing.T, ctx context.Context, e *env) runtimeapi.RuntimeServiceClient {
	t.Helper()
	rs, _, closeConn, err := e.ctrd.CRI(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { closeConn() })
	return rs
}

// createIn creates and starts container cfg in the pod.
func (p *criPod) createIn(t *testing.T, ctx context.Context, cfg *runtimeapi.ContainerConfig) string {
	t.Helper()
	if cfg.Image == nil {
		cfg.Image = &runtimeapi.ImageSpec{Image: ctrtest.BusyboxImage}
	}
	if cfg.LogPath == "" {
		cfg.LogPath = cfg.Metadata.Name + ".log"
	}
	c, err := p.rs.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{PodSandboxId: p.id, Config: cfg, SandboxConfig: p.config})
	if err != nil {
		t.Fatalf("CreateContainer %s: %v", cfg.Metadata.Name, err)
	}
	if _, err := p.rs.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: c.ContainerId}); err != nil {
		t.Fatalf("StartContainer %s: %v", cfg.Metadata.Name, err)
	}
	return c.ContainerId
}

// nsOptions are a container's namespace options for pid mode.
func nsOptions(pid runtimeapi.NamespaceMode) *runtimeapi.LinuxContainerConfig {
	return &runtimeapi.LinuxContainerConfig{SecurityContext: &runtimeapi.LinuxContainerSecurityContext{
		NamespaceOptions: &runtimeapi.NamespaceOption{Network: runtimeapi.NamespaceMode_POD, Ipc: runtimeapi.NamespaceMode_POD, Pid: pid},
	}}
}

// The containers of a pod share the pod's IPC and UTS namespaces in the
// VM as under runc: the pod's sysctls, set by containerd on the sandbox
// container, and its hostname are what every container sees, including
// one that joins later; with PodPID they share one PID namespace too,
// without it they do not see each other's processes.
func TestCRIPodNamespaces(t *testing.T) {
	e := needContainerd(t)
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	rs := criAPI(t, ctx, e)

	for _, podPID := range []bool{false, true} {
		name := "pod-ns-private-pid"
		mode := runtimeapi.NamespaceMode_CONTAINER
		if podPID {
			name, mode = "pod-ns-pod-pid", runtimeapi.NamespaceMode_POD
		}
		t.Run(name, func(t *testing.T) {
			cfg := e.podConfig(t, name)
			cfg.Linux.Sysctls = map[string]string{
				"kernel.shm_rmid_forced": "1",
				"kernel.msgmax":          "12345",
				"fs.mqueue.msg_max":      "42",
				"net.ipv4.ip_forward":    "1",
			}
			cfg.Linux.SecurityContext.NamespaceOptions.Pid = mode
			pod, err := runPodConfig(t, ctx, e, rs, "cocoon", cfg)
			if err != nil {
				t.Fatalf("RunPodSandbox: %v\n%s", err, e.ctrd.LogTail(40))
			}
			a := pod.createIn(t, ctx, &runtimeapi.ContainerConfig{
				Metadata: &runtimeapi.ContainerMetadata{Name: "a"},
				Command:  []string{"sh", "-c", "exec sleep 1001"},
				Linux:    nsOptions(mode),
			})
			// b joins after a runs.
			b := pod.createIn(t, ctx, &runtimeapi.ContainerConfig{
				Metadata: &runtimeapi.ContainerMetadata{Name: "b"},
				Command:  []string{"sh", "-c", "exec sleep 1002"},
				Linux:    nsOptions(mode),
			})
			for _, c := range []string{a, b} {
				for k, want := range cfg.Linux.Sysctls {
					got := pod.exec(t, ctx, c, "cat", "/proc/sys/"+strings.ReplaceAll(k, ".", "/"))
					if got != want {
						t.Errorf("container %.12s: sysctl %s = %q, want the pod's %q", c, k, got, want)
					}
				}
				if got := pod.exec(t, ctx, c, "hostname"); got != name {
					t.Errorf("container %.12s: hostname %q, want the pod's %q", c, got, name)
				}
				if got := pod.exec(t, ctx, c, "cat", "/etc/hostname"); got != name {
					t.Errorf("container %.12s: /etc/hostname %q, want the pod's %q", c, got, name)
				}
			}
			for _, ns := range []string{"ipc", "uts"} {
				na := pod.exec(t, ctx, a, "readlink", "/proc/self/ns/"+ns)
				nb := pod.exec(t, ctx, b, "readlink", "/proc/self/ns/"+ns)
				if na != nb {
					t.Errorf("%s namespaces %s and %s: the pod's containers do not share it", ns, na, nb)
				}
			}
			psA := pod.exec(t, ctx, a, "ps", "-o", "args")
			seesB := strings.Contains(psA, "sleep 1002")
			switch {
			case podPID && !seesB:
				t.Errorf("PodPID: container a does not see b's process:\n%s", psA)
			case !podPID && seesB:
				t.Errorf("without PodPID container a sees b's process:\n%s", psA)
			}
		})
	}
}

// euidProgram prints its effective uid; run as "euid copy DIR" by root,
// it copies itself to DIR/euid, setuid root, and runs that as uid 1000.
const euidProgram = `package main

import (
	"fmt"
	"io"
	"os"
	"syscall"
)

func main() {
	if len(os.Args) == 3 && os.Args[1] == "copy" {
		dst := os.Args[2] + "/euid"
		in, err := os.Open("/proc/self/exe")
		check(err)
		out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o755)
		check(err)
		_, err = io.Copy(out, in)
		check(err)
		check(out.Close())
		check(os.Chmod(dst, os.ModeSetuid|0o755))
		check(syscall.Setgid(1000))
		check(syscall.Setuid(1000))
		check(syscall.Exec(dst, []string{dst}, nil))
	}
	fmt.Println(os.Geteuid())
}

func check(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
`

// A setuid-root program, in a volume or in the container's own root
// filesystem, runs with effective uid 0 for a non-root user unless
// no_new_privs is set, as under runc: the guest's mounts are not nosuid
// where the spec does not ask for it.
func TestCRISetuid(t *testing.T) {
	e := needContainerd(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	rs := criAPI(t, ctx, e)

	vol := t.TempDir()
	src := filepath.Join(t.TempDir(), "main.go")
	if err := os.WriteFile(src, []byte(euidProgram), 0o644); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(vol, "euid")
	build := exec.CommandContext(ctx, "go", "build", "-o", bin, src)
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	if err := os.Chmod(bin, os.ModeSetuid|0o755); err != nil {
		t.Fatal(err)
	}
	os.Chmod(vol, 0o755)

	pod, err := runPod(t, ctx, e, rs, "pod-setuid", nil)
	if err != nil {
		t.Fatalf("RunPodSandbox: %v\n%s", err, e.ctrd.LogTail(40))
	}
	for _, noNewPrivs := range []bool{false, true} {
		name, want := "escalate", "0"
		if noNewPrivs {
			name, want = "no-new-privs", "1000"
		}
		user := pod.createIn(t, ctx, &runtimeapi.ContainerConfig{
			Metadata: &runtimeapi.ContainerMetadata{Name: name},
			Command:  []string{"sleep", "1000"},
			Mounts:   []*runtimeapi.Mount{{ContainerPath: "/vol", HostPath: vol}},
			Linux: &runtimeapi.LinuxContainerConfig{SecurityContext: &runtimeapi.LinuxContainerSecurityContext{
				RunAsUser:  &runtimeapi.Int64Value{Value: 1000},
				NoNewPrivs: noNewPrivs,
			}},
		})
		if got := pod.exec(t, ctx, user, "id", "-u"); got != "1000" {
			t.Fatalf("%s: uid %q, want 1000", name, got)
		}
		if got := pod.exec(t, ctx, user, "/vol/euid"); got != want {
			t.Errorf("%s: setuid-root program in a volume runs with euid %q, want %s", name, got, want)
		}
		root := pod.createIn(t, ctx, &runtimeapi.ContainerConfig{
			Metadata: &runtimeapi.ContainerMetadata{Name: name + "-rootfs"},
			Command:  []string{"sleep", "1000"},
			Mounts:   []*runtimeapi.Mount{{ContainerPath: "/vol", HostPath: vol, Readonly: true}},
			Linux: &runtimeapi.LinuxContainerConfig{SecurityContext: &runtimeapi.LinuxContainerSecurityContext{
				NoNewPrivs: noNewPrivs,
			}},
		})
		if got := pod.exec(t, ctx, root, "/vol/euid", "copy", "/bin"); got != want {
			t.Errorf("%s: setuid-root program in the rootfs runs with euid %q, want %s", name, got, want)
		}
	}
}

// A pod asking for a host namespace is refused with a clear error: in a
// VM it would see the VM's namespace, not the host's. Nothing is left.
func TestCRIHostNamespacesRefused(t *testing.T) {
	e := needContainerd(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	rs := criAPI(t, ctx, e)
	for _, tc := range []struct {
		name string
		set  func(*runtimeapi.NamespaceOption)
		want string
	}{
		{"pod-host-net", func(o *runtimeapi.NamespaceOption) { o.Network = runtimeapi.NamespaceMode_NODE }, "hostNetwork"},
		{"pod-host-pid", func(o *runtimeapi.NamespaceOption) { o.Pid = runtimeapi.NamespaceMode_NODE }, "hostPID"},
		{"pod-host-ipc", func(o *runtimeapi.NamespaceOption) { o.Ipc = runtimeapi.NamespaceMode_NODE }, "hostIPC"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := e.podConfig(t, tc.name)
			tc.set(cfg.Linux.SecurityContext.NamespaceOptions)
			_, err := runPodConfig(t, ctx, e, rs, "cocoon", cfg)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("RunPodSandbox: %v, want an error naming %s", err, tc.want)
			}
			list, err := rs.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{})
			if err != nil {
				t.Fatal(err)
			}
			for _, p := range list.Items {
				if p.Metadata.Name == tc.name {
					t.Errorf("refused pod is listed: %v", p)
				}
			}
			if left := pidsMentioning(e.stateDir, "qemu-system"); len(left) > 0 {
				t.Errorf("QEMU processes left: %v", left)
			}
		})
	}
	// (A container asking for the host's PID namespace in a pod that
	// is not hostPID gets the pod's from containerd: its path names the
	// sandbox task.) A container naming a namespace of the host by path,
	// which ctr can ask for, is refused too.
	cid := id(t)
	e.removeOnCleanup(t, cid)
	args := append([]string{"run", "-d"}, e.runtimeFlags()...)
	args = append(args, "--with-ns", "ipc:/proc/1/ns/ipc", ctrtest.BusyboxImage, cid, "sleep", "1000")
	_, stderr, err := e.ctrd.Ctr(ctx, args...)
	if err == nil || !strings.Contains(stderr+err.Error(), "names no container of this pod") {
		t.Fatalf("ctr run with the host's IPC namespace: %v (%s), want a refusal", err, stderr)
	}
	if left := pidsMentioning(cid, "qemu-system"); len(left) > 0 {
		t.Errorf("QEMU processes left: %v", left)
	}
}
