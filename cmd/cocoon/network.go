package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/cocoon-runtime/cocoon"
	"github.com/spf13/cobra"
)

func newNetworkCommand(g *globalOptions) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "network",
		Short: "Change a running sandbox's network interfaces and routes",
		Long: `Change the network of a running sandbox. An interface added is a veth of
the sandbox's network namespace (one that CNI, or you, made there after the
sandbox started): Cocoon hot-plugs a NIC for it into the VM, which needs
hotplug slots (hypervisor.hotplug_slots), and the guest gets its name, MAC,
MTU, addresses and routes.`,
	}
	cmd.AddCommand(newNetworkAddCommand(g), newNetworkRmCommand(g), newNetworkLsCommand(g),
		newNetworkUpdateCommand(g), newNetworkRoutesCommand(g))
	return cmd
}

func newNetworkAddCommand(g *globalOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "add [--json] ID IFNAME",
		Short: "Attach interface IFNAME of the sandbox's network namespace to its VM",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			return withContainer(cmd, g, args[0], func(sb *cocoon.Sandbox) error {
				ifc, err := sb.AddInterface(cmd.Context(), args[1])
				if err != nil {
					return err
				}
				return printInterfaces(cmd.OutOrStdout(), g.json, []cocoon.NetInterface{ifc})
			})
		},
	}
}

func newNetworkRmCommand(g *globalOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "rm ID IFNAME",
		Short: "Detach interface IFNAME, added with `network add`, from the sandbox's VM",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			return withContainer(cmd, g, args[0], func(sb *cocoon.Sandbox) error {
				return sb.RemoveInterface(cmd.Context(), args[1])
			})
		},
	}
}

func newNetworkLsCommand(g *globalOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "ls [--json] ID",
		Short: "List the guest's interfaces with their counters",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return withContainer(cmd, g, args[0], func(sb *cocoon.Sandbox) error {
				ifcs, err := sb.ListInterfaces(cmd.Context())
				if err != nil {
					return err
				}
				return printInterfaces(cmd.OutOrStdout(), g.json, ifcs)
			})
		},
	}
}

func newNetworkUpdateCommand(g *globalOptions) *cobra.Command {
	var addrs []string
	var mtu int
	cmd := &cobra.Command{
		Use:   "update [--json] ID IFNAME [--address CIDR]... [--mtu N]",
		Short: "Set the addresses (all of them) and MTU of a guest interface",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			ifc := cocoon.NetInterface{Name: args[1], MTU: mtu}
			for _, a := range addrs {
				p, err := netip.ParsePrefix(a)
				if err != nil {
					return fmt.Errorf("--address %q: %w", a, err)
				}
				ifc.Addresses = append(ifc.Addresses, p)
			}
			return withContainer(cmd, g, args[0], func(sb *cocoon.Sandbox) error {
				out, err := sb.UpdateInterface(cmd.Context(), ifc)
				if err != nil {
					return err
				}
				return printInterfaces(cmd.OutOrStdout(), g.json, []cocoon.NetInterface{out})
			})
		},
	}
	cmd.Flags().StringArrayVar(&addrs, "address", nil, "an address in CIDR form; the interface gets exactly those given (none: no address)")
	cmd.Flags().IntVar(&mtu, "mtu", 0, "MTU (0: leave it)")
	return cmd
}

