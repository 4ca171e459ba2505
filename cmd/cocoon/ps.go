package main

import (
	"fmt"
	"text/tabwriter"

	"github.com/cocoon-runtime/cocoon"
	"github.com/spf13/cobra"
)

func newPsCommand(g *globalOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "ps [--json] ID",
		Short: "List the processes running in a container",
		Long: `List the processes running in a container. PIDs are those of the
sandbox VM's kernel, not the host's.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id := args[0]
			return withContainer(cmd, g, id, func(sb *cocoon.Sandbox) error {
				procs, err := sb.ProcessListContainer(cmd.Context(), id)
				if err != nil {
					return fmt.Errorf("list processes of %s: %w", id, err)
				}
				return printProcesses(cmd, g, procs)
			})
		},
	}
}

// processJSON is one process as `ps --json` prints it.
type processJSON struct {
	PID     int    `json:"pid"`
	PPID    int    `json:"ppid"`
	State   string `json:"state"`
	Command string `json:"cmd"`
}

func printProcesses(cmd *cobra.Command, g *globalOptions, procs []cocoon.ProcessInfo) error {
	out := cmd.OutOrStdout()
	if g.json {
		list := make([]processJSON, 0, len(procs))
		for _, p := range procs {
			list = append(list, processJSON{PID: p.Pid, PPID: p.PPid, State: p.State, Command: p.Command})
		}
		return writeJSON(out, "process list", list)
	}
	tw := tabwriter.NewWriter(out, 0, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "PID\tPPID\tSTATE\tCMD")
	for _, p := range procs {
		fmt.Fprintf(tw, "%d\t%d\t%s\t%s\n", p.Pid, p.PPid, p.State, p.Command)
	}
	if err := tw.Flush(); err != nil {
		return fmt.Errorf("write process list: %w", err)
	}
	return nil
}
