package main

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/cocoon-runtime/cocoon"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/spf13/cobra"
)

func newUpdateCommand(g *globalOptions) *cobra.Command {
	var (
		memory    string
		cpuQuota  int64
		cpuPeriod uint64
		pidsLimit int64
	)
	cmd := &cobra.Command{
		Use:   "update [flags] ID",
		Short: "Change a container's resource limits",
		Long: `Change the resource limits of a container's cgroup in its sandbox VM. Only
the limits given are changed. The sandbox VM grows first when the new CPU
or memory limits need more than it has (up to --max-vcpus and
--max-memory of its run; not with --fixed-size), and gives back what the
lowered limits no longer need. ` + "`cocoon state`" + ` shows the VM's size.`,
		Example: `  cocoon update --memory 64m --pids-limit 100 demo
  cocoon update --cpu-quota 50000 --cpu-period 100000 demo`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id := args[0]
			fl := cmd.Flags()
			var r specs.LinuxResources
			if fl.Changed("memory") {
				n, err := parseBytes(memory)
				if err != nil {
					return fmt.Errorf("update %s: %w", id, err)
				}
				r.Memory = &specs.LinuxMemory{Limit: &n}
			}
			if fl.Changed("cpu-quota") || fl.Changed("cpu-period") {
				r.CPU = &specs.LinuxCPU{}
				if fl.Changed("cpu-quota") {
					r.CPU.Quota = &cpuQuota
				}
				if fl.Changed("cpu-period") {
					r.CPU.Period = &cpuPeriod
				}
			}
			if fl.Changed("pids-limit") {
				r.Pids = &specs.LinuxPids{Limit: &pidsLimit}
			}
			if r.Memory == nil && r.CPU == nil && r.Pids == nil {
				return fmt.Errorf("update %s: no limit given (see --help)", id)
			}
			return withContainer(cmd, g, id, func(sb *cocoon.Sandbox) error {
				if err := sb.UpdateContainer(cmd.Context(), id, &r); err != nil {
					return fmt.Errorf("update %s: %w", id, err)
				}
				return nil
			})
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&memory, "memory", "", "memory limit in bytes, or with a k, m or g suffix (powers of 1024); -1 for none")
	fl.Int64Var(&cpuQuota, "cpu-quota", 0, "CPU time the container may use per period, in microseconds; -1 for no limit")
	fl.Uint64Var(&cpuPeriod, "cpu-period", 0, "CPU quota period in microseconds")
	fl.Int64Var(&pidsLimit, "pids-limit", 0, "maximum number of processes; -1 for no limit")
	return cmd
}

// parseBytes parses a byte count: digits with an optional k, m, g or t
// suffix (powers of 1024, an optional trailing b), or -1.
func parseBytes(s string) (int64, error) {
	if s == "-1" {
		return -1, nil
	}
	num := strings.TrimSuffix(strings.ToLower(s), "b")
	mult := int64(1)
	if n := len(num); n > 0 {
		if i := strings.IndexByte("kmgt", num[n-1]); i >= 0 {
			mult = int64(1) << (10 * (i + 1))
			num = num[:n-1]
		}
	}
	v, err := strconv.ParseInt(num, 10, 64)
	if err == nil && v < 0 {
		err = errors.New("negative")
	}
	if err != nil || v > (1<<63-1)/mult {
		return 0, fmt.Errorf("parse byte count %q: want a number such as 67108864 or 64m", s)
	}
	return v * mult, nil
}
