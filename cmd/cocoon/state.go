package main

import (
	"fmt"

	"github.com/spf13/cobra"
)

func newStateCommand(g *globalOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "state ID",
		Short: "Print the state of a container as JSON",
		Long: `Print the state of a container as a JSON document, like runc's: its
status (created, running, paused or stopped), the PID of its process in the
sandbox VM, its bundle, creation time and annotations, plus the host
processes of its sandbox VM.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id := args[0]
			sb, err := openSandbox(cmd, g, id)
			if err != nil {
				return fmt.Errorf("state: %w", err)
			}
			defer sb.Release()
			return writeJSON(cmd.OutOrStdout(), "state", describeContainer(sb.Status(cmd.Context())))
		},
	}
}
