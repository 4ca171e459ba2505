// Command sizing measures what a pod's size costs the host: for pods whose
// container asks for memory limits that size their VMs at 256 MiB, 1 GiB
// and 4 GiB (base 256 MiB, see cocoon.SizeVM), the boot time and the idle
// host memory (PSS of every process of the sandbox: QEMU, virtiofsd),
// beside a runc container with the same limit, in one run. Guest memory
// that is never touched must not cost host memory.
//
//	go run ./bench/sizing -idle 10s
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
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
	flag.Parse()
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
	stateDir, err := os.MkdirTemp("/run", "cocoon-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(stateDir)
	rt, err := cocoon.New(cocoon.Options{StateDir: stateDir, DataDir: dataDir})
	if err != nil {
		return err
	}
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
