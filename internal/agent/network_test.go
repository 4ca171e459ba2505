package agent

import (
	"errors"
	"testing"

	"github.com/cocoon-runtime/cocoon/agent/protocol"
)

// A guest's reply to SetupNetwork is believed only when it reports each
// interface as it was sent.
func TestValidateNetworkHostile(t *testing.T) {
	sent := []*protocol.NetInterface{{Name: "eth0", Mac: "02:cc:00:00:00:02", Mtu: 1400, Addresses: []string{"10.0.0.2/24", "fd00::2/64"}}}
	ok := &protocol.SetupNetworkResponse{Interfaces: []*protocol.NetInterface{{Name: "eth0", Mac: "02:CC:00:00:00:02", Mtu: 1400, Addresses: []string{"fd00::2/64", "10.0.0.2/24"}}}}
	if err := validateNetwork(sent, ok); err != nil {
		t.Fatal(err)
	}
	for name, r := range map[string]*protocol.SetupNetworkResponse{
		"none":      {},
		"extra":     {Interfaces: append(ok.Interfaces, ok.Interfaces[0])},
		"name":      {Interfaces: []*protocol.NetInterface{{Name: "eth1\x1b[2J", Mac: "02:cc:00:00:00:02", Mtu: 1400, Addresses: sent[0].Addresses}}},
		"mac":       {Interfaces: []*protocol.NetInterface{{Name: "eth0", Mac: "garbage", Mtu: 1400, Addresses: sent[0].Addresses}}},
		"mtu":       {Interfaces: []*protocol.NetInterface{{Name: "eth0", Mac: "02:cc:00:00:00:02", Mtu: 9000, Addresses: sent[0].Addresses}}},
		"addresses": {Interfaces: []*protocol.NetInterface{{Name: "eth0", Mac: "02:cc:00:00:00:02", Mtu: 1400, Addresses: []string{"10.0.0.2/24"}}}},
		"bad addr":  {Interfaces: []*protocol.NetInterface{{Name: "eth0", Mac: "02:cc:00:00:00:02", Mtu: 1400, Addresses: []string{"10.0.0.2/24", "not an address"}}}},
	} {
		if err := validateNetwork(sent, r); !errors.Is(err, ErrProtocol) {
			t.Errorf("%s: %v, want a protocol violation", name, err)
		}
	}
}
