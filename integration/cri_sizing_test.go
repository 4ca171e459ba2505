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
