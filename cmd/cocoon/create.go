package main

import (
	"fmt"

	"github.com/cocoon-runtime/cocoon"
	"github.com/spf13/cobra"
)

func newCreateCommand(g *globalOptions) *cobra.Command {
	var (
		f      vmFlags
		sf     sizeFlags
		nf     netFlags
		df     deviceFlags
		bundle string
	)
	cmd := &cobra.Command{
		Use:   "create [flags] ID",
		Short: "Create a container in a new sandbox VM, without starting it",
		Long: `Create a container in a new sandbox VM, without starting it.

The sandbox VM, named by the container's ID, is booted and the container is
created in it from the OCI bundle; its process starts with 'cocoon start'.
Its output is not collected: use 'cocoon run' to see it.`,
		Example: `  cocoon create --bundle /tmp/demo demo && cocoon start demo`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id := args[0]
			abs, spec, err := loadBundle(bundle)
			if err != nil {
				return fmt.Errorf("create %s: %w", id, err)
			}
			if spec.Process.Terminal {
				return fmt.Errorf("create %s: config.json asks for a terminal, which only 'cocoon run --tty' can serve", id)
			}
			rt, err := g.runtime()
			if err != nil {
				return err
			}
			vm := sf.bound(f.sandboxVM())
			cfg := cocoon.SandboxConfig{
				ID: id, VM: vm, BootTimeout: f.bootTimeout,
				Containers: []cocoon.ContainerConfig{{ID: id, Bundle: abs, Spec: spec}},
			}
			if err := nf.apply(&cfg, spec); err != nil {
				return fmt.Errorf("create %s: %w", id, err)
			}
			if err := df.apply(spec); err != nil {
				return fmt.Errorf("create %s: %w", id, err)
			}
			sb, err := rt.CreateSandbox(cmd.Context(), cfg)
			if err != nil {
				return fmt.Errorf("create %s: %w", id, err)
			}
			return sb.Release()
		},
	}
	cmd.Flags().StringVarP(&bundle, "bundle", "b", ".", "OCI bundle directory (holds config.json)")
	f.register(cmd)
	sf.register(cmd)
	nf.register(cmd)
	df.register(cmd)
	return cmd
}
