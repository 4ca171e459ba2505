package container

import (
	"context"
	"fmt"
	"math"

	"github.com/opencontainers/cgroups"
)

// Stats are a container's resource usage, from its cgroup. Counters are
// cumulative since the container was created; a zero limit means none.
type Stats struct {
	CPU    CPUStats
	Memory MemoryStats
	Pids   PidsStats
	IO     IOStats
}

// CPUStats are CPU time and throttling.
type CPUStats struct {
	UsageNanos       uint64 // total CPU time
	UserNanos        uint64 // in user mode
	SystemNanos      uint64 // in kernel mode
	Periods          uint64 // enforcement periods elapsed with a quota
	ThrottledPeriods uint64 // periods in which the quota was exhausted
	ThrottledNanos   uint64 // total time throttled
}

// MemoryStats are memory usage and OOM events, in bytes and counts.
type MemoryStats struct {
	Usage     uint64 // current usage
	Limit     uint64 // memory.max, 0 when unlimited
	MaxUsage  uint64 // peak usage, 0 when the kernel does not record it
	Cache     uint64 // page cache (file-backed)
	RSS       uint64 // anonymous memory
	Anon      uint64
	File      uint64
	Swap      uint64 // swap usage
	SwapLimit uint64 // memory.swap.max, 0 when unlimited
	OOM       uint64 // times the limit was reached and the OOM killer invoked
	OOMKill   uint64 // processes killed by the OOM killer
}

// PidsStats are the number of tasks and their limit.
type PidsStats struct {
	Current uint64
	Limit   uint64 // 0 when unlimited
}

// IOStats are block IO totals over all devices.
type IOStats struct {
	ReadBytes  uint64
	WriteBytes uint64
	ReadOps    uint64
	WriteOps   uint64
}

// Stats returns the resource usage of container id from its cgroup v2
// group. Figures whose controller is not enabled are zero.
func (m *Manager) Stats(ctx context.Context, id string) (*Stats, error) {
	c, err := m.lookup(id)
	if err != nil {
		return nil, fmt.Errorf("container stats: %w", err)
	}
	defer c.mu.Unlock()
	ls, err := c.lc.Stats()
	if err != nil {
		return nil, fmt.Errorf("stats of container %s: %w", id, err)
	}
	st := convertStats(ls.CgroupStats)
	st.Memory.OOM, _ = c.oom.count("oom")
	st.Memory.OOMKill, _ = c.oom.count("oom_kill")
	return st, nil
}

// convertStats converts libcontainer's cgroup statistics.
func convertStats(cs *cgroups.Stats) *Stats {
	st := new(Stats)
	if cs == nil {
		return st
	}
	cpu := cs.CpuStats
	st.CPU = CPUStats{
		UsageNanos:       cpu.CpuUsage.TotalUsage,
		UserNanos:        cpu.CpuUsage.UsageInUsermode,
		SystemNanos:      cpu.CpuUsage.UsageInKernelmode,
		Periods:          cpu.ThrottlingData.Periods,
		ThrottledPeriods: cpu.ThrottlingData.ThrottledPeriods,
		ThrottledNanos:   cpu.ThrottlingData.ThrottledTime,
	}
	mem := cs.MemoryStats
	st.Memory = MemoryStats{
		Usage:     mem.Usage.Usage,
		Limit:     limit(mem.Usage.Limit),
		MaxUsage:  mem.Usage.MaxUsage,
		Cache:     mem.Cache,
		RSS:       mem.Stats["anon"],
		Anon:      mem.Stats["anon"],
		File:      mem.Stats["file"],
		Swap:      mem.SwapOnlyUsage.Usage,
		SwapLimit: limit(mem.SwapOnlyUsage.Limit),
	}
	st.Pids = PidsStats{Current: cs.PidsStats.Current, Limit: limit(cs.PidsStats.Limit)}
	for _, e := range cs.BlkioStats.IoServiceBytesRecursive {
		switch e.Op {
		case "Read":
			st.IO.ReadBytes += e.Value
		case "Write":
			st.IO.WriteBytes += e.Value
		}
	}
	for _, e := range cs.BlkioStats.IoServicedRecursive {
		switch e.Op {
		case "Read":
			st.IO.ReadOps += e.Value
		case "Write":
			st.IO.WriteOps += e.Value
		}
	}
	return st
}

// limit maps the "max" of cgroup files, read as the largest uint64, to 0.
func limit(v uint64) uint64 {
	if v == math.MaxUint64 {
		return 0
	}
	return v
}
