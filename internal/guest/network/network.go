// Package network configures the guest's network interfaces as the host
// found them in the pod's network namespace: each virtio NIC, found by the
// MAC the host gave it, gets the host interface's name, MTU, addresses and
// routes, so that a container sees the network CNI made for the pod.
//
// It runs inside the VM. What it receives comes from the host, but is
// still checked (names, MACs, MTUs, addresses) before it reaches netlink.
package network

import (
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/cocoon-runtime/cocoon/agent/protocol"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Limits of a request.
const (
	maxInterfaces = 32
	maxAddresses  = 64
	maxRoutes     = 256
	maxNeighbors  = 256
	minMTU        = 68
	maxMTU        = 65535
	// maxWait caps how long UpdateInterface waits for a hot-plugged NIC.
	maxWait = 30 * time.Second
	// bootWait bounds Setup's wait for each of the NICs the VM booted with.
	bootWait     = 10 * time.Second
	pollInterval = 50 * time.Millisecond
)

// Setup applies req: first every interface (rename, MTU, addresses, up),
// then every route. It reports the interfaces as configured.
func Setup(req *protocol.SetupNetworkRequest) ([]*protocol.NetInterface, error) {
	if err := Validate(req); err != nil {
		return nil, err
	}
	// The NICs the VM booted with may still be probing (one on a PCIe
	// root port comes up late): each is waited for, as a hot-plugged one.
	return apply(req.Interfaces, req.Routes, req.Neighbors, bootWait)
}

// apply configures ifcs (see setupInterface), then adds routes and
// neighs; it reports the interfaces as configured.
func apply(ifcs []*protocol.NetInterface, routes []*protocol.NetRoute, neighs []*protocol.NetNeighbor, wait time.Duration) ([]*protocol.NetInterface, error) {
	var out []*protocol.NetInterface
	for _, ifc := range ifcs {
		got, err := setupInterface(ifc, wait)
		if err != nil {
			return nil, err
		}
		out = append(out, got)
	}
	if err := addRoutes(routes); err != nil {
		return nil, err
	}
	for _, n := range neighs {
		if err := addNeighbor(n); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// Validate checks req without touching the system.
func Validate(req *protocol.SetupNetworkRequest) error {
	if len(req.Interfaces) > maxInterfaces || len(req.Routes) > maxRoutes || len(req.Neighbors) > maxNeighbors {
		return fmt.Errorf("network setup: %d interfaces, %d routes and %d neighbours: over the limit of %d, %d and %d",
			len(req.Interfaces), len(req.Routes), len(req.Neighbors), maxInterfaces, maxRoutes, maxNeighbors)
	}
	names := map[string]bool{}
	macs := map[string]bool{}
	for _, ifc := range req.Interfaces {
		if err := validInterface(ifc); err != nil {
			return fmt.Errorf("network setup: %w", err)
		}
		mac, _ := net.ParseMAC(ifc.Mac)
		if names[ifc.Name] || macs[mac.String()] {
			return fmt.Errorf("network setup: interface %s (%s) given twice", ifc.Name, mac)
		}
		names[ifc.Name], macs[mac.String()] = true, true
	}
	known := func(name string) bool { return names[name] }
	for _, r := range req.Routes {
		if err := validRoute(r, known); err != nil {
			return fmt.Errorf("network setup: %w", err)
		}
	}
	for _, n := range req.Neighbors {
		if !names[n.Device] {
			return fmt.Errorf("network setup: neighbour %s: unknown device %q", n.Ip, n.Device)
		}
		if net.ParseIP(n.Ip) == nil {
			return fmt.Errorf("network setup: neighbour on %s: bad address %q", n.Device, n.Ip)
		}
		if mac, err := net.ParseMAC(n.Mac); err != nil || len(mac) != 6 {
			return fmt.Errorf("network setup: neighbour %s on %s: bad mac %q", n.Ip, n.Device, n.Mac)
		}
	}
	return nil
}

// validInterface checks one interface of a request.
func validInterface(ifc *protocol.NetInterface) error {
	if ifc == nil {
		return errors.New("no interface")
	}
	if err := protocol.ValidInterfaceName(ifc.Name); err != nil {
		return err
	}
	mac, err := net.ParseMAC(ifc.Mac)
	if err != nil || len(mac) != 6 {
		return fmt.Errorf("interface %s: bad mac %q", ifc.Name, ifc.Mac)
	}
	if ifc.Mtu != 0 && (ifc.Mtu < minMTU || ifc.Mtu > maxMTU) {
		return fmt.Errorf("interface %s: mtu %d out of range %d-%d", ifc.Name, ifc.Mtu, minMTU, maxMTU)
	}
	if len(ifc.Addresses) > maxAddresses {
		return fmt.Errorf("interface %s: %d addresses, over the limit of %d", ifc.Name, len(ifc.Addresses), maxAddresses)
	}
	for _, a := range ifc.Addresses {
		if _, err := netlink.ParseIPNet(a); err != nil {
			return fmt.Errorf("interface %s: address %q: %w", ifc.Name, a, err)
		}
	}
	return nil
}

// validRoute checks one route of a request; known tells the devices a
// route may name.
func validRoute(r *protocol.NetRoute, known func(string) bool) error {
	if r == nil {
		return errors.New("no route")
	}
	if !known(r.Device) {
		return fmt.Errorf("route %s via %q: unknown device %q", r.Destination, r.Gateway, r.Device)
	}
	if r.Family != 4 && r.Family != 6 {
		return fmt.Errorf("route on %s: family %d (want 4 or 6)", r.Device, r.Family)
	}
	if r.Destination != "" {
		if _, err := netlink.ParseIPNet(r.Destination); err != nil {
			return fmt.Errorf("route destination %q: %w", r.Destination, err)
		}
	}
	for _, ip := range []string{r.Gateway, r.Source} {
		if ip != "" && net.ParseIP(ip) == nil {
			return fmt.Errorf("route on %s: bad address %q", r.Device, ip)
		}
	}
	if r.Scope > 255 {
		return fmt.Errorf("route on %s: scope %d", r.Device, r.Scope)
	}
	return nil
}

// setupInterface gives the NIC with ifc's MAC ifc's name, MTU and
// exactly ifc's addresses (link-local ones aside), and sets it up. It
// waits up to wait for the NIC to appear.
func setupInterface(ifc *protocol.NetInterface, wait time.Duration) (*protocol.NetInterface, error) {
	mac, _ := net.ParseMAC(ifc.Mac)
	link, err := byMAC(mac, wait)
	if err != nil {
		return nil, err
	}
	if link.Attrs().Name != ifc.Name {
		if other, err := netlink.LinkByName(ifc.Name); err == nil && other.Attrs().Index != link.Attrs().Index {
			return nil, fmt.Errorf("interface %s: the name is taken by another interface (%s)", ifc.Name, other.Attrs().HardwareAddr)
		}
		// A link must be down to be renamed.
		if err := netlink.LinkSetDown(link); err != nil {
			return nil, fmt.Errorf("interface %s: set down: %w", link.Attrs().Name, err)
		}
		if err := netlink.LinkSetName(link, ifc.Name); err != nil {
			return nil, fmt.Errorf("interface %s: rename to %s: %w", link.Attrs().Name, ifc.Name, err)
		}
	}
	if ifc.Mtu != 0 {
		if err := netlink.LinkSetMTU(link, int(ifc.Mtu)); err != nil {
			return nil, fmt.Errorf("interface %s: mtu %d: %w", ifc.Name, ifc.Mtu, err)
		}
	}
	addrs := make([]*netlink.Addr, 0, len(ifc.Addresses))
	want := map[string]bool{}
	for _, a := range ifc.Addresses {
		addr, err := netlink.ParseAddr(a)
		if err != nil {
			return nil, fmt.Errorf("interface %s: address %q: %w", ifc.Name, a, err)
		}
		want[addr.IPNet.String()] = true
		addrs = append(addrs, addr)
	}
	// Addresses not asked for go first: removing a subnet's primary
	// address takes its secondaries with it, such as one just added.
	have, err := netlink.AddrList(link, netlink.FAMILY_ALL)
	if err != nil {
		return nil, fmt.Errorf("interface %s: addresses: %w", ifc.Name, err)
	}
	for _, a := range have {
		if a.IP.IsLinkLocalUnicast() || want[a.IPNet.String()] {
			continue
		}
		if err := netlink.AddrDel(link, &a); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
			return nil, fmt.Errorf("interface %s: remove address %s: %w", ifc.Name, a.IPNet, err)
		}
	}
	for _, addr := range addrs {
		if addr.IP.To4() == nil {
			// The host already did duplicate address detection.
			addr.Flags |= unix.IFA_F_NODAD
		}
		if err := netlink.AddrReplace(link, addr); err != nil {
			return nil, fmt.Errorf("interface %s: add address %s: %w", ifc.Name, addr.IPNet, err)
		}
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return nil, fmt.Errorf("interface %s: set up: %w", ifc.Name, err)
	}
	return describe(ifc.Name)
}

// byMAC finds the link with MAC mac, waiting up to wait for it to appear.
func byMAC(mac net.HardwareAddr, wait time.Duration) (netlink.Link, error) {
	deadline := time.Now().Add(wait)
	for {
		links, err := netlink.LinkList()
		if err != nil {
			return nil, fmt.Errorf("list interfaces: %w", err)
		}
		for _, l := range links {
			if l.Attrs().HardwareAddr.String() == mac.String() {
				return l, nil
			}
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("no interface with mac %s in the guest", mac)
		}
		time.Sleep(pollInterval)
	}
}

// describe reports interface name as it is now.
func describe(name string) (*protocol.NetInterface, error) {
	link, err := netlink.LinkByName(name)
	if err != nil {
		return nil, fmt.Errorf("interface %s: %w", name, err)
	}
	addrs, err := netlink.AddrList(link, netlink.FAMILY_ALL)
	if err != nil {
		return nil, fmt.Errorf("interface %s: addresses: %w", name, err)
	}
	out := &protocol.NetInterface{Name: name, Mac: link.Attrs().HardwareAddr.String(), Mtu: uint32(link.Attrs().MTU)}
	for _, a := range addrs {
		if a.IP.IsLinkLocalUnicast() {
			continue
		}
		out.Addresses = append(out.Addresses, a.IPNet.String())
	}
	return out, nil
}

func addRoute(r *protocol.NetRoute) error {
	link, err := netlink.LinkByName(r.Device)
	if err != nil {
		return fmt.Errorf("route on %s: %w", r.Device, err)
	}
	rt := &netlink.Route{LinkIndex: link.Attrs().Index, Scope: netlink.Scope(r.Scope)}
	if r.Destination != "" {
		if rt.Dst, err = netlink.ParseIPNet(r.Destination); err != nil {
			return fmt.Errorf("route %s: %w", r.Destination, err)
		}
	} else if r.Family == 6 {
		rt.Dst = &net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}
	} else {
		rt.Dst = &net.IPNet{IP: net.IPv4zero, Mask: net.CIDRMask(0, 32)}
	}
	if r.Gateway != "" {
		rt.Gw = net.ParseIP(r.Gateway)
	}
	if r.Source != "" {
		rt.Src = net.ParseIP(r.Source)
	}
	// The kernel already added the prefix routes of the addresses.
	if err := netlink.RouteReplace(rt); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("route %s via %q dev %s: %w", rt.Dst, r.Gateway, r.Device, err)
	}
	return nil
}

