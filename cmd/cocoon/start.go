package main

import (
	"fmt"

	"github.com/cocoon-runtime/cocoon"
	"github.com/spf13/cobra"
)

func newStartCommand(g *globalOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "start ID",
		Short: "Start a created container",
		Long: `Start the process of a container made by 'cocoon create'. Its output is
not collected.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id := args[0]
			return withContainer(cmd, g, id, func(sb *cocoon.Sandbox) error {
				if _, err := requireState(cmd.Context(), sb, id, cocoon.StateReady); err != nil {
					return fmt.Errorf("start %s: %w", id, err)
				}
				if err := sb.Start(cmd.Context()); err != nil {
					return fmt.Errorf("start %s: %w", id, err)
				}
				return nil
			})
		},
	}
}
