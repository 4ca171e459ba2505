package cocoon

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/cocoon-runtime/cocoon/hypervisor"
	"github.com/cocoon-runtime/cocoon/internal/cni"
	"github.com/cocoon-runtime/cocoon/internal/dan"
	"github.com/cocoon-runtime/cocoon/internal/network"
)

// attachNetwork wires the interfaces of the pod netns at path to taps for
// the VM with model (see network.Attach), after saving the record of what
// it will make there: with queues queue pairs each where Cocoon makes the
// tap, and vhost-net where the host has it. It returns the VM's network
// devices, whose files the caller closes once the VM started (see
// closeNetDevices), and what the guest is to be given. The caller holds
// the sandbox's lock.
func (s *Sandbox) attachNetwork(path string, model network.Model, queues int) (_ []hypervisor.NetDevice, _ network.Config, err error) {
	eps, routes, neighs, err := network.Plan(path, model)
	if err != nil {
		return nil, network.Config{}, err
	}
	rec := network.RecordOf(path, eps)
	s.mu.Lock()
	s.state.Network = &rec
	s.mu.Unlock()
	if err := s.rt.store.Save(s.id, s.state); err != nil {
		return nil, network.Config{}, err
	}
	files, err := network.Attach(path, eps, queues)
	if err != nil {
		return nil, network.Config{}, err
	}
	devs := make([]hypervisor.NetDevice, len(eps))
	defer func() {
		if err != nil {
			closeNetDevices(devs)
		}
	}()
	cfg := network.Config{Routes: routes, Neighbors: neighs}
	for i, e := range eps {
		devs[i] = hypervisor.NetDevice{ID: fmt.Sprintf("net%d", i), Taps: files[i], MAC: e.Interface.MAC.String()}
		if devs[i].VhostNet, err = network.OpenVhostNet(vhostNetDevice, len(files[i])); err != nil {
			return nil, network.Config{}, err
		}
		cfg.Interfaces = append(cfg.Interfaces, e.Interface)
	}
	return devs, cfg, nil
}

// vhostNetDevice is the host's vhost-net device, used where it exists.
const vhostNetDevice = "/dev/vhost-net"

// netQueues is how many queue pairs a NIC Cocoon makes the tap of gets:
// one a vCPU, up to 8.
func netQueues(vcpus uint32) int { return int(min(max(vcpus, 1), 8)) }

// closeNetDevices closes the files of devs.
func closeNetDevices(devs []hypervisor.NetDevice) {
	for _, d := range devs {
		network.CloseAll([][]*os.File{d.Taps, d.VhostNet})
	}
}

// attachDAN opens the host taps a DAN file lists (in its netns) for the
// VM, after saving the record of them: taps Cocoon did not make, which
// it leaves when the sandbox goes. It returns the VM's network devices,
// whose files the caller closes once the VM started, and what the guest
// is to be given. The caller holds the sandbox's lock.
func (s *Sandbox) attachDAN(d dan.Config) (_ []hypervisor.NetDevice, _ network.Config, err error) {
	rec := network.Record{NetNS: d.NetNS}
	for _, dev := range d.Devices {
		rec.Endpoints = append(rec.Endpoints, network.RecordEndpoint{Link: dev.Interface.Name, Model: network.ModelNone, Tap: dev.TapName, MAC: dev.Interface.MAC.String()})
	}
	s.mu.Lock()
	s.state.Network = &rec
	s.mu.Unlock()
	if err := s.rt.store.Save(s.id, s.state); err != nil {
		return nil, network.Config{}, err
	}
	var devs []hypervisor.NetDevice
	defer func() {
		if err != nil {
			closeNetDevices(devs)
		}
	}()
	var cfg network.Config
	for i, dev := range d.Devices {
		if dev.Type != dan.TypeHostTap {
			return nil, network.Config{}, fmt.Errorf("DAN device %s: type %s: %w", dev.Interface.Name, dev.Type, hypervisor.ErrNotSupported)
		}
		f, err := network.OpenGivenTap(d.NetNS, dev.TapName)
		if err != nil {
			return nil, network.Config{}, fmt.Errorf("DAN device %s: %w", dev.Interface.Name, err)
		}
		nd := hypervisor.NetDevice{ID: fmt.Sprintf("net%d", i), Taps: []*os.File{f}, MAC: dev.Interface.MAC.String(), QueueSize: dev.QueueSize}
		devs = append(devs, nd)
		if devs[i].VhostNet, err = network.OpenVhostNet(vhostNetDevice, 1); err != nil {
			return nil, network.Config{}, err
		}
		cfg.Interfaces = append(cfg.Interfaces, dev.Interface)
		cfg.Routes = append(cfg.Routes, dev.Routes...)
		cfg.Neighbors = append(cfg.Neighbors, dev.Neighbors...)
	}
	return devs, cfg, nil
}

