package main

import (
	"fmt"

	"github.com/spf13/cobra"
)

func newGCCommand(g *globalOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "gc",
		Short: "Remove what killed cocoon processes left behind",
		Long: `Remove what cocoon processes killed in the middle of their work left
behind: sandboxes whose creation never finished, and VMs, file servers,
mounts, directories and lock files that no sandbox names. Sandboxes in use
by another process, and sandboxes that were created (running or not), are
left alone: delete removes those. Safe to run at any time.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			rt, err := g.runtime()
			if err != nil {
				return err
			}
			rep, err := rt.GC(cmd.Context())
			for _, id := range rep.Sandboxes {
				fmt.Fprintf(cmd.OutOrStdout(), "removed unfinished sandbox %s\n", id)
			}
			for _, k := range rep.Templates {
				fmt.Fprintf(cmd.OutOrStdout(), "removed unfinished vm template %s\n", k)
			}
			for _, l := range rep.Leftovers {
				fmt.Fprintf(cmd.OutOrStdout(), "removed leftover %s\n", l)
			}
			if err != nil {
				return fmt.Errorf("gc: %w", err)
			}
			return nil
		},
	}
}
