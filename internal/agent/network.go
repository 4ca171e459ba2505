package agent

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"time"

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
	req.Routes = netRouteMsgs(cfg.Routes)
	req.Neighbors = netNeighborMsgs(cfg.Neighbors)
	return c.call(ctx, "setup network", func(ctx context.Context) error {
		r, err := c.agent.SetupNetwork(ctx, req)
		if err != nil {
			return err
		}
		return validateNetwork(req.Interfaces, r)
	})
}

// UpdateInterface configures ifc in the guest, on the NIC with its MAC,
// which the guest waits up to wait to appear (a NIC just hot-plugged),
// and adds its routes and neighbours. The guest's reply must match ifc.
func (c *Client) UpdateInterface(ctx context.Context, ifc network.Interface, routes []network.Route, neighs []network.Neighbor, wait time.Duration) (network.Interface, error) {
	req := &protocol.UpdateInterfaceRequest{Interface: netInterfaceMsg(ifc), WaitMs: uint32(wait / time.Millisecond),
		Routes: netRouteMsgs(routes), Neighbors: netNeighborMsgs(neighs)}
	var out network.Interface
	err := c.call(ctx, "update interface", func(ctx context.Context) error {
		r, err := c.agent.UpdateInterface(ctx, req)
		if err != nil {
			return err
		}
		if err := validateNetwork([]*protocol.NetInterface{req.Interface}, &protocol.SetupNetworkResponse{Interfaces: []*protocol.NetInterface{r}}); err != nil {
			return err
		}
		out, err = parseInterface(r)
		return err
	})
	return out, err
}

// Bounds of what the guest may report of its network.
const (
	maxGuestInterfaces = 64
	maxGuestAddresses  = 64
	maxGuestRoutes     = 1024
)

// ListInterfaces reports the guest's interfaces with their counters.
func (c *Client) ListInterfaces(ctx context.Context) ([]network.Interface, error) {
	var out []network.Interface
	err := c.call(ctx, "list interfaces", func(ctx context.Context) error {
		r, err := c.agent.ListInterfaces(ctx, &protocol.Empty{})
		if err != nil {
			return err
		}
		if len(r.Interfaces) > maxGuestInterfaces {
			return fmt.Errorf("%w: list interfaces: guest reports %d, over the limit of %d", ErrProtocol, len(r.Interfaces), maxGuestInterfaces)
		}
		seen := map[string]bool{}
		for _, m := range r.Interfaces {
			ifc, err := parseInterface(m)
			if err != nil {
				return err
			}
			if seen[ifc.Name] {
				return fmt.Errorf("%w: list interfaces: interface %s reported twice", ErrProtocol, ifc.Name)
			}
			seen[ifc.Name] = true
			out = append(out, ifc)
		}
		return nil
	})
	return out, err
}

// UpdateRoutes replaces the guest's routes with routes (those the guest
// kernel made for its addresses stay) and reports its table then.
func (c *Client) UpdateRoutes(ctx context.Context, routes []network.Route) ([]network.Route, error) {
	var out []network.Route
	err := c.call(ctx, "update routes", func(ctx context.Context) error {
		r, err := c.agent.UpdateRoutes(ctx, &protocol.NetRoutes{Routes: netRouteMsgs(routes)})
		if err != nil {
			return err
		}
		out, err = parseRoutes(r.Routes)
		return err
	})
	return out, err
}

// ListRoutes reports the guest's routes.
func (c *Client) ListRoutes(ctx context.Context) ([]network.Route, error) {
	var out []network.Route
	err := c.call(ctx, "list routes", func(ctx context.Context) error {
		r, err := c.agent.ListRoutes(ctx, &protocol.Empty{})
		if err != nil {
			return err
		}
		out, err = parseRoutes(r.Routes)
		return err
	})
	return out, err
}

