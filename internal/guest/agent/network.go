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
