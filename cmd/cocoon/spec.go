package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/cocoon-runtime/cocoon/internal/specutil"
	"github.com/spf13/cobra"
)

func newSpecCommand(g *globalOptions) *cobra.Command {
	var (
		bundle      string
		withBusybox bool
		busybox     string
	)
	cmd := &cobra.Command{
		Use:   "spec [flags] [-- COMMAND [ARG...]]",
		Short: "Write a default OCI config.json in a bundle",
		Long: `Write a default OCI runtime spec, config.json, in the bundle directory, as
'runc spec' does: the process runs COMMAND (default sh) in the root
filesystem found in the bundle's rootfs directory, with the usual
namespaces, masked paths and capabilities. An existing config.json is never
overwritten.

With --busybox, the bundle's rootfs is also built from a static busybox
binary: /bin/busybox, a link for each of its applets, and the few files
programs expect in /etc. That is a complete bundle, handy for demos and
tests.`,
		Example: `  cocoon spec
  cocoon spec --bundle /tmp/demo --busybox
  cocoon spec --bundle /tmp/job --busybox -- sh -c 'echo hello'`,
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg := filepath.Join(bundle, "config.json")
			if err := os.MkdirAll(bundle, 0o755); err != nil {
				return fmt.Errorf("write spec: create bundle %s: %w", bundle, err)
			}
			// Claim the file, so that an existing one is never overwritten.
			f, err := os.OpenFile(cfg, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
			if errors.Is(err, fs.ErrExist) {
				return fmt.Errorf("write spec %s: %w (remove it first to replace it)", cfg, err)
			}
			if err != nil {
				return fmt.Errorf("write spec %s: %w", cfg, err)
			}
			f.Close()
			if err := writeSpec(bundle, args, withBusybox, busybox); err != nil {
				os.Remove(cfg)
				return err
			}
			return nil
		},
	}
	fl := cmd.Flags()
	fl.SetInterspersed(false) // COMMAND's flags are its own
	fl.StringVarP(&bundle, "bundle", "b", ".", "bundle directory to write config.json to")
	fl.BoolVar(&withBusybox, "busybox", false, "also build the bundle's rootfs from a static busybox")
	fl.StringVar(&busybox, "busybox-path", "/bin/busybox", "static busybox binary for --busybox")
	return cmd
}

func writeSpec(bundle string, args []string, withBusybox bool, busybox string) error {
	spec := specutil.Default(args...)
	if withBusybox {
		rootfs := filepath.Join(bundle, spec.Root.Path)
		if err := specutil.BusyboxRootfs(rootfs, busybox); err != nil {
			return fmt.Errorf("write spec: build rootfs %s: %w", rootfs, err)
		}
	}
	if err := specutil.WriteBundle(bundle, spec); err != nil {
		return fmt.Errorf("write spec %s: %w", filepath.Join(bundle, "config.json"), err)
	}
	return nil
}
