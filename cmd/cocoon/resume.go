package main

import (
	"fmt"

	"github.com/cocoon-runtime/cocoon"
	"github.com/spf13/cobra"
)

func newResumeCommand(g *globalOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "resume ID",
		Short: "Thaw a paused container",
		Long:  `Thaw the processes of a container frozen by 'cocoon pause'.`,
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id := args[0]
			return withContainer(cmd, g, id, func(sb *cocoon.Sandbox) error {
				if _, err := requireState(cmd.Context(), sb, id, cocoon.StatePaused); err != nil {
					return fmt.Errorf("resume %s: %w", id, err)
				}
				if err := sb.ResumeContainer(cmd.Context(), id); err != nil {
					return fmt.Errorf("resume %s: %w", id, err)
				}
				return nil
			})
		},
	}
}
