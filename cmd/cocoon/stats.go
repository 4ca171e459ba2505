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
CPU time, memory, PIDs and block I/O; and the counters of the pod's
network interfaces.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id := args[0]
			return withContainer(cmd, g, id, func(sb *cocoon.Sandbox) error {
				s, err := sb.StatsContainer(cmd.Context(), id)
				if err != nil {
					return fmt.Errorf("stats of %s: %w", id, err)
				}
				if g.json {
					return writeJSON(cmd.OutOrStdout(), "stats", s)
				}
				return printStats(cmd.OutOrStdout(), s)
			})
		},
	}
}

func printStats(w io.Writer, s *cocoon.ContainerStats) error {
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
	for _, n := range s.Network {
		fmt.Fprintf(tw, "net %s\trx %d bytes, %d packets\ttx %d bytes, %d packets\terrors %d rx, %d tx\tdrops %d rx, %d tx\n",
			n.Name, n.RxBytes, n.RxPackets, n.TxBytes, n.TxPackets, n.RxErrors, n.TxErrors, n.RxDropped, n.TxDropped)
	}
	if err := tw.Flush(); err != nil {
		return fmt.Errorf("write stats: %w", err)
	}
	return nil
}

func ns(v uint64) time.Duration { return time.Duration(v) }
