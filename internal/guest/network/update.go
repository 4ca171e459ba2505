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

// Update configures the one interface of req (see setupInterface), waiting
// for a hot-plugged NIC up to req.WaitMs, capped at maxWait.
func Update(req *protocol.UpdateInterfaceRequest) (*protocol.NetInterface, error) {
	if err := ValidateUpdate(req); err != nil {
		return nil, err
	}
	wait := min(time.Duration(req.WaitMs)*time.Millisecond, maxWait)
	out, err := apply([]*protocol.NetInterface{req.Interface}, req.Routes, req.Neighbors, wait)
	if err != nil {
		return nil, err
	}
	return out[0], nil
}

// ValidateUpdate checks req without touching the system.
func ValidateUpdate(req *protocol.UpdateInterfaceRequest) error {
	return Validate(&protocol.SetupNetworkRequest{
		Interfaces: []*protocol.NetInterface{req.Interface}, Routes: req.Routes, Neighbors: req.Neighbors,
	})
}

// List reports every interface but the loopback, with its counters.
func List() ([]*protocol.NetInterface, error) {
	links, err := netlink.LinkList()
	if err != nil {
		return nil, fmt.Errorf("list interfaces: %w", err)
	}
	var out []*protocol.NetInterface
	for _, l := range links {
		if l.Attrs().Flags&net.FlagLoopback != 0 {
			continue
		}
		ifc, err := describe(l.Attrs().Name)
		if err != nil {
			return nil, err
		}
		if st := l.Attrs().Statistics; st != nil {
			ifc.Stats = &protocol.NetStats{
				RxBytes: st.RxBytes, RxPackets: st.RxPackets, RxErrors: st.RxErrors, RxDropped: st.RxDropped,
				TxBytes: st.TxBytes, TxPackets: st.TxPackets, TxErrors: st.TxErrors, TxDropped: st.TxDropped,
			}
		}
		out = append(out, ifc)
	}
	return out, nil
}

// Routes reports the routes of the main table, but those of the loopback
// and IPv6 link-local and multicast ones.
func Routes() ([]*protocol.NetRoute, error) {
	rs, names, err := mainRoutes()
	if err != nil {
		return nil, err
	}
	out := make([]*protocol.NetRoute, 0, len(rs))
	for _, r := range rs {
		m := &protocol.NetRoute{Device: names[r.LinkIndex], Scope: uint32(r.Scope), Family: 4}
		if r.Family == netlink.FAMILY_V6 {
			m.Family = 6
		}
		if r.Dst != nil {
			if ones, _ := r.Dst.Mask.Size(); ones > 0 || !r.Dst.IP.IsUnspecified() {
				m.Destination = r.Dst.String()
			}
		}
		if r.Gw != nil {
			m.Gateway = r.Gw.String()
		}
		if r.Src != nil {
			m.Source = r.Src.String()
		}
		out = append(out, m)
	}
	return out, nil
}

// ReplaceRoutes removes every route of the main table that Routes lists
// and the kernel did not make for an address, adds routes (on-link ones
// first, so that each gateway is reachable) and reports the table then.
// Nothing is removed when a route is invalid.
func ReplaceRoutes(routes []*protocol.NetRoute) ([]*protocol.NetRoute, error) {
	if len(routes) > maxRoutes {
		return nil, fmt.Errorf("update routes: %d routes: over the limit of %d", len(routes), maxRoutes)
	}
	have, names, err := mainRoutes()
	if err != nil {
		return nil, err
	}
	devices := map[string]bool{}
	for _, n := range names {
		devices[n] = true
	}
	known := func(name string) bool { return devices[name] }
	for _, r := range routes {
		if err := validRoute(r, known); err != nil {
			return nil, fmt.Errorf("update routes: %w", err)
		}
	}
	var errs []error
	for _, r := range have {
		if r.Protocol == unix.RTPROT_KERNEL {
			continue
		}
		if err := netlink.RouteDel(&r); err != nil && !errors.Is(err, unix.ESRCH) {
			errs = append(errs, fmt.Errorf("remove route %s dev %s: %w", r.Dst, names[r.LinkIndex], err))
		}
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("update routes: %w", errors.Join(errs...))
	}
	if err := addRoutes(routes); err != nil {
		return nil, fmt.Errorf("update routes: %w", err)
	}
	return Routes()
}

// addRoutes adds routes, on-link ones first.
func addRoutes(routes []*protocol.NetRoute) error {
	for _, onLink := range []bool{true, false} {
		for _, r := range routes {
			if (r.Gateway == "") != onLink {
				continue
			}
			if err := addRoute(r); err != nil {
				return err
			}
		}
	}
	return nil
}

// mainRoutes lists the main table's routes that Routes reports, and the
// names of the interfaces but the loopback, by index.
func mainRoutes() ([]netlink.Route, map[int]string, error) {
	links, err := netlink.LinkList()
	if err != nil {
		return nil, nil, fmt.Errorf("list interfaces: %w", err)
	}
	names := map[int]string{}
	for _, l := range links {
		if l.Attrs().Flags&net.FlagLoopback == 0 {
			names[l.Attrs().Index] = l.Attrs().Name
		}
	}
	rs, err := netlink.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return nil, nil, fmt.Errorf("list routes: %w", err)
	}
	out := rs[:0]
	for _, r := range rs {
		if _, ok := names[r.LinkIndex]; !ok || r.Type != unix.RTN_UNICAST {
			continue
		}
		if r.Dst != nil && r.Dst.IP.To4() == nil && (r.Dst.IP.IsLinkLocalUnicast() || r.Dst.IP.IsMulticast()) {
			continue
		}
		out = append(out, r)
	}
	return out, names, nil
}
