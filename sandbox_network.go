package cocoon

import (
	"fmt"

	"github.com/cocoon-runtime/cocoon/hypervisor"
	"github.com/cocoon-runtime/cocoon/internal/network"
)

// attachNetwork wires the veths of the pod netns at path to taps for the
// VM (see network.Attach), after saving the record of what it will make
// there. It returns the VM's network devices, whose files the caller
// closes once the VM started, and what the guest is to be given. The
// caller holds the sandbox's lock.
func (s *Sandbox) attachNetwork(path string) ([]hypervisor.NetDevice, network.Config, error) {
	eps, routes, err := network.Plan(path)
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
	cfg := network.Config{Routes: routes}
	for i, e := range eps {
		devs[i] = hypervisor.NetDevice{ID: fmt.Sprintf("net%d", i), Tap: files[i], MAC: e.Interface.MAC.String()}
		cfg.Interfaces = append(cfg.Interfaces, e.Interface)
	}
	return devs, cfg, nil
}
