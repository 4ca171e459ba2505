package main

import (
	"fmt"
	"net"
	"strconv"
	"strings"

	"github.com/cocoon-runtime/cocoon"
	"github.com/spf13/cobra"
	"golang.org/x/sync/errgroup"
)

func newPortForwardCommand(g *globalOptions) *cobra.Command {
	var address string
	cmd := &cobra.Command{
		Use:   "port-forward [--address ADDR] ID [LOCAL:]PORT...",
		Short: "Forward local TCP ports to ports on a sandbox's localhost",
		Long: `Forward local TCP ports to ports on the localhost of a container's
sandbox VM, as kubectl port-forward does for a pod: each connection to
ADDR:LOCAL (default 127.0.0.1, LOCAL the same as PORT; LOCAL 0 picks a
free port) reaches PORT on the guest's loopback, where the pod's
processes listen, over the agent channel: the sandbox needs no network.
It runs until interrupted.`,
		Args: cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			id := args[0]
			type mapping struct{ local, remote int }
			var maps []mapping
			for _, a := range args[1:] {
				local, remote, ok := strings.Cut(a, ":")
				if !ok {
					local, remote = a, a
				}
				l, err1 := strconv.Atoi(local)
				r, err2 := strconv.Atoi(remote)
				if err1 != nil || err2 != nil || l < 0 || l > 65535 || r < 1 || r > 65535 {
					return fmt.Errorf("port mapping %q: want [LOCAL:]PORT, ports 1 to 65535 (LOCAL may be 0)", a)
				}
				maps = append(maps, mapping{l, r})
			}
			ip := net.ParseIP(address)
			if ip == nil {
				return fmt.Errorf("port-forward: --address %q is not an IP address", address)
			}
			return withContainer(cmd, g, id, func(sb *cocoon.Sandbox) error {
				ls := make([]*net.TCPListener, len(maps))
				for i, m := range maps {
					l, err := net.ListenTCP("tcp", &net.TCPAddr{IP: ip, Port: m.local})
					if err != nil {
						for _, l := range ls[:i] {
							l.Close()
						}
						return fmt.Errorf("port-forward: listen: %w", err)
					}
					ls[i] = l
				}
				eg, ctx := errgroup.WithContext(cmd.Context())
				for i, m := range maps {
					fmt.Fprintf(cmd.OutOrStdout(), "Forwarding from %s -> %d\n", ls[i].Addr(), m.remote)
					eg.Go(func() error { return sb.ServePort(ctx, ls[i], m.remote) })
				}
				return eg.Wait()
			})
		},
	}
	cmd.Flags().StringVar(&address, "address", "127.0.0.1", "local address to listen on")
	return cmd
}
