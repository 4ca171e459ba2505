package main

import (
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/cocoon-runtime/cocoon"
	"github.com/spf13/cobra"
)

func newStatsCommand(g *globalOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "stats [--json] ID",
		Short: "Print a container's resource usage",
		Long: `Print a container's resource usage, from its cgroup in the sandbox VM:
CPU time, memory, PIDs and block I/O.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id := args[0]
			return withContainer(cmd, g, id, func(sb *cocoon.Sandbox) error {
				s, err := sb.StatsContainer(cmd.Context(), id)
				if err != nil {
					return fmt.Errorf("stats of %s: %w", id, err)
				}
				st := statsFrom(s)
				if g.json {
					return writeJSON(cmd.OutOrStdout(), "stats", st)
				}
				return printStats(cmd.OutOrStdout(), st)
			})
		},
	}
}

// statsJSON are a container's statistics as cocoon prints them.
type statsJSON struct {
	CPU struct {
		UsageNs          uint64 `json:"usage_ns"`
		UserNs           uint64 `json:"user_ns"`
		SystemNs         uint64 `json:"system_ns"`
		ThrottledPeriods uint64 `json:"throttled_periods"`
		ThrottledNs      uint64 `json:"throttled_ns"`
	} `json:"cpu"`
	Memory struct {
		UsageBytes    uint64 `json:"usage_bytes"`
		LimitBytes    uint64 `json:"limit_bytes"`
		MaxUsageBytes uint64 `json:"max_usage_bytes"`
		AnonBytes     uint64 `json:"anon_bytes"`
		FileBytes     uint64 `json:"file_bytes"`
		OOMEvents     uint64 `json:"oom_events"`
		OOMKillEvents uint64 `json:"oom_kill_events"`
	} `json:"memory"`
	Pids struct {
		Current uint64 `json:"current"`
		Limit   uint64 `json:"limit"`
	} `json:"pids"`
	IO struct {
		ReadBytes  uint64 `json:"read_bytes"`
		WriteBytes uint64 `json:"write_bytes"`
		ReadOps    uint64 `json:"read_ops"`
		WriteOps   uint64 `json:"write_ops"`
	} `json:"io"`
}

func statsFrom(s *cocoon.ContainerStats) statsJSON {
	var o statsJSON
	o.CPU.UsageNs, o.CPU.UserNs, o.CPU.SystemNs = s.GetCpuUsageNs(), s.GetCpuUserNs(), s.GetCpuSystemNs()
	o.CPU.ThrottledPeriods, o.CPU.ThrottledNs = s.GetCpuThrottledPeriods(), s.GetCpuThrottledNs()
	o.Memory.UsageBytes, o.Memory.LimitBytes, o.Memory.MaxUsageBytes = s.GetMemoryUsageBytes(), s.GetMemoryLimitBytes(), s.GetMemoryMaxUsageBytes()
	o.Memory.AnonBytes, o.Memory.FileBytes = s.GetMemoryAnonBytes(), s.GetMemoryFileBytes()
	o.Memory.OOMEvents, o.Memory.OOMKillEvents = s.GetMemoryOomEvents(), s.GetMemoryOomKillEvents()
	o.Pids.Current, o.Pids.Limit = s.GetPidsCurrent(), s.GetPidsLimit()
	o.IO.ReadBytes, o.IO.WriteBytes = s.GetIoReadBytes(), s.GetIoWriteBytes()
	o.IO.ReadOps, o.IO.WriteOps = s.GetIoReadOps(), s.GetIoWriteOps()
	return o
}

func printStats(w io.Writer, s statsJSON) error {
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	limit := func(v uint64) string {
		if v == 0 {
			return "max"
		}
		return fmt.Sprint(v)
	}
	fmt.Fprintf(tw, "cpu\tusage %v\tuser %v\tsystem %v\tthrottled %d periods, %v\n",
		ns(s.CPU.UsageNs), ns(s.CPU.UserNs), ns(s.CPU.SystemNs), s.CPU.ThrottledPeriods, ns(s.CPU.ThrottledNs))
	fmt.Fprintf(tw, "memory\tusage %d\tlimit %s\tmax usage %d\tanon %d, file %d\n",
		s.Memory.UsageBytes, limit(s.Memory.LimitBytes), s.Memory.MaxUsageBytes, s.Memory.AnonBytes, s.Memory.FileBytes)
	fmt.Fprintf(tw, "oom\tevents %d\tkills %d\t\t\n", s.Memory.OOMEvents, s.Memory.OOMKillEvents)
	fmt.Fprintf(tw, "pids\tcurrent %d\tlimit %s\t\t\n", s.Pids.Current, limit(s.Pids.Limit))
	fmt.Fprintf(tw, "io\tread %d bytes\twrite %d bytes\t%d read ops\t%d write ops\n",
		s.IO.ReadBytes, s.IO.WriteBytes, s.IO.ReadOps, s.IO.WriteOps)
	if err := tw.Flush(); err != nil {
		return fmt.Errorf("write stats: %w", err)
	}
	return nil
}

func ns(v uint64) time.Duration { return time.Duration(v) }