// addNeighbor adds n as a permanent neighbour entry.
func addNeighbor(n *protocol.NetNeighbor) error {
	link, err := netlink.LinkByName(n.Device)
	if err != nil {
		return fmt.Errorf("neighbour on %s: %w", n.Device, err)
	}
	ip := net.ParseIP(n.Ip)
	mac, _ := net.ParseMAC(n.Mac)
	fam := netlink.FAMILY_V6
	if ip.To4() != nil {
		fam = netlink.FAMILY_V4
	}
	err = netlink.NeighSet(&netlink.Neigh{LinkIndex: link.Attrs().Index, Family: fam, State: netlink.NUD_PERMANENT, IP: ip, HardwareAddr: mac})
	if err != nil {
		return fmt.Errorf("neighbour %s lladdr %s dev %s: %w", n.Ip, n.Mac, n.Device, err)
	}
	return nil
}

// LoopbackUp brings the guest's lo up. The VM's network namespace is the
// pod's: its containers talk to each other over localhost, and the
// host's port-forward reaches them there, as CNI's loopback plugin makes
// it so in a runc pod's netns.
func LoopbackUp() error {
	lo, err := netlink.LinkByName("lo")
	if err == nil {
		err = netlink.LinkSetUp(lo)
	}
	if err != nil {
		return fmt.Errorf("loopback up: %w", err)
	}
	return nil
}
