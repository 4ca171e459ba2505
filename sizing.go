package cocoon

import (
	"fmt"
	"math"
	"runtime"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// A sandbox's VM is sized from what its workload asks for: the VM's base
// (VMConfig.VCPUs and MemoryMiB, the guest kernel's, agent's and page
// cache's share) plus the workload's CPU and memory limits, so that a
// container's limit inside the guest is never more than the VM has.

// Resources is what a sandbox's workload asks for beyond the VM's base.
type Resources struct {
	// CPUQuota per CPUPeriod, in microseconds, as the kernel's CFS takes
	// them: the workload may use CPUQuota/CPUPeriod CPUs. A quota of 0 or
	// -1 asks for no limit.
	CPUQuota  int64  `json:"cpu_quota,omitempty"`
	CPUPeriod uint64 `json:"cpu_period,omitempty"`
	// MemoryBytes is the workload's memory limit; 0 (or -1) asks for none.
	MemoryBytes int64 `json:"memory_bytes,omitempty"`
}

// ResourcesOf returns the CPU and memory limits of an OCI spec's
// linux.resources (none when it has none).
func ResourcesOf(spec *specs.Spec) Resources {
	var res Resources
	if spec == nil || spec.Linux == nil || spec.Linux.Resources == nil {
		return res
	}
	r := spec.Linux.Resources
	if c := r.CPU; c != nil {
		if c.Quota != nil {
			res.CPUQuota = *c.Quota
		}
		if c.Period != nil {
			res.CPUPeriod = *c.Period
		}
	}
	if m := r.Memory; m != nil && m.Limit != nil {
		res.MemoryBytes = *m.Limit
	}
	return res
}

// SizeLimits bound SizeVM; 0 stands for the host's own: its CPU count and
// its memory.
type SizeLimits struct {
	MaxVCPUs, MaxMemoryMiB uint32
}

// MemoryBlockMiB is the granule of the memory a workload adds to a VM:
// the guest's memory block size (x86), which memory hotplug works in too.
const MemoryBlockMiB = 128

// The CFS period's range (the kernel's), and the most CPUs a quota may
// name before it is taken for nonsense.
const (
	minCPUPeriod = 1000
	maxCPUPeriod = 1000000
	maxQuotaCPUs = 1024
)

// SizeVM returns base grown by what res asks for: whole vCPUs for the CPU
// quota (rounded up) and memory for the limit (rounded up to
// MemoryBlockMiB). vCPUs beyond the limit are capped (a quota above it
// only runs slower); memory beyond it is refused, an ErrInvalidConfig
// error, since a VM started smaller than its workload's limit would see
// the workload killed. Malformed requests (a negative quota or memory, a
// quota without a period, a period outside 1 ms to 1 s, a quota of more
// than 1024 CPUs) are ErrInvalidConfig errors too.
func SizeVM(base VMConfig, res Resources, lim SizeLimits) (VMConfig, error) {
	cpus, mem, err := res.need()
	if err != nil {
		return base, err
	}
	maxCPUs, maxMem := lim.MaxVCPUs, lim.MaxMemoryMiB
	if maxCPUs == 0 {
		maxCPUs = uint32(runtime.NumCPU())
	}
	if maxMem == 0 {
		if maxMem, err = hostMemoryMiB(); err != nil {
			return base, err
		}
	}
	if base.MemoryMiB > maxMem {
		return base, fmt.Errorf("%w: %w: the VM's base memory %d MiB is more than %d MiB", ErrInvalidConfig, ErrTooBig, base.MemoryMiB, maxMem)
	}
	out := base
	out.VCPUs = uint32(min(uint64(base.VCPUs)+cpus, max(uint64(maxCPUs), uint64(base.VCPUs))))
	want := uint64(base.MemoryMiB) + mem
	if want > uint64(maxMem) {
		return base, fmt.Errorf("%w: %w: the workload's memory limit needs a VM of %d MiB (%d MiB base + %d MiB), more than %d MiB",
			ErrInvalidConfig, ErrTooBig, want, base.MemoryMiB, mem, maxMem)
	}
	out.MemoryMiB = uint32(want)
	return out, nil
}

// need is what res adds to a VM: vCPUs and MiB.
func (res Resources) need() (cpus, memMiB uint64, err error) {
	switch q := res.CPUQuota; {
	case q == 0 || q == -1:
	case q < -1:
		return 0, 0, fmt.Errorf("%w: CPU quota %d is negative", ErrInvalidConfig, q)
	case res.CPUPeriod == 0:
		return 0, 0, fmt.Errorf("%w: CPU quota %d without a period", ErrInvalidConfig, q)
	case res.CPUPeriod < minCPUPeriod || res.CPUPeriod > maxCPUPeriod:
		return 0, 0, fmt.Errorf("%w: CPU period %d µs is outside %d to %d", ErrInvalidConfig, res.CPUPeriod, minCPUPeriod, maxCPUPeriod)
	case uint64(q)/res.CPUPeriod > maxQuotaCPUs:
		return 0, 0, fmt.Errorf("%w: CPU quota %d per period %d asks for more than %d CPUs", ErrInvalidConfig, q, res.CPUPeriod, maxQuotaCPUs)
	default:
		cpus = (uint64(q) + res.CPUPeriod - 1) / res.CPUPeriod
	}
	switch m := res.MemoryBytes; {
	case m == 0 || m == -1:
	case m < -1:
		return 0, 0, fmt.Errorf("%w: memory limit %d is negative", ErrInvalidConfig, m)
	default:
		const block = MemoryBlockMiB << 20
		blocks := (uint64(m) + block - 1) / block
		if blocks > math.MaxUint32/MemoryBlockMiB {
			return 0, 0, fmt.Errorf("%w: memory limit %d bytes is absurd", ErrInvalidConfig, m)
		}
		memMiB = blocks * MemoryBlockMiB
	}
	return cpus, memMiB, nil
}

// hostMemoryMiB is the host's memory.
func hostMemoryMiB() (uint32, error) {
	var si unix.Sysinfo_t
	if err := unix.Sysinfo(&si); err != nil {
		return 0, fmt.Errorf("host memory: %w", err)
	}
	return uint32(min(uint64(si.Totalram)*uint64(si.Unit)>>20, math.MaxUint32)), nil
}