// NetworkConfig has Cocoon make a sandbox's network itself, as a container
// manager would: a network namespace of its own, /run/netns/cocoon-<ID>
// (so `ip netns exec` reaches it), and in it the interfaces of a CNI
// network, whose plugins Cocoon runs with CNI's libcni. The VM is then
// wired to that namespace as to one given in SandboxConfig.NetNS. The CNI
// network is torn down (DEL) and the namespace removed with the sandbox.
type NetworkConfig struct {
	// CNI is the network's name: the "name" of a .conflist (or .conf) in
	// CNIConfDir. "" makes the namespace with only its loopback.
	CNI string
	// CNIConfDir defaults to /etc/cni/net.d.
	CNIConfDir string
	// CNIBinDirs default to /usr/lib/cni (Debian's plugins), then
	// /opt/cni/bin.
	CNIBinDirs []string
	// IfName is the interface CNI makes in the namespace (default eth0).
	IfName string
}

// ownNetwork is a pod network Cocoon made itself: its namespace and the
// CNI attachment to undo there, if any.
type ownNetwork struct {
	NetNS string          `json:"netns"`
	CNI   *cni.Attachment `json:"cni,omitempty"`
}

// ownNetNSPath is where the network namespace Cocoon makes for sandbox id
// is mounted.
func ownNetNSPath(id string) string { return filepath.Join("/run/netns", "cocoon-"+id) }

// makeNetwork makes the network nc asks for, after saving its record, and
// returns the path of its namespace. The caller holds the sandbox's lock;
// on error, its teardown removes what was made.
func (s *Sandbox) makeNetwork(ctx context.Context, nc NetworkConfig) (string, error) {
	own := &ownNetwork{NetNS: ownNetNSPath(s.id)}
	if nc.CNI != "" {
		a, err := cni.Prepare(ctx, cni.Network{Name: nc.CNI, ConfDir: nc.CNIConfDir, BinDirs: nc.CNIBinDirs, IfName: nc.IfName},
			s.id, own.NetNS, filepath.Join(s.dir, "cni"))
		if err != nil {
			return "", fmt.Errorf("%w: %w", ErrInvalidConfig, err)
		}
		own.CNI = &a
	}
	s.mu.Lock()
	s.state.OwnNetwork = own
	s.mu.Unlock()
	if err := s.rt.store.Save(s.id, s.state); err != nil {
		return "", err
	}
	if err := network.NewNetNS(own.NetNS); err != nil {
		// A namespace of that name that Cocoon did not make stays.
		s.mu.Lock()
		s.state.OwnNetwork = nil
		s.mu.Unlock()
		return "", errors.Join(err, s.rt.store.Save(s.id, s.state))
	}
	if own.CNI != nil {
		if err := cni.Add(ctx, *own.CNI); err != nil {
			return "", err
		}
	}
	return own.NetNS, nil
}

// removeNetwork undoes makeNetwork: CNI's DEL, then the namespace. Both
// are no-ops for what is gone already.
func removeNetwork(ctx context.Context, own ownNetwork) error {
	var errs []error
	if own.CNI != nil {
		errs = append(errs, cni.Del(ctx, *own.CNI))
	}
	return errors.Join(append(errs, network.DeleteNetNS(own.NetNS))...)
}

// NetInterface is a network interface of a pod: as Cocoon found it in
// the pod's network namespace, and as the guest has it.
type NetInterface = network.Interface

// NetRoute is a route of a pod's network.
type NetRoute = network.Route

// NetStats are an interface's counters in the guest.
type NetStats = network.Stats

// hotplugWait bounds the guest's wait for a hot-plugged NIC to appear.
const hotplugWait = 20 * time.Second

