package qemu

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"time"

	"github.com/cocoon-runtime/cocoon/hypervisor"
	"github.com/cocoon-runtime/cocoon/hypervisor/qemu/internal/qmp"
)

// A q35 VM booted with room to grow (MaxVCPUs above VCPUs, MaxMemoryMiB
// above MemoryMiB) has its vCPUs hot-plugged as CPU devices into the free
// slots of its -smp maxcpus topology, and its memory grown and shrunk by a
// virtio-mem device that spans what lies between MemoryMiB and
// MaxMemoryMiB. QEMU is asked what the VM has each time (the VM's own
// answer, not this handle's memory of it), so that two processes resizing
// one VM in turn agree.

// memDeviceID is the virtio-mem device's id; memBlockMiB its block size:
// the granule the guest plugs and unplugs.
const (
	memDeviceID = "vmem0"
	memBackend  = "vmem-mem"
	memBlockMiB = 2
)

// hotMemoryMiB is how much memory the virtio-mem device can add to a VM
// of c: what lies between MemoryMiB and MaxMemoryMiB, in whole blocks; 0
// when the VM cannot grow.
func (l launch) hotMemoryMiB() uint32 {
	c := l.cfg
	if l.machine != MachineQ35 || c.MaxMemoryMiB <= c.MemoryMiB {
		return 0
	}
	return (c.MaxMemoryMiB - c.MemoryMiB) / memBlockMiB * memBlockMiB
}

// canGrowCPUs reports whether vCPUs can be hot-plugged into the VM.
func (l launch) canGrowCPUs() bool {
	return l.machine == MachineQ35 && l.cfg.MaxVCPUs > l.cfg.VCPUs
}

// hotCPU is one entry of query-hotpluggable-cpus.
type hotCPU struct {
	Type  string `json:"type"`
	Props struct {
		SocketID *int `json:"socket-id,omitempty"`
		CoreID   *int `json:"core-id,omitempty"`
		ThreadID *int `json:"thread-id,omitempty"`
		NodeID   *int `json:"node-id,omitempty"`
	} `json:"props"`
	QOMPath string `json:"qom-path"`
}

// slotID names the CPU device Cocoon plugs into slot h: by its position,
// so that the slot of a device is known from its id alone.
func (h hotCPU) slotID() string {
	n := func(p *int) int {
		if p == nil {
			return 0
		}
		return *p
	}
	return fmt.Sprintf("vcpu-s%d-c%d-t%d", n(h.Props.SocketID), n(h.Props.CoreID), n(h.Props.ThreadID))
}

// ResizeVCPUs hot-plugs vCPUs into the VM's free CPU slots, or unplugs
// the ones it hot-plugged (under KVM; under TCG they stay plugged for the
// guest to offline), until it has vcpus for the guest to run, and
// reports how many that is. The vCPUs it booted with stay: vcpus below
// them is an error. The guest onlines or offlines a vCPU itself (its
// agent is asked to).
func (q *QEMU) ResizeVCPUs(ctx context.Context, vcpus uint32) (uint32, error) {
	q.mu.Lock()
	l := q.launch
	q.mu.Unlock()
	maxCPUs := max(l.cfg.MaxVCPUs, l.cfg.VCPUs)
	switch {
	case !l.canGrowCPUs():
		return 0, fmt.Errorf("resize vcpus: the VM was booted without room for more vCPUs: %w", hypervisor.ErrNotSupported)
	case vcpus < l.cfg.VCPUs || vcpus > maxCPUs:
		return 0, fmt.Errorf("resize vcpus to %d: out of range (%d booted, %d at most)", vcpus, l.cfg.VCPUs, maxCPUs)
	}
	c, release, err := q.client(ctx)
	if err != nil {
		return 0, fmt.Errorf("resize vcpus: %w", err)
	}
	defer release()
	var slots []hotCPU
	if err := c.Execute(ctx, "query-hotpluggable-cpus", nil, &slots); err != nil {
		return 0, fmt.Errorf("resize vcpus: %w", err)
	}
	// QEMU lists the slots last first; plug in order and unplug the
	// last plugged first.
	slices.Reverse(slots)
	var plugged, free []hotCPU
	for _, s := range slots {
		if s.QOMPath != "" {
			plugged = append(plugged, s)
		} else {
			free = append(free, s)
		}
	}
	have := uint32(len(plugged))
	for ; have < vcpus && len(free) > 0; have++ {
		s := free[0]
		free = free[1:]
		args := map[string]any{"driver": s.Type, "id": s.slotID()}
		props, _ := json.Marshal(s.Props)
		var p map[string]any
		json.Unmarshal(props, &p)
		for k, v := range p {
			args[k] = v
		}
		if err := c.DeviceAdd(ctx, args); err != nil {
			return have, fmt.Errorf("resize vcpus: add vCPU %s: %w", s.slotID(), err)
		}
	}
	if have > vcpus && l.accel != hypervisor.AccelKVM {
		// Under TCG a vCPU unplugged can never be plugged again: QEMU
		// 7.2 gives every vCPU thread a TCG context of its own, maxcpus
		// of them, and never frees one, so the next device_add would
		// abort QEMU. The vCPUs stay plugged, and the guest is to take
		// those beyond vcpus offline.
		return vcpus, nil
	}
	for i := len(plugged) - 1; have > vcpus && i >= 0; i-- {
		s := plugged[i]
		if !isCocoonCPU(s) {
			break // a vCPU the VM booted with
		}
		// The guest offlines and ejects the vCPU. QEMU 7.2 reports
		// DEVICE_DELETED for the vCPU's APIC only, so the slot is watched.
		if err := c.Execute(ctx, "device_del", map[string]any{"id": s.slotID()}, nil); err != nil {
			return have, fmt.Errorf("resize vcpus: remove vCPU %s: %w", s.slotID(), err)
		}
		if err := waitUnplugged(ctx, c, s.slotID()); err != nil {
			return have, fmt.Errorf("resize vcpus: remove vCPU %s: %w", s.slotID(), err)
		}
		have--
	}
	return have, nil
}

