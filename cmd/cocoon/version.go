package main

import (
	"fmt"

	"github.com/cocoon-runtime/cocoon/agent/protocol"
	"github.com/cocoon-runtime/cocoon/internal/version"
	"github.com/spf13/cobra"
)

func newVersionCommand(g *globalOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version of cocoon",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, err := fmt.Fprintf(cmd.OutOrStdout(), "cocoon %s\nagent protocol %d\n", version.Version, protocol.Version)
			return err
		},
	}
}