func newNetworkRoutesCommand(g *globalOptions) *cobra.Command {
	var set string
	cmd := &cobra.Command{
		Use:   "routes [--json] ID [--set FILE]",
		Short: "List the guest's routes, or replace them with those of a JSON file",
		Long: `List the guest's routes. With --set FILE ("-" for standard input), replace
them with the routes FILE lists, a JSON array in the form --json prints:
[{"destination": "10.9.0.0/16", "gateway": "10.0.0.1", "device": "eth0"}]
(no destination: a default route; no gateway: on-link). The prefix routes
of the guest's addresses stay.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var routes []cocoon.NetRoute
			if set != "" {
				var err error
				if routes, err = readRoutes(cmd.InOrStdin(), set); err != nil {
					return err
				}
			}
			return withContainer(cmd, g, args[0], func(sb *cocoon.Sandbox) error {
				var out []cocoon.NetRoute
				var err error
				if set != "" {
					out, err = sb.UpdateRoutes(cmd.Context(), routes)
				} else {
					out, err = sb.ListRoutes(cmd.Context())
				}
				if err != nil {
					return err
				}
				return printRoutes(cmd.OutOrStdout(), g.json, out)
			})
		},
	}
	cmd.Flags().StringVar(&set, "set", "", `replace the routes with those of this JSON file ("-": standard input)`)
	return cmd
}

// maxRoutesFile bounds the routes file read.
const maxRoutesFile = 1 << 20

func readRoutes(stdin io.Reader, path string) ([]cocoon.NetRoute, error) {
	r := stdin
	if path != "-" {
		f, err := os.Open(path)
		if err != nil {
			return nil, fmt.Errorf("routes: %w", err)
		}
		defer f.Close()
		r = f
	}
	data, err := io.ReadAll(io.LimitReader(r, maxRoutesFile+1))
	if err != nil {
		return nil, fmt.Errorf("routes %s: %w", path, err)
	}
	if len(data) > maxRoutesFile {
		return nil, fmt.Errorf("routes %s: over %d bytes", path, maxRoutesFile)
	}
	var routes []cocoon.NetRoute
	if err := json.Unmarshal(data, &routes); err != nil {
		return nil, fmt.Errorf("routes %s: %w", path, err)
	}
	return routes, nil
}

// interfaceJSON is how the CLI prints an interface: its MAC as text.
type interfaceJSON struct {
	Name      string           `json:"name"`
	MAC       string           `json:"mac"`
	MTU       int              `json:"mtu"`
	Addresses []netip.Prefix   `json:"addresses"`
	Stats     *cocoon.NetStats `json:"stats,omitempty"`
}

func printInterfaces(w io.Writer, asJSON bool, ifcs []cocoon.NetInterface) error {
	if asJSON {
		out := make([]interfaceJSON, 0, len(ifcs))
		for _, i := range ifcs {
			out = append(out, interfaceJSON{Name: i.Name, MAC: i.MAC.String(), MTU: i.MTU, Addresses: i.Addresses, Stats: i.Stats})
		}
		return writeJSON(w, "interfaces", out)
	}
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tMAC\tMTU\tADDRESSES\tRX BYTES/PACKETS/ERRORS/DROPS\tTX BYTES/PACKETS/ERRORS/DROPS")
	for _, i := range ifcs {
		addrs := make([]string, 0, len(i.Addresses))
		for _, a := range i.Addresses {
			addrs = append(addrs, a.String())
		}
		rx, tx := "-", "-"
		if s := i.Stats; s != nil {
			rx = fmt.Sprintf("%d/%d/%d/%d", s.RxBytes, s.RxPackets, s.RxErrors, s.RxDropped)
			tx = fmt.Sprintf("%d/%d/%d/%d", s.TxBytes, s.TxPackets, s.TxErrors, s.TxDropped)
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\n", i.Name, i.MAC, i.MTU, strings.Join(addrs, ","), rx, tx)
	}
	if err := tw.Flush(); err != nil {
		return fmt.Errorf("write interfaces: %w", err)
	}
	return nil
}

func printRoutes(w io.Writer, asJSON bool, routes []cocoon.NetRoute) error {
	if asJSON {
		if routes == nil {
			routes = []cocoon.NetRoute{}
		}
		return writeJSON(w, "routes", routes)
	}
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "DESTINATION\tGATEWAY\tDEVICE\tSOURCE\tSCOPE")
	for _, r := range routes {
		dst, gw, src := "default", "-", "-"
		if r.Destination.IsValid() {
			dst = r.Destination.String()
		}
		if r.Family == 6 && !r.Destination.IsValid() {
			dst = "default (IPv6)"
		}
		if r.Gateway.IsValid() {
			gw = r.Gateway.String()
		}
		if r.Source.IsValid() {
			src = r.Source.String()
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\n", dst, gw, r.Device, src, r.Scope)
	}
	if err := tw.Flush(); err != nil {
		return fmt.Errorf("write routes: %w", err)
	}
	return nil
}
