package main

import (
	"fmt"
	"syscall"

	"github.com/cocoon-runtime/cocoon"
	"github.com/spf13/cobra"
)

func newKillCommand(g *globalOptions) *cobra.Command {
	var all bool
	cmd := &cobra.Command{
		Use:   "kill [--all] ID [SIGNAL]",
		Short: "Send a signal to a container's process",
		Long: `Send a signal (default SIGTERM) to a container's init process, or with
--all to every process of the container. SIGNAL is a number (9) or a name
with or without the SIG prefix (TERM, SIGKILL, rtmin+1).

As on any Linux system, the init process of a container ignores the
signals it has no handler for, except SIGKILL.`,
		Example: `  cocoon kill demo
  cocoon kill demo KILL
  cocoon kill --all demo 9`,
		Args: cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			id := args[0]
			sig := syscall.SIGTERM
			if len(args) == 2 {
				var err error
				if sig, err = parseSignal(args[1]); err != nil {
					return fmt.Errorf("kill %s: %w", id, err)
				}
			}
			return withContainer(cmd, g, id, func(sb *cocoon.Sandbox) error {
				if _, err := requireState(cmd.Context(), sb, id, cocoon.StateReady, cocoon.StateRunning, cocoon.StatePaused); err != nil {
					return fmt.Errorf("kill %s: %w", id, err)
				}
				if err := sb.KillContainer(cmd.Context(), id, sig, all); err != nil {
					return fmt.Errorf("kill %s: %w", id, err)
				}
				return nil
			})
		},
	}
	cmd.Flags().BoolVarP(&all, "all", "a", false, "send the signal to every process of the container")
	return cmd
}
