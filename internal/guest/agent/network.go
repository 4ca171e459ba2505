package agent

import (
	"context"

	"github.com/cocoon-runtime/cocoon/agent/protocol"
	"github.com/cocoon-runtime/cocoon/internal/guest/network"
)

// SetupNetwork configures the pod's interfaces and routes in the guest.
func (a *Agent) SetupNetwork(ctx context.Context, req *protocol.SetupNetworkRequest) (*protocol.SetupNetworkResponse, error) {
	ifcs, err := network.Setup(req)
	if err != nil {
		a.log.Warn("network setup", "err", err)
		return nil, err
	}
	a.log.Info("network set up", "interfaces", len(ifcs), "routes", len(req.Routes))
	return &protocol.SetupNetworkResponse{Interfaces: ifcs}, nil
}

// UpdateInterface configures one interface, such as a hot-plugged NIC.
func (a *Agent) UpdateInterface(ctx context.Context, req *protocol.UpdateInterfaceRequest) (*protocol.NetInterface, error) {
	ifc, err := network.Update(req)
	if err != nil {
		a.log.Warn("update interface", "err", err)
		return nil, err
	}
	a.log.Info("interface updated", "name", ifc.Name, "addresses", len(ifc.Addresses))
	return ifc, nil
}

// ListInterfaces lists the guest's interfaces with their counters.
func (a *Agent) ListInterfaces(ctx context.Context, _ *protocol.Empty) (*protocol.NetInterfaces, error) {
	ifcs, err := network.List()
	if err != nil {
		return nil, err
	}
	return &protocol.NetInterfaces{Interfaces: ifcs}, nil
}

// UpdateRoutes replaces the guest's routes.
func (a *Agent) UpdateRoutes(ctx context.Context, req *protocol.NetRoutes) (*protocol.NetRoutes, error) {
	rs, err := network.ReplaceRoutes(req.Routes)
	if err != nil {
		a.log.Warn("update routes", "err", err)
		return nil, err
	}
	a.log.Info("routes updated", "routes", len(rs))
	return &protocol.NetRoutes{Routes: rs}, nil
}

// ListRoutes lists the guest's routes.
func (a *Agent) ListRoutes(ctx context.Context, _ *protocol.Empty) (*protocol.NetRoutes, error) {
	rs, err := network.Routes()
	if err != nil {
		return nil, err
	}
	return &protocol.NetRoutes{Routes: rs}, nil
}
