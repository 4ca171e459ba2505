// Package network wires a pod's network namespace into its sandbox VM on
// the host: it scans the interfaces CNI made there, and for each veth
// creates a tap beside it with traffic redirected both ways by tc (the
// tcfilter model: an ingress qdisc on each, and a u32 match-all filter
// whose mirred action sends every frame out of the other). The tap is
// opened here, inside the namespace, and its file handed to the VMM, which
// so needs no access to the namespace.
//
// What it creates is listed in a Record, persisted with the sandbox before
// anything is made, so that Remove undoes it from another process or after
// a crash.
package network

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"runtime"
	"slices"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
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

// Endpoint is one veth of the pod netns and the tap wired to it.
type Endpoint struct {
	Interface Interface
	// Veth is the name of the veth in the pod netns (Interface.Name).
	Veth string
	// Tap is the name of the tap Cocoon creates beside it.
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

// RecordEndpoint is one veth/tap pair of a Record.
type RecordEndpoint struct {
	Veth string `json:"veth"`
	Tap  string `json:"tap"`
	// MAC is the guest NIC's.
	MAC string `json:"mac,omitempty"`
	// Hotplugged is set for an endpoint added to the running VM, whose
	// NIC's hypervisor device ID is Tap.
	Hotplugged bool `json:"hotplugged,omitempty"`
}

// Plan scans the pod network namespace at path and returns the endpoints
// to wire (one for each veth, lo and other kinds of link left out), the
// routes of their interfaces and their permanent neighbour entries.
func Plan(path string) ([]Endpoint, []Route, []Neighbor, error) {
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
		if l.Type() != "veth" {
			continue
		}
		ifc, rs, ns, err := scanLink(h, l)
		if err != nil {
			return nil, nil, nil, fmt.Errorf("network namespace %s: %w", path, err)
		}
		routes, neighs = append(routes, rs...), append(neighs, ns...)
		eps = append(eps, Endpoint{Interface: ifc, Veth: ifc.Name, Tap: fmt.Sprintf("cctap%d", len(eps))})
	}
	return eps, routes, neighs, nil
}

// PlanInterface scans veth name of the pod network namespace at path, to
// wire it to a running VM; its tap gets the first name cctapN not in
// taken.
func PlanInterface(path, name string, taken []string) (Endpoint, []Route, []Neighbor, error) {
	h, closeNS, err := handleAt(path)
	if err != nil {
		return Endpoint{}, nil, nil, err
	}
	defer closeNS()
	l, err := h.LinkByName(name)
	if err != nil {
		return Endpoint{}, nil, nil, fmt.Errorf("network namespace %s: interface %s: %w", path, name, err)
	}
	if l.Type() != "veth" {
		return Endpoint{}, nil, nil, fmt.Errorf("network namespace %s: interface %s is a %s, not a veth", path, name, l.Type())
	}
	ifc, rs, ns, err := scanLink(h, l)
	if err != nil {
		return Endpoint{}, nil, nil, fmt.Errorf("network namespace %s: %w", path, err)
	}
	e := Endpoint{Interface: ifc, Veth: name}
	for i := 0; e.Tap == ""; i++ {
		if t := fmt.Sprintf("cctap%d", i); !slices.Contains(taken, t) {
			e.Tap = t
		}
	}
	return e, rs, ns, nil
}

// scanLink reads veth l: the interface the guest is to get, its routes
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

func prefixOf(n *net.IPNet) (netip.Prefix, bool) {
	ip, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ip = ip.Unmap()
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(ip, ones), true
}

// RecordOf is the record of wiring eps in the netns at path.
func RecordOf(path string, eps []Endpoint) Record {
	r := Record{NetNS: path}
	for _, e := range eps {
		r.Endpoints = append(r.Endpoints, RecordEndpoint{Veth: e.Veth, Tap: e.Tap, MAC: e.Interface.MAC.String()})
	}
	return r
}

// Attach wires each endpoint in the netns at path: it creates its tap
// (non-persistent, so that the kernel removes it when the last file on it
// closes — the VMM's), sets the tap's MTU to the veth's, adds the ingress
// qdiscs and the redirect filters, and returns the taps' files in the
// order of eps. On error it removes what it made and closes every file.
func Attach(path string, eps []Endpoint) (_ []*os.File, err error) {
	h, closeNS, err := handleAt(path)
	if err != nil {
		return nil, err
	}
	defer closeNS()
	var files []*os.File
	defer func() {
		if err != nil {
			for _, f := range files {
				f.Close()
			}
			Remove(RecordOf(path, eps))
		}
	}()
	for _, e := range eps {
		f, err := openTap(path, e.Tap)
		if err != nil {
			return nil, err
		}
		files = append(files, f)
		if err := wire(h, e); err != nil {
			return nil, fmt.Errorf("network namespace %s: %w", path, err)
		}
	}
	return files, nil
}

func wire(h *netlink.Handle, e Endpoint) error {
	veth, err := h.LinkByName(e.Veth)
	if err != nil {
		return fmt.Errorf("interface %s: %w", e.Veth, err)
	}
	tap, err := h.LinkByName(e.Tap)
	if err != nil {
		return fmt.Errorf("tap %s: %w", e.Tap, err)
	}
	if err := h.LinkSetMTU(tap, veth.Attrs().MTU); err != nil {
		return fmt.Errorf("tap %s: mtu %d: %w", e.Tap, veth.Attrs().MTU, err)
	}
	if err := h.LinkSetUp(tap); err != nil {
		return fmt.Errorf("tap %s: set up: %w", e.Tap, err)
	}
	for _, pair := range [][2]netlink.Link{{veth, tap}, {tap, veth}} {
		if err := redirect(h, pair[0], pair[1]); err != nil {
			return err
		}
	}
	return nil
}

