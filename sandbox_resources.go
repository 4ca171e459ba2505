package cocoon

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"time"

	"github.com/cocoon-runtime/cocoon/hypervisor"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// A sandbox's VM is as big as its base plus what its workload asks for:
// the larger of the pod's own resources (SandboxConfig.Resources, which
// the CRI derives from every container of the pod) and the sum of the
// limits of the containers it runs. The VM grows (vCPUs and memory
// hot-plugged) when a container that needs more is created or its limits
// are raised, and shrinks back, as far as the guest lets go of memory and
// never below what it booted with, when a container goes or its limits
// fall. A VM restored from a template boots at the base (one template
// serves every size) and grows to its pod's size at once.

// vmSize is a VM's vCPUs and memory.
type vmSize struct {
	VCPUs     uint32 `json:"vcpus"`
	MemoryMiB uint32 `json:"memory_mib"`
}

// sizing is what a sandbox's VM is sized from and what it has now.
type sizing struct {
	// Base is the VM's own share (VMConfig.VCPUs and MemoryMiB); Max
	// the most it may grow to; Boot what it booted (or was restored)
	// with, below which it cannot shrink.
	Base vmSize `json:"base"`
	Max  vmSize `json:"max"`
	Boot vmSize `json:"boot"`
	// Pod is what the pod asked for at creation.
	Pod Resources `json:"pod,omitzero"`
	// Current is what the host gave the VM.
	Current vmSize `json:"current"`
}

// resizeWait bounds how long a resize waits for the guest to take or
// give back what it was asked to.
const resizeWait = 20 * time.Second

// newSizing resolves cfg's base (the driver's defaults: 1 vCPU, 256 MiB)
// and ceilings (0: the host's) for a sandbox whose pod asks for pod.
func newSizing(vm VMConfig, pod Resources) (sizing, error) {
	sz := sizing{Base: vmSize{max(vm.VCPUs, 1), vm.MemoryMiB}, Pod: pod}
	if sz.Base.MemoryMiB == 0 {
		sz.Base.MemoryMiB = 256
	}
	sz.Max = vmSize{vm.MaxVCPUs, vm.MaxMemoryMiB}
	if sz.Max.VCPUs == 0 {
		sz.Max.VCPUs = uint32(runtime.NumCPU())
	}
	if sz.Max.MemoryMiB == 0 {
		m, err := hostMemoryMiB()
		if err != nil {
			return sz, err
		}
		sz.Max.MemoryMiB = m
	}
	sz.Max.VCPUs = max(sz.Max.VCPUs, sz.Base.VCPUs)
	return sz, nil // the base beyond the most fails in target
}

// target is the size the VM needs for the pod and the containers whose
// resources are given.
func (sz sizing) target(containers []Resources) (vmSize, error) {
	var sum Resources
	for _, r := range containers {
		var err error
		if sum, err = sum.plus(r); err != nil {
			return vmSize{}, err
		}
	}
	want, err := sum.atLeast(sz.Pod)
	if err != nil {
		return vmSize{}, err
	}
	base := VMConfig{VCPUs: sz.Base.VCPUs, MemoryMiB: sz.Base.MemoryMiB}
	vm, err := SizeVM(base, want, SizeLimits{MaxVCPUs: sz.Max.VCPUs, MaxMemoryMiB: sz.Max.MemoryMiB})
	if err != nil {
		return vmSize{}, err
	}
	return vmSize{vm.VCPUs, vm.MemoryMiB}, nil
}

// The CFS quota of a sum of resources is kept per second.
const sumPeriod = maxCPUPeriod

// cpuMicros is r's CPU limit in CPU-microseconds per second (0: none).
func (r Resources) cpuMicros() (uint64, error) {
	if _, _, err := r.need(); err != nil {
		return 0, err
	}
	if r.CPUQuota <= 0 {
		return 0, nil
	}
	return (uint64(r.CPUQuota)*sumPeriod + r.CPUPeriod - 1) / r.CPUPeriod, nil
}

// plus is what r and o ask for together.
func (r Resources) plus(o Resources) (Resources, error) {
	return r.combine(o, func(a, b uint64) uint64 { return a + b })
}

// atLeast is r, raised to what o asks for where o asks for more.
func (r Resources) atLeast(o Resources) (Resources, error) {
	return r.combine(o, func(a, b uint64) uint64 { return max(a, b) })
}

func (r Resources) combine(o Resources, op func(a, b uint64) uint64) (Resources, error) {
	a, err := r.cpuMicros()
	if err != nil {
		return Resources{}, err
	}
	b, err := o.cpuMicros()
	if err != nil {
		return Resources{}, err
	}
	var out Resources
	if cpu := op(a, b); cpu > 0 {
		out.CPUQuota, out.CPUPeriod = int64(min(cpu, maxQuotaCPUs*sumPeriod)), sumPeriod
	}
	mem := op(uint64(max(r.MemoryBytes, 0)), uint64(max(o.MemoryBytes, 0)))
	out.MemoryBytes = int64(min(mem, 1<<62))
	return out, nil
}

