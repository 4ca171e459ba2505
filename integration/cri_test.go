package integration

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cocoon-runtime/cocoon/internal/ctrtest"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// criPod is a pod made through the CRI, as the kubelet makes them.
type criPod struct {
	rs     runtimeapi.RuntimeServiceClient
	id     string
	config *runtimeapi.PodSandboxConfig
}

// podConfig is the configuration of a pod named name, with a log
// directory of its own and the pod's network namespace.
func (e *env) podConfig(t *testing.T, name string) *runtimeapi.PodSandboxConfig {
	t.Helper()
	logDir := filepath.Join(e.dir, "pod-logs", name)
	if err := os.MkdirAll(logDir, 0o700); err != nil {
		t.Fatal(err)
	}
	return &runtimeapi.PodSandboxConfig{
		Metadata:     &runtimeapi.PodSandboxMetadata{Name: name, Uid: "uid-" + name, Namespace: "cocoon-test"},
		Hostname:     name,
		LogDirectory: logDir,
		Linux: &runtimeapi.LinuxPodSandboxConfig{
			SecurityContext: &runtimeapi.LinuxSandboxSecurityContext{
				NamespaceOptions: &runtimeapi.NamespaceOption{Network: runtimeapi.NamespaceMode_POD},
			},
		},
	}
}

// runPod runs a pod with runtime handler cocoon (a Kubernetes
// RuntimeClass with handler cocoon).
func runPod(t *testing.T, ctx context.Context, e *env, rs runtimeapi.RuntimeServiceClient, name string, ann map[string]string) (*criPod, error) {
	t.Helper()
	cfg := e.podConfig(t, name)
	cfg.Annotations = ann
	return runPodConfig(t, ctx, e, rs, "cocoon", cfg)
}

// runPodConfig runs the pod cfg with runtime handler handler; it is
// stopped and removed when the test ends.
func runPodConfig(t *testing.T, ctx context.Context, e *env, rs runtimeapi.RuntimeServiceClient, handler string, cfg *runtimeapi.PodSandboxConfig) (*criPod, error) {
	t.Helper()
	r, err := rs.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: cfg, RuntimeHandler: handler})
	if err != nil {
		return nil, err
	}
	p := &criPod{rs: rs, id: r.PodSandboxId, config: cfg}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		rs.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: p.id})
		rs.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: p.id})
	})
	// Cleanups run last first: this one, before the pod is removed.
	t.Cleanup(func() {
		if t.Failed() {
			e.logConsoles(t)
		}
	})
	return p, nil
}

// start creates and starts a busybox container running cmd in the pod.
func (p *criPod) start(t *testing.T, ctx context.Context, name string, cmd ...string) string {
	t.Helper()
	c, err := p.rs.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{
		PodSandboxId: p.id,
		Config: &runtimeapi.ContainerConfig{
			Metadata: &runtimeapi.ContainerMetadata{Name: name},
			Image:    &runtimeapi.ImageSpec{Image: ctrtest.BusyboxImage},
			Command:  cmd,
			LogPath:  name + ".log",
		},
		SandboxConfig: p.config,
	})
	if err != nil {
		t.Fatalf("CreateContainer %s: %v", name, err)
	}
	if _, err := p.rs.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: c.ContainerId}); err != nil {
		t.Fatalf("StartContainer %s: %v", name, err)
	}
	return c.ContainerId
}

func (p *criPod) exec(t *testing.T, ctx context.Context, cid string, cmd ...string) string {
	t.Helper()
	r, err := p.rs.ExecSync(ctx, &runtimeapi.ExecSyncRequest{ContainerId: cid, Cmd: cmd, Timeout: 30})
	if err != nil {
		t.Fatalf("ExecSync %v: %v", cmd, err)
	}
	if r.ExitCode != 0 {
		t.Fatalf("ExecSync %v: exit %d, stderr %q", cmd, r.ExitCode, r.Stderr)
	}
	return strings.TrimSpace(string(r.Stdout))
}

