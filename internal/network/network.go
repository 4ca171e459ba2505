// Package network wires a pod's network namespace into its sandbox VM on
// the host: it scans the interfaces CNI (or a user) made there and wires a
// NIC of the VM to each, by an interworking Model — a tap beside a veth,
// macvlan or ipvlan with traffic redirected both ways by tc (tcfilter), a
// macvtap on a veth (macvtap), or a tap or macvtap that is there already,
// as it is (none). Every tap is opened here, inside the namespace, and its
// file handed to the VMM, which so needs no access to the namespace.
//
// What it creates is listed in a Record, persisted with the sandbox before
// anything is made, so that Remove undoes it from another process or after
// a crash.
package network

import (
	"fmt"
	"net"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Interface is a network interface of the pod, as the host found it in
// the pod's network namespace and as the guest gets it.
type Interface struct {
	// Name is the interface's name (the veth's in the pod netns).
	Name string `json:"name"`
	// MAC is its hardware address; the guest NIC gets the same.
	MAC net.HardwareAddr `json:"mac"`
	MTU int              `json:"mtu"`
	// Addresses are its IPv4 and IPv6 addresses, link-local ones left out.
	Addresses []netip.Prefix `json:"addresses,omitempty"`
	// Stats are its counters, as the guest reports them (when listed).
	Stats *Stats `json:"stats,omitempty"`
}

// Stats are an interface's counters in the guest.
type Stats struct {
	RxBytes   uint64 `json:"rx_bytes"`
	RxPackets uint64 `json:"rx_packets"`
	RxErrors  uint64 `json:"rx_errors"`
	RxDropped uint64 `json:"rx_dropped"`
	TxBytes   uint64 `json:"tx_bytes"`
	TxPackets uint64 `json:"tx_packets"`
	TxErrors  uint64 `json:"tx_errors"`
	TxDropped uint64 `json:"tx_dropped"`
}

// Route is a route of the pod's network namespace.
type Route struct {
	// Destination is the destination prefix; the zero value is a default
	// route of family Family.
	Destination netip.Prefix `json:"destination"`
	// Gateway is the next hop; the zero value for an on-link route.
	Gateway netip.Addr `json:"gateway"`
	// Source is the preferred source address, or the zero value.
	Source netip.Addr `json:"source"`
	// Device is the name of the route's interface.
	Device string `json:"device"`
	// Scope is the route's scope (netlink's: 0 universe, 253 link).
	Scope uint8 `json:"scope"`
	// Family is 4 or 6.
	Family int `json:"family"`
}

// Neighbor is a static (permanent) ARP or NDP entry of the pod's
// network namespace.
type Neighbor struct {
	IP     netip.Addr       `json:"ip"`
	MAC    net.HardwareAddr `json:"mac"`
	Device string           `json:"device"`
}

// Config is what the guest needs to reproduce the pod's network.
type Config struct {
	Interfaces []Interface
	Routes     []Route
	Neighbors  []Neighbor
}

// Model is how a pod interface is wired to the VM's NIC.
type Model string

// Interworking models.
const (
	// ModelTCFilter puts a tap beside the interface (a veth, macvlan or
	// ipvlan) and redirects every frame both ways between the two with
	// tc: an ingress qdisc on each, a u32 match-all filter whose mirred
	// action sends the frame out of the other.
	ModelTCFilter Model = "tcfilter"
	// ModelMacvtap puts a macvtap in passthru mode on the veth: the NIC
	// is on the macvtap, and owns the veth's traffic.
	ModelMacvtap Model = "macvtap"
	// ModelNone wires nothing: the interface is itself a tap or macvtap
	// that another made (a CNI plugin, a DAN file), opened as it is.
	ModelNone Model = "none"
)

// ParseModel checks a configured model; "" is ModelTCFilter.
func ParseModel(s string) (Model, error) {
	switch m := Model(s); m {
	case "":
		return ModelTCFilter, nil
	case ModelTCFilter, ModelMacvtap, ModelNone:
		return m, nil
	}
	return "", fmt.Errorf("interworking model %q: want %q, %q or %q", s, ModelTCFilter, ModelMacvtap, ModelNone)
}

// Endpoint is one interface of the pod netns and how the VM's NIC is
// wired to it.
type Endpoint struct {
	Interface Interface
	// Link is the interface's name in the pod netns (Interface.Name).
	Link string
	// Kind is its link type: "veth", "macvlan", "ipvlan", "tuntap" (a
	// tap) or "macvtap".
	Kind string
	// Model is how it is wired: ModelNone for a tap or macvtap.
	Model Model
	// Tap is the tap (ModelTCFilter) or macvtap (ModelMacvtap) Cocoon
	// creates beside it, or the interface itself (ModelNone).
	Tap string
}

// Record lists what Cocoon creates in a pod's network namespace, so that
// Remove can undo it. It is written before anything is created.
type Record struct {
	// NetNS is the path of the pod's network namespace.
	NetNS string `json:"netns"`
	// Endpoints are the veth/tap pairs: the tap, and the ingress qdiscs
	// (with their filters) on both.
	Endpoints []RecordEndpoint `json:"endpoints,omitempty"`
}

// RecordEndpoint is one endpoint of a Record.
type RecordEndpoint struct {
	// Link is the pod interface's name in the netns (for a DAN device,
	// its name in the guest).
	Link string `json:"link"`
	// Model is how it was wired.
	Model Model `json:"model"`
	// Tap is the tap or macvtap the VM's NIC is on.
	Tap string `json:"tap"`
	// MAC is the guest NIC's.
	MAC string `json:"mac,omitempty"`
	// Hotplugged is set for an endpoint added to the running VM, whose
	// NIC's hypervisor device ID is Tap.
	Hotplugged bool `json:"hotplugged,omitempty"`
}

// Plan scans the pod network namespace at path and returns the endpoints
// to wire (one for each veth, macvlan, ipvlan, tap or macvtap; lo and
// other kinds left out), wired with model where that is a choice, the
// routes of their interfaces and their permanent neighbour entries.
func Plan(path string, model Model) ([]Endpoint, []Route, []Neighbor, error) {
	h, closeNS, err := handleAt(path)
	if err != nil {
		return nil, nil, nil, err
	}
	defer closeNS()
	links, err := h.LinkList()
	if err != nil {
		return nil, nil, nil, fmt.Errorf("network namespace %s: list interfaces: %w", path, err)
	}
	var eps []Endpoint
	var routes []Route
	var neighs []Neighbor
	for _, l := range links {
		m, ok, err := modelFor(l, model)
		if err != nil {
			return nil, nil, nil, fmt.Errorf("network namespace %s: %w", path, err)
		}
		if !ok {
			continue
		}
		ifc, rs, ns, err := scanLink(h, l)
		if err != nil {
			return nil, nil, nil, fmt.Errorf("network namespace %s: %w", path, err)
		}
		routes, neighs = append(routes, rs...), append(neighs, ns...)
		eps = append(eps, endpoint(ifc, l.Type(), m, fmt.Sprintf("cctap%d", len(eps))))
	}
	return eps, routes, neighs, nil
}

// endpoint is the endpoint of interface ifc, of link type kind, wired
// with model m, on tap (or the interface itself, for ModelNone).
func endpoint(ifc Interface, kind string, m Model, tap string) Endpoint {
	if m == ModelNone {
		tap = ifc.Name
	}
	return Endpoint{Interface: ifc, Link: ifc.Name, Kind: kind, Model: m, Tap: tap}
}

// modelFor tells how link l is wired when model is chosen, and whether
// it is an interface of the pod at all.
func modelFor(l netlink.Link, model Model) (Model, bool, error) {
	switch t := l.Type(); t {
	case "veth", "macvlan", "ipvlan":
		switch {
		case model == ModelNone:
			return "", false, fmt.Errorf("interface %s is a %s: model %s attaches taps and macvtaps only", l.Attrs().Name, t, ModelNone)
		case model == ModelMacvtap && t != "veth":
			// A macvtap in passthru mode takes a veth over; on a macvlan
			// or ipvlan, tc is what works.
			return ModelTCFilter, true, nil
		}
		return model, true, nil
	case "tuntap":
		tt, ok := l.(*netlink.Tuntap)
		return ModelNone, ok && tt.Mode == netlink.TUNTAP_MODE_TAP, nil
	case "macvtap":
		return ModelNone, true, nil
	}
	return "", false, nil
}

// PlanInterface scans interface name of the pod network namespace at
// path, to wire it with model to a running VM; a tap Cocoon makes for it
// gets the first name cctapN not in taken, which it may not be itself.
func PlanInterface(path, name string, model Model, taken []string) (Endpoint, []Route, []Neighbor, error) {
	h, closeNS, err := handleAt(path)
	if err != nil {
		return Endpoint{}, nil, nil, err
	}
	defer closeNS()
	if slices.Contains(taken, name) {
		return Endpoint{}, nil, nil, fmt.Errorf("network namespace %s: interface %s is the VM's own", path, name)
	}
	l, err := h.LinkByName(name)
	if err != nil {
		return Endpoint{}, nil, nil, fmt.Errorf("network namespace %s: interface %s: %w", path, name, err)
	}
	m, ok, err := modelFor(l, model)
	if err != nil {
		return Endpoint{}, nil, nil, fmt.Errorf("network namespace %s: %w", path, err)
	}
	if !ok {
		return Endpoint{}, nil, nil, fmt.Errorf("network namespace %s: interface %s is a %s, not a veth, macvlan, ipvlan, tap or macvtap", path, name, l.Type())
	}
	ifc, rs, ns, err := scanLink(h, l)
	if err != nil {
		return Endpoint{}, nil, nil, fmt.Errorf("network namespace %s: %w", path, err)
	}
	tap := ""
	for i := 0; tap == ""; i++ {
		if t := fmt.Sprintf("cctap%d", i); !slices.Contains(taken, t) {
			tap = t
		}
	}
	return endpoint(ifc, l.Type(), m, tap), rs, ns, nil
}

// scanLink reads interface l: the interface the guest is to get, its routes
// and its permanent neighbour entries.
func scanLink(h *netlink.Handle, l netlink.Link) (Interface, []Route, []Neighbor, error) {
	a := l.Attrs()
	var routes []Route
	var neighs []Neighbor
	ifc := Interface{Name: a.Name, MAC: slices.Clone(a.HardwareAddr), MTU: a.MTU}
	addrs, err := h.AddrList(l, netlink.FAMILY_ALL)
	if err != nil {
		return Interface{}, nil, nil, fmt.Errorf("interface %s: addresses: %w", a.Name, err)
	}
	for _, ad := range addrs {
		if ad.IP.IsLinkLocalUnicast() {
			continue
		}
		if p, ok := prefixOf(ad.IPNet); ok {
			ifc.Addresses = append(ifc.Addresses, p)
		}
	}
	rs, err := h.RouteList(l, netlink.FAMILY_ALL)
	if err != nil {
		return Interface{}, nil, nil, fmt.Errorf("interface %s: routes: %w", a.Name, err)
	}
	for _, r := range rs {
		// The kernel makes the prefix routes of addresses (and
		// IPv6's link-local and multicast ones) by itself.
		if r.Protocol == unix.RTPROT_KERNEL || r.Type != unix.RTN_UNICAST {
			continue
		}
		rt := Route{Device: a.Name, Scope: uint8(r.Scope), Family: 4}
		if r.Family == netlink.FAMILY_V6 {
			rt.Family = 6
		}
		if r.Dst != nil {
			p, ok := prefixOf(r.Dst)
			if !ok {
				continue
			}
			if p.Bits() == 0 {
				p = netip.Prefix{} // a default route
			}
			rt.Destination = p
		}
		if rt.Family == 6 && rt.Destination.IsValid() && rt.Destination.Addr().IsLinkLocalUnicast() {
			continue
		}
		if r.Gw != nil {
			rt.Gateway, _ = netip.AddrFromSlice(r.Gw)
			rt.Gateway = rt.Gateway.Unmap()
		}
		if r.Src != nil {
			rt.Source, _ = netip.AddrFromSlice(r.Src)
			rt.Source = rt.Source.Unmap()
		}
		routes = append(routes, rt)
	}
	ns, err := h.NeighList(a.Index, netlink.FAMILY_ALL)
	if err != nil {
		return Interface{}, nil, nil, fmt.Errorf("interface %s: neighbours: %w", a.Name, err)
	}
	for _, n := range ns {
		// Only entries made by hand (or by CNI) are the pod's own: the
		// guest learns the others itself.
		ip, ok := netip.AddrFromSlice(n.IP)
		if n.State&netlink.NUD_PERMANENT == 0 || !ok || len(n.HardwareAddr) != 6 {
			continue
		}
		neighs = append(neighs, Neighbor{IP: ip.Unmap(), MAC: slices.Clone(n.HardwareAddr), Device: a.Name})
	}
	return ifc, routes, neighs, nil
}

// Family is 4 for an IPv4 address, else 6.
func Family(a netip.Addr) int {
	if a.Is4() {
		return 4
	}
	return 6
}

func prefixOf(n *net.IPNet) (netip.Prefix, bool) {
	ip, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ip = ip.Unmap()
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(ip, ones), true
}