// withUpdate is r with what an update of linux.resources changes.
func (r Resources) withUpdate(u *specs.LinuxResources) Resources {
	if u == nil {
		return r
	}
	n := ResourcesOf(&specs.Spec{Linux: &specs.Linux{Resources: u}})
	if c := u.CPU; c != nil && c.Quota != nil {
		r.CPUQuota = n.CPUQuota
		if c.Period != nil {
			r.CPUPeriod = n.CPUPeriod
		}
	}
	if u.Memory != nil && u.Memory.Limit != nil {
		r.MemoryBytes = n.MemoryBytes
	}
	return r
}

// containerResources lists the resources of st's containers, with id's
// replaced by (or, for a new one, added as) r.
func containerResources(st *sandboxState, id string, r *Resources) []Resources {
	var out []Resources
	for cid, c := range st.Containers {
		if cid != id {
			out = append(out, c.Resources)
		}
	}
	if r != nil {
		out = append(out, *r)
	}
	return out
}

// fitLocked resizes the VM to what the pod and its containers (id's with
// resources r, when r is set) need: grow only grows it (before a
// container gets more), otherwise it may shrink too. The caller holds the
// sandbox's lock. A sandbox recorded without sizing keeps its size.
func (s *Sandbox) fitLocked(ctx context.Context, id string, r *Resources, grow bool) error {
	st, err := s.loadLocked() // another process may have resized it
	if err != nil {
		return err
	}
	sz := st.Sizing
	if sz == nil {
		return nil
	}
	want, err := sz.target(containerResources(st, id, r))
	if err != nil {
		return err
	}
	if grow {
		want = vmSize{max(want.VCPUs, sz.Current.VCPUs), max(want.MemoryMiB, sz.Current.MemoryMiB)}
	}
	want = vmSize{max(want.VCPUs, sz.Boot.VCPUs), max(want.MemoryMiB, sz.Boot.MemoryMiB)}
	if want == sz.Current {
		return nil
	}
	return s.resizeLocked(ctx, *sz, want)
}

// resizeLocked hot-plugs or unplugs vCPUs and memory until the VM has
// want, has the guest online them, and records what the VM has then.
func (s *Sandbox) resizeLocked(ctx context.Context, sz sizing, want vmSize) (err error) {
	v, err := s.runningVM()
	if err != nil {
		return err
	}
	c, err := s.agentClient()
	if err != nil {
		return err
	}
	got := sz.Current
	plugged := got.MemoryMiB // what the VM really has, which the guest may not exceed
	defer func() {
		if got == sz.Current {
			return
		}
		s.rt.log.Info("sandbox resized", "sandbox", s.id, "vcpus", got.VCPUs, "memory_mib", got.MemoryMiB, "asked_vcpus", want.VCPUs, "asked_memory_mib", want.MemoryMiB)
		if uerr := s.updateLocked(func(st *sandboxState) error {
			cur := *st.Sizing
			cur.Current = got
			st.Sizing = &cur
			return nil
		}); uerr != nil && err == nil {
			err = uerr
		}
	}()
	ctx, cancel := context.WithTimeout(ctx, resizeWait)
	defer cancel()
	if want.VCPUs != got.VCPUs {
		n, err := v.ResizeVCPUs(ctx, want.VCPUs)
		if n != 0 {
			got.VCPUs = n
		}
		if err != nil {
			return fmt.Errorf("resize sandbox %s to %d vCPUs: %w", s.id, want.VCPUs, vmCannotGrow(err))
		}
	}
	if want.MemoryMiB != got.MemoryMiB {
		// Memory the guest will not give back (in use) is no error: the
		// VM keeps it until the guest can.
		shrink := ctx
		if want.MemoryMiB < got.MemoryMiB {
			var cancel context.CancelFunc
			shrink, cancel = context.WithTimeout(ctx, time.Second)
			defer cancel()
		}
		m, err := v.ResizeMemory(shrink, want.MemoryMiB)
		if err != nil {
			if m != 0 {
				got.MemoryMiB = m
			}
			return fmt.Errorf("resize sandbox %s to %d MiB: %w", s.id, want.MemoryMiB, vmCannotGrow(err))
		}
		// The request stands while the guest frees what it still holds.
		got.MemoryMiB, plugged = want.MemoryMiB, max(m, want.MemoryMiB)
	}
	res, err := c.OnlineResources(ctx, got.VCPUs, uint64(plugged)<<20, resizeWait/2)
	if err != nil {
		return fmt.Errorf("resize sandbox %s: %w", s.id, err)
	}
	if res.OnlineCPUs != got.VCPUs {
		return fmt.Errorf("resize sandbox %s: the guest has %d of its %d vCPUs online", s.id, res.OnlineCPUs, got.VCPUs)
	}
	return nil
}

// vmCannotGrow says what a driver's ErrNotSupported means to a caller.
func vmCannotGrow(err error) error {
	if errors.Is(err, hypervisor.ErrNotSupported) {
		return fmt.Errorf("%w: the VM cannot be resized (machine type without CPU and memory hotplug): %w", ErrInvalidConfig, err)
	}
	return err
}

// shrink gives back what the VM no longer needs for the containers it
// runs; a VM that stays bigger is logged, not an error of the caller's.
func (s *Sandbox) shrink(ctx context.Context) {
	if err := s.fitLocked(context.WithoutCancel(ctx), "", nil, false); err != nil {
		s.rt.log.Warn("sandbox VM not shrunk", "sandbox", s.id, "err", err)
	}
}
