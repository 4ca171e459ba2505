package integration

import (
	"context"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// A pod with a 2-CPU, 1 GiB limit (the pod's resources the kubelet gives
// the CRI, which containerd hands the sandbox as annotations) gets a VM of
// the base plus that: 1 + 2 vCPUs (capped at the host's CPU count) and
// 256 + 1024 MiB. A pod asking for
// more memory than a VM may have is refused, not started small.
func TestCRIPodSizedVM(t *testing.T) {
	e := needContainerd(t)
	if !e.ctrd.AtLeast(1, 7) {
		t.Skip("containerd before 1.7 does not pass the pod's resources (make test runs this under containerd 2.x)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	rs := criAPI(t, ctx, e)
	cfg := e.podConfig(t, "sized")
	cfg.Linux.Resources = &runtimeapi.LinuxContainerResources{CpuPeriod: 100000, CpuQuota: 200000, MemoryLimitInBytes: 1 << 30}
	p, err := runPodConfig(t, ctx, e, rs, "cocoon", cfg)
	if err != nil {
		t.Fatalf("RunPodSandbox: %v\n%s", err, e.ctrd.LogTail(30))
	}
	cid := p.createIn(t, ctx, &runtimeapi.ContainerConfig{
		Metadata: &runtimeapi.ContainerMetadata{Name: "app"}, Command: []string{"sleep", "1000"},
	})
	out := strings.Fields(p.exec(t, ctx, cid, "sh", "-c", "nproc; awk '/MemTotal/ {print $2}' /proc/meminfo"))
	if len(out) != 2 {
		t.Fatalf("nproc and MemTotal: %q", out)
	}
	cpus, _ := strconv.Atoi(out[0])
	memKiB, _ := strconv.Atoi(out[1])
	// MemTotal is the guest's RAM less what its kernel keeps.
	if want := min(3, runtime.NumCPU()); cpus != want || memKiB < (256+1024-128)<<10 {
		t.Errorf("the VM has %d CPUs and %d MiB; want %d CPUs and about 256 + 1024 MiB", cpus, memKiB>>10, want)
	}
	p.remove(t, ctx, true)
	e.assertNoLeaks(t, p.id)

	big := e.podConfig(t, "too-big")
	big.Linux.Resources = &runtimeapi.LinuxContainerResources{MemoryLimitInBytes: 1 << 50}
	_, err = runPodConfig(t, ctx, e, rs, "cocoon", big)
	if err == nil || !strings.Contains(err.Error(), "max_memory_mib") {
		t.Fatalf("a pod asking for 1 PiB: %v, want a refusal naming max_memory_mib", err)
	}
	if left := pidsMentioning(e.stateDir, "qemu-system"); len(left) > 0 {
		t.Errorf("QEMU processes left: %v", left)
	}
}

// guestSize is what the pod's VM has, seen from container cid: online
// CPUs and MemTotal in MiB.
func (p *criPod) guestSize(t *testing.T, ctx context.Context, cid string) (cpus, memMiB int) {
	t.Helper()
	out := strings.Fields(p.exec(t, ctx, cid, "sh", "-c", "nproc; awk '/MemTotal/ {print $2}' /proc/meminfo"))
	if len(out) != 2 {
		t.Fatalf("nproc and MemTotal: %q", out)
	}
	cpus, _ = strconv.Atoi(out[0])
	memKiB, _ := strconv.Atoi(out[1])
	return cpus, memKiB >> 10
}

// A pod started without resources (the kubelet's usual case: the pod's
// VM boots at the base size) grows when a container with limits joins
// it and when UpdateContainerResources raises them, and gives the room
// back when the container goes. A container allocating past its limit
// is reported OOMKilled while its sibling keeps running.
func TestCRIPodResized(t *testing.T) {
	e := needContainerd(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	rs := criAPI(t, ctx, e)
	p, err := runPodConfig(t, ctx, e, rs, "cocoon", e.podConfig(t, "resized"))
	if err != nil {
		t.Fatalf("RunPodSandbox: %v\n%s", err, e.ctrd.LogTail(30))
	}
	sibling := p.start(t, ctx, "sibling", "sleep", "1000")
	cpus0, mem0 := p.guestSize(t, ctx, sibling)

	limits := func(quota, mem int64) *runtimeapi.LinuxContainerResources {
		return &runtimeapi.LinuxContainerResources{CpuPeriod: 100000, CpuQuota: quota, MemoryLimitInBytes: mem}
	}
	big := p.createIn(t, ctx, &runtimeapi.ContainerConfig{
		Metadata: &runtimeapi.ContainerMetadata{Name: "big"}, Command: []string{"sleep", "1000"},
		Linux: &runtimeapi.LinuxContainerConfig{Resources: limits(100000, 512<<20)},
	})
	cpus, mem := p.guestSize(t, ctx, sibling)
	t.Logf("base: %d CPUs, MemTotal %d MiB; with a 1-CPU 512 MiB container: %d CPUs, %d MiB", cpus0, mem0, cpus, mem)
	if want := min(cpus0+1, runtime.NumCPU()); cpus != want || mem < mem0+512-16 {
		t.Errorf("the VM has %d CPUs and %d MiB, want %d CPUs and %d + 512 MiB", cpus, mem, want, mem0)
	}

	if _, err := rs.UpdateContainerResources(ctx, &runtimeapi.UpdateContainerResourcesRequest{
		ContainerId: big, Linux: limits(200000, 1<<30),
	}); err != nil {
		t.Fatalf("UpdateContainerResources: %v", err)
	}
	cpus, mem = p.guestSize(t, ctx, sibling)
	t.Logf("raised to 2 CPUs, 1 GiB: %d CPUs, %d MiB", cpus, mem)
	if want := min(cpus0+2, runtime.NumCPU()); cpus != want || mem < mem0+1024-16 {
		t.Errorf("the VM has %d CPUs and %d MiB, want %d CPUs and %d + 1024 MiB", cpus, mem, want, mem0)
	}
	if lim := p.exec(t, ctx, big, "sh", "-c", "cat /sys/fs/cgroup$(cut -d: -f3 /proc/self/cgroup)/memory.max"); lim != "1073741824" {
		t.Errorf("the container's memory limit after the update: %q", lim)
	}

	p.stopContainer(t, ctx, big, 0)
	if _, err := rs.RemoveContainer(ctx, &runtimeapi.RemoveContainerRequest{ContainerId: big}); err != nil {
		t.Fatal(err)
	}
	cpus, mem = p.guestSize(t, ctx, sibling)
	t.Logf("container gone: %d CPUs, %d MiB", cpus, mem)
	if cpus != cpus0 {
		t.Errorf("the VM kept %d CPUs, want %d", cpus, cpus0)
	}

	hog := p.createIn(t, ctx, &runtimeapi.ContainerConfig{
		Metadata: &runtimeapi.ContainerMetadata{Name: "hog"},
		Command:  []string{"dd", "if=/dev/zero", "of=/dev/null", "bs=200M", "count=1"},
		Linux:    &runtimeapi.LinuxContainerConfig{Resources: limits(0, 64<<20)},
	})
	var st *runtimeapi.ContainerStatus
	for st = p.containerState(t, ctx, hog); st.State != runtimeapi.ContainerState_CONTAINER_EXITED; st = p.containerState(t, ctx, hog) {
		if ctx.Err() != nil {
			t.Fatalf("the hog did not end: %+v", st)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if st.Reason != "OOMKilled" || st.ExitCode != 137 {
		t.Errorf("the hog ended with reason %q, exit %d; want OOMKilled, 137", st.Reason, st.ExitCode)
	}
	if out := p.exec(t, ctx, sibling, "echo", "alive"); out != "alive" {
		t.Errorf("the sibling: %q", out)
	}
	p.remove(t, ctx, true)
	e.assertNoLeaks(t, p.id)
}