// The Kubernetes path: a pod with two containers runs in one VM of its
// own; exec, logs and stats work; removing the pod leaves nothing.
func TestCRIPodInOneVM(t *testing.T) {
	e := needContainerd(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	rs, _, closeConn, err := e.ctrd.CRI(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer closeConn()
	pod, err := runPod(t, ctx, e, rs, "pod-one-vm", nil)
	if err != nil {
		t.Fatalf("RunPodSandbox: %v\n%s", err, e.ctrd.LogTail(40))
	}
	web := pod.start(t, ctx, "web", "sh", "-c", "echo web started; exec sleep 1000")
	side := pod.start(t, ctx, "side", "sh", "-c", "echo side started >&2; exec sleep 1000")

	kernel := pod.exec(t, ctx, web, "uname", "-r")
	if kernel == hostKernel(t) {
		t.Errorf("pod kernel %q is the host's: not in a VM", kernel)
	}
	// Both containers run on one guest kernel: the same boot id.
	boot1 := pod.exec(t, ctx, web, "cat", "/proc/sys/kernel/random/boot_id")
	boot2 := pod.exec(t, ctx, side, "cat", "/proc/sys/kernel/random/boot_id")
	if boot1 != boot2 || boot1 == "" {
		t.Errorf("boot ids %q and %q: the pod's containers are not in one VM", boot1, boot2)
	}
	hostBoot, _ := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if boot1 == strings.TrimSpace(string(hostBoot)) {
		t.Errorf("container boot id is the host's")
	}
	if n := len(pidsMentioning(pod.id, "qemu-system")); n != 1 {
		t.Errorf("%d QEMU processes for the pod, want 1", n)
	}
	if n := len(pidsMentioning(pod.id, "containerd-shim-cocoon-v2")); n != 1 {
		t.Errorf("%d shim processes for the pod, want 1", n)
	}

	// Container logs, in the CRI's format, from each stream.
	for name, want := range map[string]string{"web": "stdout F web started", "side": "stderr F side started"} {
		path := filepath.Join(pod.config.LogDirectory, name+".log")
		var got []byte
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
			if got, _ = os.ReadFile(path); strings.Contains(string(got), want) {
				break
			}
		}
		if !strings.Contains(string(got), want) {
			t.Errorf("log %s = %q, want a line %q", path, got, want)
		}
	}

	st, err := rs.ContainerStats(ctx, &runtimeapi.ContainerStatsRequest{ContainerId: web})
	if err != nil {
		t.Fatalf("ContainerStats: %v", err)
	}
	if st.Stats.GetMemory().GetWorkingSetBytes().GetValue() == 0 && st.Stats.GetMemory().GetUsageBytes().GetValue() == 0 {
		t.Errorf("ContainerStats has no memory usage: %v", st.Stats)
	}
	if st.Stats.GetCpu().GetUsageCoreNanoSeconds().GetValue() == 0 {
		t.Errorf("ContainerStats has no CPU usage: %v", st.Stats)
	}

	if _, err := rs.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: pod.id}); err != nil {
		t.Fatalf("StopPodSandbox: %v", err)
	}
	if _, err := rs.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: pod.id}); err != nil {
		t.Fatalf("RemovePodSandbox: %v", err)
	}
	e.assertNoLeaks(t, pod.id)
}

// A pod asking for an override the configuration does not allow is
// refused with a clear error, and nothing of it is left.
func TestCRIPodAnnotationRefused(t *testing.T) {
	e := needContainerd(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	rs, _, closeConn, err := e.ctrd.CRI(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer closeConn()
	_, err = runPod(t, ctx, e, rs, "pod-refused", map[string]string{"io.cocoon.config.hypervisor.kernel_params": "init=/bin/sh"})
	if err == nil || !strings.Contains(err.Error(), "not allowed") {
		t.Fatalf("RunPodSandbox with a refused annotation: %v, want a not-allowed error", err)
	}
	list, err := rs.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range list.Items {
		if p.Metadata.Name == "pod-refused" {
			t.Errorf("refused pod is listed: %v", p)
			e.assertNoLeaks(t, p.Id)
		}
	}
	if left := pidsMentioning(e.stateDir, "qemu-system"); len(left) > 0 {
		t.Errorf("QEMU processes left: %v", left)
	}
}
