package main

import (
	"context"
	"errors"
	"fmt"

	"github.com/cocoon-runtime/cocoon"
	"github.com/spf13/cobra"
)

func newDeleteCommand(g *globalOptions) *cobra.Command {
	var force bool
	cmd := &cobra.Command{
		Use:     "delete [-f] ID",
		Aliases: []string{"rm"},
		Short:   "Delete a container and its sandbox VM",
		Long: `Delete a container and its sandbox VM: the VM is powered off, its file
server stopped, its mounts and state removed. A running or paused container
is refused unless --force, which kills it. A sandbox whose VM died is
cleaned up too. With --force, deleting a container that does not exist
succeeds.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id := args[0]
			ctx := cmd.Context()
			sb, err := openSandbox(cmd, g, id)
			if err != nil {
				if force && errors.Is(err, cocoon.ErrNotFound) {
					return nil
				}
				return fmt.Errorf("delete: %w", err)
			}
			defer sb.Release()
			if !force {
				st, err := sb.StatusContainer(ctx, id)
				if err != nil {
					return fmt.Errorf("delete %s: %w", id, err)
				}
				if st.State == cocoon.StateRunning || st.State == cocoon.StatePaused {
					return fmt.Errorf("delete %s: container is %s: %w (stop it first, or use --force)", id, ociStatus(st.State), cocoon.ErrState)
				}
			}
			// A first ^C does not leave a half-deleted sandbox; a second kills cocoon.
			if err := sb.Delete(context.WithoutCancel(ctx)); err != nil {
				return fmt.Errorf("delete %s: %w", id, err)
			}
			return nil
		},
	}
	cmd.Flags().BoolVarP(&force, "force", "f", false, "kill a running or paused container first")
	return cmd
}
