// Command sizing measures what a pod's size costs the host: for pods whose
// container asks for memory limits that size their VMs at 256 MiB, 1 GiB
// and 4 GiB (base 256 MiB, see cocoon.SizeVM), the boot time and the idle
// host memory (PSS of every process of the sandbox: QEMU, virtiofsd),
// beside a runc container with the same limit, in one run. Guest memory
// that is never touched must not cost host memory.
//
// With -hotadd N it measures resizing instead: a running pod's container
// limits raised by 1 CPU and 256 MiB (the VM hot-plugs a vCPU and
// virtio-mem memory, the guest onlines them) and lowered again, N times,
// beside runc applying the same update to a container's cgroup.
//
//	go run ./bench/sizing -idle 10s
//	go run ./bench/sizing -hotadd 5
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/cocoon-runtime/cocoon"
	"github.com/cocoon-runtime/cocoon/bench/internal/measure"
	"github.com/cocoon-runtime/cocoon/hypervisor"
	"github.com/cocoon-runtime/cocoon/internal/layout"
	"github.com/cocoon-runtime/cocoon/internal/specutil"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

func main() {
	idle := flag.Duration("idle", 10*time.Second, "how long each pod idles before its memory is measured")
	accel := flag.String("accel", "auto", "accelerator: auto, kvm, tcg")
	dataDir := flag.String("data-dir", layout.DataDir, "Cocoon data directory (guest image)")
	hotadd := flag.Int("hotadd", 0, "measure N resizes of a running pod (+1 CPU, +256 MiB and back) instead")
	flag.Parse()
	run := run
	if *hotadd > 0 {
		run = func(_ time.Duration, accel hypervisor.Accelerator, dataDir string) error {
			return runHotAdd(*hotadd, accel, dataDir)
		}
	}
	if err := run(*idle, hypervisor.Accelerator(*accel), *dataDir); err != nil {
		fmt.Fprintln(os.Stderr, "sizing:", err)
		os.Exit(1)
	}
}

// limits are the containers' memory limits: VMs of 256 MiB, 1 GiB, 4 GiB.
var limits = []int64{0, 768 << 20, 3840 << 20}

func run(idle time.Duration, accel hypervisor.Accelerator, dataDir string) error {
	work, err := os.MkdirTemp("", "cocoon-bench-sizing-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	rootfs := filepath.Join(work, "rootfs")
	if err := specutil.BusyboxRootfs(rootfs, ""); err != nil {
		return err
	}
	bundle := func(name string, limit int64) (string, error) {
		dir := filepath.Join(work, name)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return "", err
		}
		spec := specutil.Default("sleep", "100000")
		spec.Root.Path = rootfs
		spec.Root.Readonly = true
		if limit > 0 {
			if spec.Linux.Resources == nil {
				spec.Linux.Resources = &specs.LinuxResources{}
			}
			spec.Linux.Resources.Memory = &specs.LinuxMemory{Limit: &limit}
		}
		return dir, specutil.WriteBundle(dir, spec)
	}
	rt, stateDir, done, err := measure.Runtime(dataDir)
	if err != nil {
		return err
	}
	defer done()
	ctx := context.Background()
	base := cocoon.VMConfig{Accelerator: accel, VCPUs: 1, MemoryMiB: 256}
	runc, _ := exec.LookPath("runc")
	for i, limit := range limits {
		id := fmt.Sprintf("bench-sizing-%d", i)
		b, err := bundle(id, limit)
		if err != nil {
			return err
		}
		spec, err := cocoon.LoadSpec(b)
		if err != nil {
			return err
		}
		vm, err := cocoon.SizeVM(base, cocoon.ResourcesOf(spec), cocoon.SizeLimits{})
		if err != nil {
			return err
		}
		t0 := time.Now()
		sb, err := rt.RunSandbox(ctx, cocoon.SandboxConfig{ID: id, VM: vm, Containers: []cocoon.ContainerConfig{{ID: id, Bundle: b}}})
		if err != nil {
			return err
		}
		boot := time.Since(t0)
		time.Sleep(idle)
		var pss uint64
		var parts []string
		for pid, name := range measure.Processes(stateDir) {
			_, p := measure.MemoryKiB(pid)
			pss += p
			parts = append(parts, fmt.Sprintf("%s %.1f", name, float64(p)/1024))
		}
		sb.Release()
		if err := rt.DeleteSandbox(ctx, id); err != nil {
			return err
		}
		fmt.Printf("cocoon  limit %4d MiB: VM %4d MiB, %d vCPU: running in %v, idle PSS after %v %.1f MiB (%s)\n",
			limit>>20, vm.MemoryMiB, vm.VCPUs, boot.Round(time.Millisecond), idle, float64(pss)/1024, strings.Join(parts, ", "))
		if runc == "" {
			continue
		}
		root := filepath.Join(work, "runc-root")
		t0 = time.Now()
		// No pipes: the container would hold them open.
		if err := exec.Command(runc, "--root", root, "run", "-d", "--bundle", b, id).Run(); err != nil {
			return fmt.Errorf("runc run: %w", err)
		}
		boot = time.Since(t0)
		time.Sleep(idle)
		var rpss uint64
		if out, err := exec.Command(runc, "--root", root, "ps", id).Output(); err == nil {
			for _, line := range strings.Split(string(out), "\n")[1:] {
				var pid int
				if f := strings.Fields(line); len(f) > 1 {
					fmt.Sscan(f[1], &pid)
					_, p := measure.MemoryKiB(pid)
					rpss += p
				}
			}
		}
		exec.Command(runc, "--root", root, "delete", "-f", id).Run()
		fmt.Printf("runc    limit %4d MiB: running in %v, idle PSS after %v %.1f MiB\n", limit>>20, boot.Round(time.Millisecond), idle, float64(rpss)/1024)
	}
	return nil
}

