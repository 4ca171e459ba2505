package shim

import (
	"github.com/cocoon-runtime/cocoon"
	v2 "github.com/containerd/cgroups/v3/cgroup2/stats"
)

// metrics converts a container's cgroup statistics from the guest (a
// cgroup v2 hierarchy) into containerd's cgroup v2 metrics type, which
// `ctr task metrics` and the CRI decode.
func metrics(st *cocoon.ContainerStats) *v2.Metrics {
	m := &v2.Metrics{
		Pids: &v2.PidsStat{Current: st.Pids.Current, Limit: st.Pids.Limit},
		CPU: &v2.CPUStat{
			UsageUsec:     st.CPU.UsageNs / 1000,
			UserUsec:      st.CPU.UserNs / 1000,
			SystemUsec:    st.CPU.SystemNs / 1000,
			NrThrottled:   st.CPU.ThrottledPeriods,
			ThrottledUsec: st.CPU.ThrottledNs / 1000,
		},
		Memory: &v2.MemoryStat{
			Usage:      st.Memory.UsageBytes,
			UsageLimit: st.Memory.LimitBytes,
			Anon:       st.Memory.AnonBytes,
			File:       st.Memory.FileBytes,
		},
		MemoryEvents: &v2.MemoryEvents{Oom: st.Memory.OOMEvents, OomKill: st.Memory.OOMKillEvents},
		Io: &v2.IOStat{Usage: []*v2.IOEntry{{
			Rbytes: st.IO.ReadBytes, Wbytes: st.IO.WriteBytes, Rios: st.IO.ReadOps, Wios: st.IO.WriteOps,
		}}},
	}
	for _, n := range st.Network {
		m.Network = append(m.Network, &v2.NetworkStat{
			Name: n.Name, RxBytes: n.RxBytes, RxPackets: n.RxPackets, RxErrors: n.RxErrors, RxDropped: n.RxDropped,
			TxBytes: n.TxBytes, TxPackets: n.TxPackets, TxErrors: n.TxErrors, TxDropped: n.TxDropped,
		})
	}
	return m
}
