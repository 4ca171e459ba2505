package shim

import (
	"github.com/cocoon-runtime/cocoon"
	v2 "github.com/containerd/cgroups/v3/cgroup2/stats"
)

// metrics converts a container's cgroup statistics from the guest (a
// cgroup v2 hierarchy) into containerd's cgroup v2 metrics type, which
// `ctr task metrics` and the CRI decode.
func metrics(st *cocoon.ContainerStats) *v2.Metrics {
	return &v2.Metrics{
		Pids: &v2.PidsStat{Current: st.PidsCurrent, Limit: st.PidsLimit},
		CPU: &v2.CPUStat{
			UsageUsec:     st.CpuUsageNs / 1000,
			UserUsec:      st.CpuUserNs / 1000,
			SystemUsec:    st.CpuSystemNs / 1000,
			NrThrottled:   st.CpuThrottledPeriods,
			ThrottledUsec: st.CpuThrottledNs / 1000,
		},
		Memory: &v2.MemoryStat{
			Usage:      st.MemoryUsageBytes,
			UsageLimit: st.MemoryLimitBytes,
			Anon:       st.MemoryAnonBytes,
			File:       st.MemoryFileBytes,
		},
		MemoryEvents: &v2.MemoryEvents{Oom: st.MemoryOomEvents, OomKill: st.MemoryOomKillEvents},
		Io: &v2.IOStat{Usage: []*v2.IOEntry{{
			Rbytes: st.IoReadBytes, Wbytes: st.IoWriteBytes, Rios: st.IoReadOps, Wios: st.IoWriteOps,
		}}},
	}
}