// waitUnplugged waits until the CPU slot named id is free.
func waitUnplugged(ctx context.Context, c *qmp.Client, id string) error {
	for {
		var slots []hotCPU
		if err := c.Execute(ctx, "query-hotpluggable-cpus", nil, &slots); err != nil {
			return err
		}
		if !slices.ContainsFunc(slots, func(s hotCPU) bool { return s.slotID() == id && s.QOMPath != "" }) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("the guest did not release it: %w", ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// isCocoonCPU reports whether the CPU in slot s was hot-plugged (by
// ResizeVCPUs, which names it by its slot): QEMU's own boot vCPUs have
// no id, and their QOM path is not below /machine/peripheral.
func isCocoonCPU(s hotCPU) bool {
	return s.QOMPath == "/machine/peripheral/"+s.slotID()
}

// ResizeMemory asks the guest to take or give back memory until it has
// memMiB (the boot memory plus what the virtio-mem device provides) and
// waits, until ctx is done, for it to get there; it reports what the VM
// has then. A guest that cannot give memory back (the memory is in use)
// keeps more than asked: that is reported, not an error.
func (q *QEMU) ResizeMemory(ctx context.Context, memMiB uint32) (uint32, error) {
	q.mu.Lock()
	l := q.launch
	q.mu.Unlock()
	hot := l.hotMemoryMiB()
	base := l.cfg.MemoryMiB
	switch {
	case hot == 0:
		return 0, fmt.Errorf("resize memory: the VM was booted without room for more memory: %w", hypervisor.ErrNotSupported)
	case memMiB < base || memMiB > base+hot:
		return 0, fmt.Errorf("resize memory to %d MiB: out of range (%d MiB booted, %d MiB at most)", memMiB, base, base+hot)
	}
	want := (memMiB - base + memBlockMiB - 1) / memBlockMiB * memBlockMiB
	c, release, err := q.client(ctx)
	if err != nil {
		return 0, fmt.Errorf("resize memory: %w", err)
	}
	defer release()
	path := "/machine/peripheral/" + memDeviceID
	// The size before the request is what the VM has if ctx ends
	// before the guest answers it.
	var size uint64
	if err := c.Execute(ctx, "qom-get", map[string]any{"path": path, "property": "size"}, &size); err != nil {
		return 0, fmt.Errorf("resize memory: %w", err)
	}
	if err := c.Execute(ctx, "qom-set", map[string]any{"path": path, "property": "requested-size", "value": uint64(want) << 20}, nil); err != nil {
		return 0, fmt.Errorf("resize memory: %w", err)
	}
	for {
		var now uint64
		err := c.Execute(ctx, "qom-get", map[string]any{"path": path, "property": "size"}, &now)
		switch {
		case err == nil:
			size = now
		case ctx.Err() == nil:
			return 0, fmt.Errorf("resize memory: %w", err)
		}
		got := base + uint32(min(size>>20, uint64(hot)))
		if err == nil && size == uint64(want)<<20 {
			return got, nil
		}
		select {
		case <-ctx.Done():
			if size < uint64(want)<<20 {
				return got, fmt.Errorf("resize memory to %d MiB: the guest plugged %d MiB: %w", memMiB, got, ctx.Err())
			}
			return got, nil
		case <-time.After(5 * time.Millisecond):
		}
	}
}
