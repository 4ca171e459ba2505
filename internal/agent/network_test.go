package agent

import (
	"errors"
	"strings"
	"testing"

	"github.com/cocoon-runtime/cocoon/agent/protocol"
	"google.golang.org/protobuf/proto"
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

// What a guest lists of its interfaces and routes is read only within
// bounds and in shape.
func TestParseNetworkRepliesHostile(t *testing.T) {
	good := &protocol.NetInterface{Name: "eth0", Mac: "02:cc:00:00:00:02", Mtu: 1400, Addresses: []string{"10.0.0.2/24"},
		Stats: &protocol.NetStats{RxBytes: 7, TxPackets: 3}}
	ifc, err := parseInterface(good)
	if err != nil || ifc.Name != "eth0" || ifc.MAC.String() != "02:cc:00:00:00:02" || ifc.MTU != 1400 || len(ifc.Addresses) != 1 || ifc.Stats.RxBytes != 7 || ifc.Stats.TxPackets != 3 {
		t.Fatalf("good interface: %+v, %v", ifc, err)
	}
	many := make([]string, maxGuestAddresses+1)
	for i := range many {
		many[i] = "10.0.0.2/24"
	}
	for name, m := range map[string]*protocol.NetInterface{
		"nil":       nil,
		"name":      {Name: "eth0\x1b[2J", Mac: good.Mac},
		"long name": {Name: strings.Repeat("e", 16), Mac: good.Mac},
		"mac":       {Name: "eth0", Mac: "02:cc:00:00:00:02:03:04"},
		"mtu":       {Name: "eth0", Mac: good.Mac, Mtu: 1 << 20},
		"address":   {Name: "eth0", Mac: good.Mac, Addresses: []string{"10.0.0.2"}},
		"addresses": {Name: "eth0", Mac: good.Mac, Addresses: many},
	} {
		if _, err := parseInterface(m); !errors.Is(err, ErrProtocol) {
			t.Errorf("interface %s: %v, want a protocol violation", name, err)
		}
	}
	rs, err := parseRoutes([]*protocol.NetRoute{{Gateway: "10.0.0.1", Device: "eth0", Family: 4}, {Destination: "fd00::/64", Device: "eth0", Scope: 253, Family: 6, Source: "fd00::2"}})
	if err != nil || len(rs) != 2 || rs[0].Destination.IsValid() || rs[0].Gateway.String() != "10.0.0.1" || rs[1].Destination.String() != "fd00::/64" || rs[1].Scope != 253 {
		t.Fatalf("good routes: %+v, %v", rs, err)
	}
	for name, r := range map[string]*protocol.NetRoute{
		"nil":         nil,
		"device":      {Device: "../x", Family: 4},
		"family":      {Device: "eth0", Family: 5},
		"scope":       {Device: "eth0", Family: 4, Scope: 300},
		"destination": {Device: "eth0", Family: 4, Destination: "10.0.0.0"},
		"gateway":     {Device: "eth0", Family: 4, Gateway: "10.0.0.1/24"},
		"source":      {Device: "eth0", Family: 4, Source: "x"},
	} {
		if _, err := parseRoutes([]*protocol.NetRoute{r}); !errors.Is(err, ErrProtocol) {
			t.Errorf("route %s: %v, want a protocol violation", name, err)
		}
	}
	if _, err := parseRoutes(make([]*protocol.NetRoute, maxGuestRoutes+1)); !errors.Is(err, ErrProtocol) {
		t.Errorf("too many routes: %v", err)
	}
}

// FuzzParseNetworkReplies feeds arbitrary ListInterfaces and ListRoutes
// replies to the host's parsing: no panic, and what is accepted is within
// bounds.
func FuzzParseNetworkReplies(f *testing.F) {
	f.Add([]byte{}, []byte{})
	ifs, _ := proto.Marshal(&protocol.NetInterfaces{Interfaces: []*protocol.NetInterface{{Name: "eth0", Mac: "02:cc:00:00:00:02", Mtu: 1500, Addresses: []string{"10.0.0.2/24"}}}})
	rts, _ := proto.Marshal(&protocol.NetRoutes{Routes: []*protocol.NetRoute{{Gateway: "10.0.0.1", Device: "eth0", Family: 4}}})
	f.Add(ifs, rts)
	f.Fuzz(func(t *testing.T, ib, rb []byte) {
		var ir protocol.NetInterfaces
		if proto.Unmarshal(ib, &ir) == nil && len(ir.Interfaces) <= maxGuestInterfaces {
			for _, m := range ir.Interfaces {
				ifc, err := parseInterface(m)
				if err != nil {
					continue
				}
				if protocol.ValidInterfaceName(ifc.Name) != nil || len(ifc.Addresses) > maxGuestAddresses || ifc.MTU > 65535 || (ifc.MAC != nil && len(ifc.MAC) != 6) {
					t.Fatalf("accepted %+v", ifc)
				}
			}
		}
		var rr protocol.NetRoutes
		if proto.Unmarshal(rb, &rr) == nil {
			rs, err := parseRoutes(rr.Routes)
			if err == nil {
				for _, r := range rs {
					if protocol.ValidInterfaceName(r.Device) != nil || (r.Family != 4 && r.Family != 6) {
						t.Fatalf("accepted %+v", r)
					}
				}
			}
		}
	})
}