// AddInterface wires interface name of the sandbox's network namespace —
// one that appeared there after the sandbox started, such as a second
// network CNI added — to the running VM as the sandbox's interworking
// model has it (see SandboxConfig.NetworkModel), a NIC hot-plugged into a free PCIe root port (the VM needs
// VMConfig.HotplugSlots), and in the guest the veth's name, MAC, MTU,
// addresses, routes and permanent neighbours. It returns the interface as
// the guest has it. On error nothing of it is left.
func (s *Sandbox) AddInterface(ctx context.Context, name string) (_ NetInterface, err error) {
	unlock, err := s.rt.store.Lock(ctx, s.id)
	if err != nil {
		return NetInterface{}, err
	}
	defer unlock()
	rec, v, ag, err := s.networkLocked("add interface " + name)
	if err != nil {
		return NetInterface{}, err
	}
	s.mu.Lock()
	model := s.state.NetworkModel
	s.mu.Unlock()
	if model == "" {
		model = network.ModelTCFilter
	}
	var taps []string
	for _, e := range rec.Endpoints {
		if e.Link == name {
			return NetInterface{}, fmt.Errorf("sandbox %s: add interface %s: %w: it is attached already", s.id, name, ErrExists)
		}
		taps = append(taps, e.Tap)
	}
	ep, routes, neighs, err := network.PlanInterface(rec.NetNS, name, model, taps)
	if err != nil {
		return NetInterface{}, fmt.Errorf("sandbox %s: add interface: %w", s.id, err)
	}
	mac := ep.Interface.MAC.String()
	for _, e := range rec.Endpoints {
		if e.MAC == mac {
			return NetInterface{}, fmt.Errorf("sandbox %s: add interface %s: %w: mac %s is %s's already", s.id, name, ErrInvalidConfig, mac, e.Link)
		}
	}
	one := network.RecordOf(rec.NetNS, []network.Endpoint{ep})
	one.Endpoints[0].Hotplugged = true
	// The record first, so that whatever a crash leaves is removed with
	// the sandbox; on error it is taken back with what was made.
	if err := s.updateLocked(func(st *sandboxState) error {
		st.Network.Endpoints = append(st.Network.Endpoints, one.Endpoints[0])
		return nil
	}); err != nil {
		return NetInterface{}, err
	}
	dev := hypervisor.Device{Kind: hypervisor.DeviceNet, ID: ep.Tap, MAC: mac}
	plugged := false
	defer func() {
		if err == nil {
			return
		}
		if plugged {
			v.RemoveDevice(context.WithoutCancel(ctx), dev)
		}
		errs := []error{err, network.Remove(one)}
		errs = append(errs, s.updateLocked(func(st *sandboxState) error {
			st.Network.Endpoints = slices.DeleteFunc(st.Network.Endpoints, func(e network.RecordEndpoint) bool { return e.Tap == ep.Tap })
			return nil
		}))
		err = errors.Join(errs...)
	}()
	// One queue: QEMU takes a hot-plugged NIC's tap as one file.
	files, err := network.Attach(rec.NetNS, []network.Endpoint{ep}, 1)
	if err != nil {
		return NetInterface{}, fmt.Errorf("sandbox %s: add interface: %w", s.id, err)
	}
	defer network.CloseAll(files)
	dev.Tap = files[0][0]
	if err := v.AddDevice(ctx, dev); err != nil {
		return NetInterface{}, fmt.Errorf("sandbox %s: add interface %s: %w", s.id, name, err)
	}
	plugged = true
	ifc, err := ag.UpdateInterface(ctx, ep.Interface, routes, neighs, hotplugWait)
	if err != nil {
		return NetInterface{}, fmt.Errorf("sandbox %s: add interface %s: %w", s.id, name, err)
	}
	return ifc, nil
}

// RemoveInterface detaches interface name, added with AddInterface, from
// the running VM: the guest's NIC is unplugged (with its addresses and
// routes), and the tap and tc redirection beside the veth removed. The
// veth itself stays the namespace owner's. Interfaces the sandbox booted
// with stay for its life.
func (s *Sandbox) RemoveInterface(ctx context.Context, name string) error {
	unlock, err := s.rt.store.Lock(ctx, s.id)
	if err != nil {
		return err
	}
	defer unlock()
	rec, v, _, err := s.networkLocked("remove interface " + name)
	if err != nil {
		return err
	}
	i := slices.IndexFunc(rec.Endpoints, func(e network.RecordEndpoint) bool { return e.Link == name })
	if i < 0 {
		return fmt.Errorf("sandbox %s: remove interface %s: %w", s.id, name, ErrNotFound)
	}
	e := rec.Endpoints[i]
	if !e.Hotplugged {
		return fmt.Errorf("sandbox %s: remove interface %s: %w: the sandbox booted with it", s.id, name, ErrState)
	}
	if err := v.RemoveDevice(ctx, hypervisor.Device{Kind: hypervisor.DeviceNet, ID: e.Tap}); err != nil {
		return fmt.Errorf("sandbox %s: remove interface %s: %w", s.id, name, err)
	}
	err = network.Remove(network.Record{NetNS: rec.NetNS, Endpoints: []network.RecordEndpoint{e}})
	return errors.Join(err, s.updateLocked(func(st *sandboxState) error {
		st.Network.Endpoints = slices.DeleteFunc(st.Network.Endpoints, func(x network.RecordEndpoint) bool { return x.Tap == e.Tap })
		return nil
	}))
}

