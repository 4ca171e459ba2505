package agent

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"slices"

	"github.com/cocoon-runtime/cocoon/agent/protocol"
	"github.com/cocoon-runtime/cocoon/internal/network"
)

// SetupNetwork gives the guest the pod's interfaces and routes, and checks
// that the guest reports each interface as it was asked to configure it:
// a reply that differs (another name, MAC, MTU or address set) is a
// protocol violation, and nothing of it is believed.
func (c *Client) SetupNetwork(ctx context.Context, cfg network.Config) error {
	req := &protocol.SetupNetworkRequest{}
	for _, ifc := range cfg.Interfaces {
		req.Interfaces = append(req.Interfaces, netInterfaceMsg(ifc))
	}
	for _, r := range cfg.Routes {
		m := &protocol.NetRoute{Device: r.Device, Scope: uint32(r.Scope), Family: uint32(r.Family)}
		if r.Destination.IsValid() {
			m.Destination = r.Destination.String()
		}
		if r.Gateway.IsValid() {
			m.Gateway = r.Gateway.String()
		}
		if r.Source.IsValid() {
			m.Source = r.Source.String()
		}
		req.Routes = append(req.Routes, m)
	}
	for _, n := range cfg.Neighbors {
		req.Neighbors = append(req.Neighbors, &protocol.NetNeighbor{Ip: n.IP.String(), Mac: n.MAC.String(), Device: n.Device})
	}
	return c.call(ctx, "setup network", func(ctx context.Context) error {
		r, err := c.agent.SetupNetwork(ctx, req)
		if err != nil {
			return err
		}
		return validateNetwork(req.Interfaces, r)
	})
}

func netInterfaceMsg(ifc network.Interface) *protocol.NetInterface {
	m := &protocol.NetInterface{Name: ifc.Name, Mac: ifc.MAC.String(), Mtu: uint32(ifc.MTU)}
	for _, a := range ifc.Addresses {
		m.Addresses = append(m.Addresses, a.String())
	}
	return m
}

// validateNetwork checks the guest's reply r against the interfaces sent.
func validateNetwork(sent []*protocol.NetInterface, r *protocol.SetupNetworkResponse) error {
	if len(r.Interfaces) != len(sent) {
		return fmt.Errorf("%w: setup network: guest reports %d interfaces, %d were sent", ErrProtocol, len(r.Interfaces), len(sent))
	}
	for i, want := range sent {
		got := r.Interfaces[i]
		mac, err := net.ParseMAC(got.Mac)
		if got.Name != want.Name || err != nil || mac.String() != want.Mac || (want.Mtu != 0 && got.Mtu != want.Mtu) {
			return fmt.Errorf("%w: setup network: guest reports interface %d differently from what was sent (%s %s mtu %d)", ErrProtocol, i, want.Name, want.Mac, want.Mtu)
		}
		gotAddrs, err := canonPrefixes(got.Addresses)
		if err != nil {
			return fmt.Errorf("%w: setup network: interface %s: %w", ErrProtocol, want.Name, err)
		}
		wantAddrs, _ := canonPrefixes(want.Addresses)
		if !slices.Equal(gotAddrs, wantAddrs) {
			return fmt.Errorf("%w: setup network: interface %s: guest reports %d addresses other than the %d sent", ErrProtocol, want.Name, len(gotAddrs), len(wantAddrs))
		}
	}
	return nil
}

// canonPrefixes parses and sorts addresses in CIDR form.
func canonPrefixes(in []string) ([]string, error) {
	out := make([]string, 0, len(in))
	for _, s := range in {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return nil, fmt.Errorf("bad address (%d bytes)", len(s))
		}
		out = append(out, p.String())
	}
	slices.Sort(out)
	return out, nil
}