// The limits the updates go between: one resize is a vCPU and 256 MiB.
const (
	smallQuota, bigQuota = 100000, 200000 // per 100 ms: 1 and 2 CPUs
	smallMem, bigMem     = 256 << 20, 512 << 20
)

// resources are container limits of quota (per 100 ms) and mem bytes.
func resources(quota, mem int64) *specs.LinuxResources {
	period := uint64(100000)
	return &specs.LinuxResources{CPU: &specs.LinuxCPU{Quota: &quota, Period: &period}, Memory: &specs.LinuxMemory{Limit: &mem}}
}

// runHotAdd raises a running container's limits from 1 CPU, 256 MiB to
// 2 CPUs, 512 MiB and back, n times, timing each update (for Cocoon: until
// the guest has the vCPU and memory online, or has given them back), then
// does the same with runc, and prints the medians.
func runHotAdd(n int, accel hypervisor.Accelerator, dataDir string) error {
	work, err := os.MkdirTemp("", "cocoon-bench-hotadd-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	rootfs := filepath.Join(work, "rootfs")
	if err := specutil.BusyboxRootfs(rootfs, ""); err != nil {
		return err
	}
	b := filepath.Join(work, "bundle")
	spec := specutil.Default("sleep", "100000")
	spec.Root.Path = rootfs
	spec.Root.Readonly = true
	spec.Linux.Resources = resources(smallQuota, smallMem)
	if err := os.MkdirAll(b, 0o755); err != nil {
		return err
	}
	if err := specutil.WriteBundle(b, spec); err != nil {
		return err
	}
	rt, _, done, err := measure.Runtime(dataDir)
	if err != nil {
		return err
	}
	defer done()
	ctx := context.Background()
	// The base, which the sandbox sizes for its container's limits, with
	// room for one more vCPU and 256 MiB.
	base := cocoon.VMConfig{Accelerator: accel, VCPUs: 1, MemoryMiB: 256, MaxVCPUs: 3, MaxMemoryMiB: 256 + bigMem>>20}
	const id = "bench-hotadd"
	sb, err := rt.RunSandbox(ctx, cocoon.SandboxConfig{ID: id, VM: base, Containers: []cocoon.ContainerConfig{{ID: id, Bundle: b}}})
	if err != nil {
		return err
	}
	defer func() {
		sb.Release()
		rt.DeleteSandbox(context.WithoutCancel(ctx), id)
	}()
	vm := sb.Status(ctx)
	var grow, shrink []time.Duration
	for range n {
		t0 := time.Now()
		if err := sb.UpdateContainer(ctx, id, resources(bigQuota, bigMem)); err != nil {
			return fmt.Errorf("grow %d: %w", len(grow)+1, err)
		}
		grow = append(grow, time.Since(t0))
		if st := sb.Status(ctx); st.VCPUs != vm.VCPUs+1 || st.MemoryMiB != vm.MemoryMiB+256 {
			return fmt.Errorf("after the raise the VM has %d vCPUs, %d MiB; want %d, %d", st.VCPUs, st.MemoryMiB, vm.VCPUs+1, vm.MemoryMiB+256)
		}
		t0 = time.Now()
		if err := sb.UpdateContainer(ctx, id, resources(smallQuota, smallMem)); err != nil {
			return fmt.Errorf("shrink: %w", err)
		}
		shrink = append(shrink, time.Since(t0))
	}
	fmt.Printf("cocoon  +1 vCPU +256 MiB (VM %d vCPU, %d MiB): grow median %v, shrink median %v (n=%d; grow %v)\n",
		vm.VCPUs, vm.MemoryMiB, measure.Median(grow), measure.Median(shrink), n, grow)

	runc, err := exec.LookPath("runc")
	if err != nil {
		fmt.Println("runc    not installed")
		return nil
	}
	root := filepath.Join(work, "runc-root")
	if err := exec.Command(runc, "--root", root, "run", "-d", "--bundle", b, "runc-hotadd").Run(); err != nil {
		return fmt.Errorf("runc run: %w", err)
	}
	defer exec.Command(runc, "--root", root, "delete", "-f", "runc-hotadd").Run()
	update := func(quota, mem int64) (time.Duration, error) {
		t0 := time.Now()
		out, err := exec.Command(runc, "--root", root, "update", "--cpu-quota", strconv.FormatInt(quota, 10),
			"--memory", strconv.FormatInt(mem, 10), "runc-hotadd").CombinedOutput()
		if err != nil {
			return 0, fmt.Errorf("runc update: %w: %s", err, out)
		}
		return time.Since(t0), nil
	}
	grow, shrink = grow[:0], shrink[:0]
	for range n {
		d, err := update(bigQuota, bigMem)
		if err != nil {
			return err
		}
		grow = append(grow, d)
		if d, err = update(smallQuota, smallMem); err != nil {
			return err
		}
		shrink = append(shrink, d)
	}
	fmt.Printf("runc    same update of the container's cgroup: grow median %v, shrink median %v (n=%d)\n", measure.Median(grow), measure.Median(shrink), n)
	return nil
}