// UpdateInterface sets the addresses and MTU of the guest's interface
// ifc.Name, which the sandbox has (booted with or added); its MAC, when
// given, must be the interface's. It returns the interface as the guest
// then has it.
func (s *Sandbox) UpdateInterface(ctx context.Context, ifc NetInterface) (NetInterface, error) {
	unlock, err := s.rt.store.Lock(ctx, s.id)
	if err != nil {
		return NetInterface{}, err
	}
	defer unlock()
	rec, _, ag, err := s.networkLocked("update interface " + ifc.Name)
	if err != nil {
		return NetInterface{}, err
	}
	i := slices.IndexFunc(rec.Endpoints, func(e network.RecordEndpoint) bool { return e.Link == ifc.Name })
	if i < 0 {
		return NetInterface{}, fmt.Errorf("sandbox %s: update interface %s: %w", s.id, ifc.Name, ErrNotFound)
	}
	mac, err := net.ParseMAC(rec.Endpoints[i].MAC)
	if err != nil {
		return NetInterface{}, fmt.Errorf("sandbox %s: update interface %s: no mac on record", s.id, ifc.Name)
	}
	if ifc.MAC != nil && ifc.MAC.String() != mac.String() {
		return NetInterface{}, fmt.Errorf("sandbox %s: update interface %s: %w: mac %s is not the interface's (%s)", s.id, ifc.Name, ErrInvalidConfig, ifc.MAC, mac)
	}
	ifc.MAC, ifc.Stats = mac, nil
	out, err := ag.UpdateInterface(ctx, ifc, nil, nil, 0)
	if err != nil {
		return NetInterface{}, fmt.Errorf("sandbox %s: update interface %s: %w", s.id, ifc.Name, err)
	}
	return out, nil
}

// ListInterfaces lists the guest's network interfaces (the loopback left
// out) with their counters, as the guest reports them.
func (s *Sandbox) ListInterfaces(ctx context.Context) ([]NetInterface, error) {
	ag, err := s.agentClient()
	if err != nil {
		return nil, err
	}
	ifcs, err := ag.ListInterfaces(ctx)
	if err != nil {
		return nil, fmt.Errorf("sandbox %s: list interfaces: %w", s.id, err)
	}
	return ifcs, nil
}

// UpdateRoutes replaces the guest's routes with routes (the prefix routes
// of its addresses stay) and returns its routes then. A route's Family
// may be left 0 where its destination or gateway tells it.
func (s *Sandbox) UpdateRoutes(ctx context.Context, routes []NetRoute) ([]NetRoute, error) {
	ag, err := s.agentClient()
	if err != nil {
		return nil, err
	}
	routes = slices.Clone(routes)
	for i, r := range routes {
		if r.Family != 0 {
			continue
		}
		switch {
		case r.Destination.IsValid():
			routes[i].Family = network.Family(r.Destination.Addr())
		case r.Gateway.IsValid():
			routes[i].Family = network.Family(r.Gateway)
		default:
			return nil, fmt.Errorf("sandbox %s: update routes: %w: route %d on %s names no family, destination or gateway", s.id, ErrInvalidConfig, i, r.Device)
		}
	}
	out, err := ag.UpdateRoutes(ctx, routes)
	if err != nil {
		return nil, fmt.Errorf("sandbox %s: update routes: %w", s.id, err)
	}
	return out, nil
}

// ListRoutes lists the guest's routes (IPv6 link-local and multicast
// ones left out).
func (s *Sandbox) ListRoutes(ctx context.Context) ([]NetRoute, error) {
	ag, err := s.agentClient()
	if err != nil {
		return nil, err
	}
	out, err := ag.ListRoutes(ctx)
	if err != nil {
		return nil, fmt.Errorf("sandbox %s: list routes: %w", s.id, err)
	}
	return out, nil
}

// networkLocked loads the sandbox's state afresh (another process may
// have changed it) and returns its network record, VM and agent, or why
// an interface cannot be changed. The caller holds the sandbox's lock.
func (s *Sandbox) networkLocked(op string) (network.Record, sandboxVM, guestAgent, error) {
	st, err := s.loadLocked()
	if err != nil {
		return network.Record{}, nil, nil, err
	}
	s.mu.Lock()
	s.state = st
	s.mu.Unlock()
	ag, err := s.agentClient()
	if err != nil {
		return network.Record{}, nil, nil, err
	}
	s.mu.Lock()
	rec, v := s.state.Network, s.vm
	s.mu.Unlock()
	if rec == nil {
		return network.Record{}, nil, nil, fmt.Errorf("sandbox %s: %s: %w: the sandbox has no network namespace", s.id, op, ErrState)
	}
	return *rec, v, ag, nil
}
