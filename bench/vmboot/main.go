// Command vmboot measures Cocoon's sandbox VM: cold boot time from QEMU
// launch to the first agent answer (median of -n boots, per machine type),
// and the host cost of an idle VM: QEMU's RSS and PSS, and its CPU use.
//
//	go run ./bench/vmboot -n 5 -machines q35,microvm
package main

import (
	"context"
	"flag"
	"fmt"
	"github.com/cocoon-runtime/cocoon/bench/internal/measure"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/cocoon-runtime/cocoon/hypervisor"
	"github.com/cocoon-runtime/cocoon/image"
	"github.com/cocoon-runtime/cocoon/internal/layout"
	"github.com/cocoon-runtime/cocoon/internal/vm"
)

func main() {
	n := flag.Int("n", 5, "boots per machine type")
	machines := flag.String("machines", "q35,microvm", "machine types to measure, comma-separated")
	accel := flag.String("accel", "auto", "accelerator: auto, kvm, tcg")
	memMiB := flag.Uint("memory", 256, "guest memory in MiB")
	idle := flag.Duration("idle", 10*time.Second, "how long to let the VM idle before measuring memory and CPU")
	dataDir := flag.String("data-dir", layout.DataDir, "Cocoon data directory (guest image)")
	slots := flag.Int("hotplug-slots", 0, "PCIe root ports for hotplug (q35)")
	maxCPUs := flag.Uint("max-vcpus", 0, "room to hot-plug vCPUs up to this many (q35; 0: none)")
	maxMem := flag.Uint("max-memory", 0, "room to hot-plug memory up to this many MiB (q35; 0: none)")
	flag.Parse()

	img, err := image.Current(*dataDir)
	if err != nil {
		fatal(err)
	}
	stateDir, err := os.MkdirTemp("/run", "cocoon-bench-")
	if err != nil {
		fatal(err)
	}
	defer os.RemoveAll(stateDir)
	// os.Exit skips deferred calls: on failure remove the state directory
	// too (vm.Start already removed the failed VM's own resources).
	fail := func(err error) {
		os.RemoveAll(stateDir)
		fatal(err)
	}
	opts := vm.Options{CacheDir: layout.CacheDir(*dataDir)}
	ctx := context.Background()

	fmt.Printf("guest image %s (kernel %s), %d MiB guest, accelerator %s, %d hotplug slots on q35, room for %d vCPUs and %d MiB\n",
		img.ID, img.KernelRelease, *memMiB, *accel, *slots, max(*maxCPUs, 1), max(*maxMem, *memMiB))
	for _, machine := range strings.Split(*machines, ",") {
		cfg := hypervisor.Config{
			Kernel: img.Kernel, Initrd: img.Initrd, MachineType: machine,
			Accelerator: hypervisor.Accelerator(*accel), VCPUs: 1, MemoryMiB: uint32(*memMiB),
			StateDir: stateDir,
		}
		if machine == "q35" {
			cfg.HotplugSlots = *slots
			cfg.MaxVCPUs, cfg.MaxMemoryMiB = uint32(*maxCPUs), uint32(*maxMem)
		}
		var boots, guest []time.Duration
		var last *vm.VM
		for i := 0; i < *n; i++ {
			id := fmt.Sprintf("bench-%s-%d", machine, i)
			start := time.Now()
			v, err := vm.Start(ctx, id, cfg, opts)
			if err != nil {
				fail(err)
			}
			boots = append(boots, time.Since(start))
			if d, err := v.Agent.GuestDetails(ctx); err == nil {
				guest = append(guest, d.BootToServe)
			}
			if i < *n-1 {
				if err := v.Stop(ctx); err != nil {
					fail(err)
				}
				continue
			}
			last = v
		}
		fmt.Printf("%-8s launch to first agent answer: median %v (min %v, max %v, n=%d); guest kernel start to agent serving: median %v\n",
			machine, measure.Median(boots), slices.Min(boots), slices.Max(boots), len(boots), measure.Median(guest))

		pid := last.HV.PIDs()[0]
		t0, c0 := time.Now(), cpuTicks(pid)
		time.Sleep(*idle)
		cpu := float64(cpuTicks(pid)-c0) / 100 / time.Since(t0).Seconds() * 100
		rss, pss := measure.MemoryKiB(pid)
		fmt.Printf("%-8s idle VM after %v: QEMU RSS %.1f MiB, PSS %.1f MiB, CPU %.2f%% of a core\n",
			machine, *idle, float64(rss)/1024, float64(pss)/1024, cpu)
		if err := last.Stop(ctx); err != nil {
			fail(err)
		}
	}
}

// cpuTicks is utime+stime of pid in clock ticks (USER_HZ, 100 on Linux).
func cpuTicks(pid int) uint64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	u, _ := strconv.ParseUint(f[11], 10, 64)
	st, _ := strconv.ParseUint(f[12], 10, 64)
	return u + st
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "vmboot:", err)
	os.Exit(1)
}