// ingressHandle is the handle of an ingress qdisc, netlink.MakeHandle(0xffff, 0).
const ingressHandle uint32 = 0xffff << 16

// redirect adds an ingress qdisc on from and a filter redirecting every
// frame it receives out of to.
func redirect(h *netlink.Handle, from, to netlink.Link) error {
	q := &netlink.Ingress{QdiscAttrs: netlink.QdiscAttrs{LinkIndex: from.Attrs().Index, Handle: ingressHandle, Parent: netlink.HANDLE_INGRESS}}
	if err := h.QdiscAdd(q); err != nil {
		return fmt.Errorf("interface %s: add ingress qdisc: %w", from.Attrs().Name, err)
	}
	// u32 with no keys matches every frame (this host's kernel has neither
	// matchall nor flower).
	f := &netlink.U32{
		FilterAttrs: netlink.FilterAttrs{LinkIndex: from.Attrs().Index, Parent: ingressHandle, Priority: 1, Protocol: unix.ETH_P_ALL},
		Actions: []netlink.Action{&netlink.MirredAction{
			ActionAttrs:  netlink.ActionAttrs{Action: netlink.TC_ACT_STOLEN},
			MirredAction: netlink.TCA_EGRESS_REDIR,
			Ifindex:      to.Attrs().Index,
		}},
	}
	if err := h.FilterAdd(f); err != nil {
		return fmt.Errorf("interface %s: add redirect filter to %s: %w", from.Attrs().Name, to.Attrs().Name, err)
	}
	return nil
}

// Remove undoes what Attach made for rec: the taps (gone already once
// their files closed, unless a file is still open) and the ingress qdiscs
// on the veths, which take their filters with them. A netns that no
// longer exists has nothing left in it.
func Remove(rec Record) error {
	if rec.NetNS == "" || len(rec.Endpoints) == 0 {
		return nil
	}
	h, closeNS, err := handleAt(rec.NetNS)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		return err
	}
	defer closeNS()
	var errs []error
	for _, e := range rec.Endpoints {
		if l, err := h.LinkByName(e.Tap); err == nil {
			if err := h.LinkDel(l); err != nil {
				errs = append(errs, fmt.Errorf("remove tap %s: %w", e.Tap, err))
			}
		}
		if l, err := h.LinkByName(e.Veth); err == nil {
			q := &netlink.Ingress{QdiscAttrs: netlink.QdiscAttrs{LinkIndex: l.Attrs().Index, Handle: ingressHandle, Parent: netlink.HANDLE_INGRESS}}
			if err := h.QdiscDel(q); err != nil && !isGone(err) {
				errs = append(errs, fmt.Errorf("remove ingress qdisc of %s: %w", e.Veth, err))
			}
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("network namespace %s: %w", rec.NetNS, errors.Join(errs...))
	}
	return nil
}

func isGone(err error) bool {
	return errors.Is(err, unix.ENOENT) || errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENODEV)
}

// handleAt opens the netns at path and a netlink handle in it.
func handleAt(path string) (*netlink.Handle, func(), error) {
	ns, err := netns.GetFromPath(path)
	if err != nil {
		return nil, nil, fmt.Errorf("open network namespace %s: %w", path, err)
	}
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		ns.Close()
		return nil, nil, fmt.Errorf("network namespace %s: netlink: %w", path, err)
	}
	return h, func() { h.Close(); ns.Close() }, nil
}

// openTap creates tap name in the netns at path and returns its file. The
// tun device binds the netns of the thread that opens it, so the open
// happens on a locked thread switched into the netns, and switched back.
func openTap(path, name string) (*os.File, error) {
	target, err := netns.GetFromPath(path)
	if err != nil {
		return nil, fmt.Errorf("open network namespace %s: %w", path, err)
	}
	defer target.Close()
	type result struct {
		f   *os.File
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			ch <- result{err: fmt.Errorf("current network namespace: %w", err)}
			return
		}
		defer orig.Close()
		if err := netns.Set(target); err != nil {
			runtime.UnlockOSThread()
			ch <- result{err: fmt.Errorf("enter network namespace %s: %w", path, err)}
			return
		}
		f, err := createTap(name)
		if err := netns.Set(orig); err != nil {
			// The thread stays locked, so it ends with this goroutine
			// rather than serve others in the pod's netns.
			if f != nil {
				f.Close()
			}
			ch <- result{err: fmt.Errorf("leave network namespace %s: %w", path, err)}
			return
		}
		runtime.UnlockOSThread()
		ch <- result{f, err}
	}()
	r := <-ch
	if r.err != nil {
		return nil, fmt.Errorf("network namespace %s: %w", path, r.err)
	}
	return r.f, nil
}

// createTap creates tap name (non-persistent) in the current thread's
// netns and opens it; a tap of that name that exists already is an error,
// since it is another's. IFF_VNET_HDR lets the VMM pass
// checksum and segmentation offloads through.
func createTap(name string) (*os.File, error) {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open /dev/net/tun: %w", err)
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("tap %q: %w", name, err)
	}
	ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("open tap %s: %w", name, err)
	}
	return os.NewFile(uintptr(fd), "tap:"+name), nil
}
