package cocoon

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"

	"github.com/cocoon-runtime/cocoon/hypervisor"
	"github.com/cocoon-runtime/cocoon/internal/cni"
	"github.com/cocoon-runtime/cocoon/internal/network"
)

// attachNetwork wires the veths of the pod netns at path to taps for the
// VM (see network.Attach), after saving the record of what it will make
// there. It returns the VM's network devices, whose files the caller
// closes once the VM started, and what the guest is to be given. The
// caller holds the sandbox's lock.
func (s *Sandbox) attachNetwork(path string) ([]hypervisor.NetDevice, network.Config, error) {
	eps, routes, neighs, err := network.Plan(path)
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
	files, err := network.Attach(path, eps)
	if err != nil {
		return nil, network.Config{}, err
	}
	devs := make([]hypervisor.NetDevice, len(eps))
	cfg := network.Config{Routes: routes, Neighbors: neighs}
	for i, e := range eps {
		devs[i] = hypervisor.NetDevice{ID: fmt.Sprintf("net%d", i), Tap: files[i], MAC: e.Interface.MAC.String()}
		cfg.Interfaces = append(cfg.Interfaces, e.Interface)
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