// parseInterface reads an interface the guest reported; anything out of
// shape is a protocol violation.
func parseInterface(m *protocol.NetInterface) (network.Interface, error) {
	if m == nil {
		return network.Interface{}, fmt.Errorf("%w: no interface in the reply", ErrProtocol)
	}
	if err := protocol.ValidInterfaceName(m.Name); err != nil {
		return network.Interface{}, fmt.Errorf("%w: interface: %w", ErrProtocol, err)
	}
	ifc := network.Interface{Name: m.Name, MTU: int(m.Mtu)}
	if m.Mac != "" {
		mac, err := net.ParseMAC(m.Mac)
		if err != nil || len(mac) != 6 {
			return network.Interface{}, fmt.Errorf("%w: interface %s: bad mac (%d bytes)", ErrProtocol, m.Name, len(m.Mac))
		}
		ifc.MAC = mac
	}
	if m.Mtu > 65535 {
		return network.Interface{}, fmt.Errorf("%w: interface %s: mtu %d", ErrProtocol, m.Name, m.Mtu)
	}
	if len(m.Addresses) > maxGuestAddresses {
		return network.Interface{}, fmt.Errorf("%w: interface %s: %d addresses, over the limit of %d", ErrProtocol, m.Name, len(m.Addresses), maxGuestAddresses)
	}
	for _, a := range m.Addresses {
		p, err := netip.ParsePrefix(a)
		if err != nil {
			return network.Interface{}, fmt.Errorf("%w: interface %s: bad address (%d bytes)", ErrProtocol, m.Name, len(a))
		}
		ifc.Addresses = append(ifc.Addresses, p)
	}
	if st := m.Stats; st != nil {
		ifc.Stats = &network.Stats{
			RxBytes: st.RxBytes, RxPackets: st.RxPackets, RxErrors: st.RxErrors, RxDropped: st.RxDropped,
			TxBytes: st.TxBytes, TxPackets: st.TxPackets, TxErrors: st.TxErrors, TxDropped: st.TxDropped,
		}
	}
	return ifc, nil
}

// parseRoutes reads the routes the guest reported.
func parseRoutes(ms []*protocol.NetRoute) ([]network.Route, error) {
	if len(ms) > maxGuestRoutes {
		return nil, fmt.Errorf("%w: routes: guest reports %d, over the limit of %d", ErrProtocol, len(ms), maxGuestRoutes)
	}
	out := make([]network.Route, 0, len(ms))
	for i, m := range ms {
		bad := func(what string) error { return fmt.Errorf("%w: route %d: %s", ErrProtocol, i, what) }
		if m == nil {
			return nil, bad("missing")
		}
		if err := protocol.ValidInterfaceName(m.Device); err != nil {
			return nil, bad(err.Error())
		}
		if m.Family != 4 && m.Family != 6 {
			return nil, bad(fmt.Sprintf("family %d", m.Family))
		}
		if m.Scope > 255 {
			return nil, bad(fmt.Sprintf("scope %d", m.Scope))
		}
		r := network.Route{Device: m.Device, Scope: uint8(m.Scope), Family: int(m.Family)}
		var err error
		if m.Destination != "" {
			if r.Destination, err = netip.ParsePrefix(m.Destination); err != nil {
				return nil, bad(fmt.Sprintf("bad destination (%d bytes)", len(m.Destination)))
			}
		}
		if m.Gateway != "" {
			if r.Gateway, err = netip.ParseAddr(m.Gateway); err != nil {
				return nil, bad(fmt.Sprintf("bad gateway (%d bytes)", len(m.Gateway)))
			}
		}
		if m.Source != "" {
			if r.Source, err = netip.ParseAddr(m.Source); err != nil {
				return nil, bad(fmt.Sprintf("bad source (%d bytes)", len(m.Source)))
			}
		}
		out = append(out, r)
	}
	return out, nil
}

func netRouteMsgs(routes []network.Route) []*protocol.NetRoute {
	out := make([]*protocol.NetRoute, 0, len(routes))
	for _, r := range routes {
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
		out = append(out, m)
	}
	return out
}

func netNeighborMsgs(neighs []network.Neighbor) []*protocol.NetNeighbor {
	out := make([]*protocol.NetNeighbor, 0, len(neighs))
	for _, n := range neighs {
		out = append(out, &protocol.NetNeighbor{Ip: n.IP.String(), Mac: n.MAC.String(), Device: n.Device})
	}
	return out
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
