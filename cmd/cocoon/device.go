package main

import (
	"fmt"
	"io"
	"text/tabwriter"

	"github.com/cocoon-runtime/cocoon"
	"github.com/spf13/cobra"
)

func newDeviceCommand(g *globalOptions) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "device",
		Short: "Hot-plug block devices into a running sandbox",
		Long: `Hot-plug a host block device or image file into a running sandbox's VM
as a virtio-blk disk, which needs a free hotplug slot (--hotplug-slots).
The guest sees it with its NAME as serial (/sys/block/<dev>/serial). The
devices are recorded with the sandbox: any cocoon process can list and
remove them.`,
	}
	cmd.AddCommand(newDeviceAddCommand(g), newDeviceRmCommand(g), newDeviceLsCommand(g))
	return cmd
}

func newDeviceAddCommand(g *globalOptions) *cobra.Command {
	var readOnly bool
	cmd := &cobra.Command{
		Use:   "add [--read-only] [--json] ID NAME PATH",
		Short: "Attach block device or image PATH to the sandbox's VM as NAME",
		Args:  cobra.ExactArgs(3),
		RunE: func(cmd *cobra.Command, args []string) error {
			return withContainer(cmd, g, args[0], func(sb *cocoon.Sandbox) error {
				d, err := sb.AddDevice(cmd.Context(), cocoon.DeviceConfig{ID: args[1], Path: args[2], ReadOnly: readOnly})
				if err != nil {
					return err
				}
				return printDevices(cmd.OutOrStdout(), g.json, []cocoon.Device{d})
			})
		},
	}
	cmd.Flags().BoolVar(&readOnly, "read-only", false, "attach the device read-only")
	return cmd
}

func newDeviceRmCommand(g *globalOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "rm ID NAME",
		Short: "Detach device NAME, added with `device add`, from the sandbox's VM",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			return withContainer(cmd, g, args[0], func(sb *cocoon.Sandbox) error {
				return sb.RemoveDevice(cmd.Context(), args[1])
			})
		},
	}
}

func newDeviceLsCommand(g *globalOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "ls [--json] ID",
		Short: "List the devices added with `device add`",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return withContainer(cmd, g, args[0], func(sb *cocoon.Sandbox) error {
				ds, err := sb.ListDevices(cmd.Context())
				if err != nil {
					return err
				}
				return printDevices(cmd.OutOrStdout(), g.json, ds)
			})
		},
	}
}

func printDevices(w io.Writer, asJSON bool, ds []cocoon.Device) error {
	if asJSON {
		if ds == nil {
			ds = []cocoon.Device{}
		}
		return writeJSON(w, "devices", ds)
	}
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tPATH\tACCESS")
	for _, d := range ds {
		access := "rw"
		if d.ReadOnly {
			access = "ro"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\n", d.ID, d.Path, access)
	}
	if err := tw.Flush(); err != nil {
		return fmt.Errorf("write devices: %w", err)
	}
	return nil
}
