package main

import (
	"fmt"

	"github.com/cocoon-runtime/cocoon"
	"github.com/spf13/cobra"
)

func newPauseCommand(g *globalOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "pause ID",
		Short: "Freeze every process of a container",
		Long: `Freeze every process of a container (with the cgroup freezer in its
sandbox VM) until 'cocoon resume'.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id := args[0]
			return withContainer(cmd, g, id, func(sb *cocoon.Sandbox) error {
				if _, err := requireState(cmd.Context(), sb, id, cocoon.StateRunning); err != nil {
					return fmt.Errorf("pause %s: %w", id, err)
				}
				if err := sb.PauseContainer(cmd.Context(), id); err != nil {
					return fmt.Errorf("pause %s: %w", id, err)
				}
				return nil
			})
		},
	}
}
