package network

import (
	"strings"
	"testing"

	"github.com/cocoon-runtime/cocoon/agent/protocol"
)

func TestValidate(t *testing.T) {
	good := func() *protocol.SetupNetworkRequest {
		return &protocol.SetupNetworkRequest{
			Interfaces: []*protocol.NetInterface{{Name: "eth0", Mac: "02:cc:00:00:00:02", Mtu: 1400, Addresses: []string{"10.0.0.2/24", "fd00::2/64"}}},
			Routes:     []*protocol.NetRoute{{Gateway: "10.0.0.1", Device: "eth0", Family: 4}, {Destination: "10.1.0.0/16", Device: "eth0", Scope: 253, Family: 4}},
			Neighbors:  []*protocol.NetNeighbor{{Ip: "10.0.0.9", Mac: "02:cc:00:00:00:09", Device: "eth0"}, {Ip: "fd00::9", Mac: "02:cc:00:00:00:0a", Device: "eth0"}},
		}
	}
	if err := Validate(good()); err != nil {
		t.Fatal(err)
	}
	for name, tc := range map[string]struct {
		mod  func(*protocol.SetupNetworkRequest)
		want string
	}{
		"name":      {func(r *protocol.SetupNetworkRequest) { r.Interfaces[0].Name = "../x" }, "bad interface name"},
		"long name": {func(r *protocol.SetupNetworkRequest) { r.Interfaces[0].Name = strings.Repeat("e", 16) }, "bad interface name"},
		"mac":       {func(r *protocol.SetupNetworkRequest) { r.Interfaces[0].Mac = "zz" }, "bad mac"},
		"mtu":       {func(r *protocol.SetupNetworkRequest) { r.Interfaces[0].Mtu = 70000 }, "mtu 70000"},
		"address":   {func(r *protocol.SetupNetworkRequest) { r.Interfaces[0].Addresses[0] = "10.0.0.300/24" }, "address"},
		"twice": {func(r *protocol.SetupNetworkRequest) {
			r.Interfaces = append(r.Interfaces, r.Interfaces[0])
		}, "given twice"},
		"route device":  {func(r *protocol.SetupNetworkRequest) { r.Routes[0].Device = "eth9" }, "unknown device"},
		"route family":  {func(r *protocol.SetupNetworkRequest) { r.Routes[0].Family = 5 }, "family 5"},
		"route gateway": {func(r *protocol.SetupNetworkRequest) { r.Routes[0].Gateway = "x" }, "bad address"},
		"route dst":     {func(r *protocol.SetupNetworkRequest) { r.Routes[1].Destination = "10.1.0.0" }, "route destination"},
		"too many": {func(r *protocol.SetupNetworkRequest) {
			r.Routes = make([]*protocol.NetRoute, maxRoutes+1)
		}, "over the limit"},
		"too many neighbours": {func(r *protocol.SetupNetworkRequest) {
			r.Neighbors = make([]*protocol.NetNeighbor, maxNeighbors+1)
		}, "over the limit"},
		"neighbour device": {func(r *protocol.SetupNetworkRequest) { r.Neighbors[0].Device = "eth9" }, "unknown device"},
		"neighbour ip":     {func(r *protocol.SetupNetworkRequest) { r.Neighbors[0].Ip = "10.0.0" }, "bad address"},
		"neighbour mac":    {func(r *protocol.SetupNetworkRequest) { r.Neighbors[1].Mac = "02:cc:00:00:00:00:00:01" }, "bad mac"},
	} {
		r := good()
		tc.mod(r)
		if err := Validate(r); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want %q", name, err, tc.want)
		}
	}
}

// An interface update may add routes and neighbours of that interface
// only, and is checked whole before anything is touched.
func TestValidateUpdate(t *testing.T) {
	good := func() *protocol.UpdateInterfaceRequest {
		return &protocol.UpdateInterfaceRequest{
			Interface: &protocol.NetInterface{Name: "net1", Mac: "02:cc:00:00:01:02", Mtu: 1300, Addresses: []string{"10.232.0.2/24"}},
			Routes:    []*protocol.NetRoute{{Destination: "10.240.0.0/16", Gateway: "10.232.0.1", Device: "net1", Family: 4}},
			Neighbors: []*protocol.NetNeighbor{{Ip: "10.232.0.9", Mac: "02:cc:00:00:00:09", Device: "net1"}},
		}
	}
	if err := ValidateUpdate(good()); err != nil {
		t.Fatal(err)
	}
	for name, tc := range map[string]struct {
		mod  func(*protocol.UpdateInterfaceRequest)
		want string
	}{
		"no interface":  {func(r *protocol.UpdateInterfaceRequest) { r.Interface = nil }, "no interface"},
		"control name":  {func(r *protocol.UpdateInterfaceRequest) { r.Interface.Name = "net\x1b1" }, "bad interface name"},
		"other device":  {func(r *protocol.UpdateInterfaceRequest) { r.Routes[0].Device = "eth0" }, "unknown device"},
		"neighbour dev": {func(r *protocol.UpdateInterfaceRequest) { r.Neighbors[0].Device = "eth0" }, "unknown device"},
		"too many":      {func(r *protocol.UpdateInterfaceRequest) { r.Routes = make([]*protocol.NetRoute, maxRoutes+1) }, "over the limit"},
		"mac":           {func(r *protocol.UpdateInterfaceRequest) { r.Interface.Mac = "" }, "bad mac"},
	} {
		r := good()
		tc.mod(r)
		if err := ValidateUpdate(r); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want %q", name, err, tc.want)
		}
	}
	if _, err := ReplaceRoutes(make([]*protocol.NetRoute, maxRoutes+1)); err == nil || !strings.Contains(err.Error(), "over the limit") {
		t.Errorf("too many routes to replace: %v", err)
	}
}
