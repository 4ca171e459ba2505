package dan

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const good = `{
  "netns": "/run/netns/pod",
  "devices": [{
    "name": "eth0",
    "guest_mac": "02:cc:00:00:00:05",
    "device": {"type": "host-tap", "tap_name": "dantap0", "queue_num": 1, "queue_size": 512},
    "network_info": {
      "interface": {"ip_addresses": ["10.233.0.2/24", "fd00:dd::2/64"], "mtu": 1400, "ntype": "tuntap", "flags": 0},
      "routes": [{"dest": "", "gateway": "10.233.0.1"}, {"dest": "10.244.0.0/16", "gateway": "10.233.0.1", "source": "10.233.0.2", "scope": 0},
                 {"dest": "::/0", "gateway": "fd00:dd::1"}],
      "neighbors": [{"ip_address": "10.233.0.9/24", "hardware_addr": "02:cc:00:00:00:09", "state": 128, "flags": 0}]
    }
  }, {
    "name": "eth1",
    "device": {"type": "vhost-user", "path": "/run/vhost/net.sock"},
    "network_info": {"interface": {"ip_addresses": []}}
  }]
}`

func TestParseGood(t *testing.T) {
	c, err := Parse("good.json", []byte(good))
	if err != nil {
		t.Fatal(err)
	}
	if c.NetNS != "/run/netns/pod" || len(c.Devices) != 2 {
		t.Fatalf("config %+v", c)
	}
	d := c.Devices[0]
	if d.Type != TypeHostTap || d.TapName != "dantap0" || d.QueueSize != 512 || d.Interface.Name != "eth0" ||
		d.Interface.MAC.String() != "02:cc:00:00:00:05" || d.Interface.MTU != 1400 || len(d.Interface.Addresses) != 2 {
		t.Errorf("device 0: %+v", d)
	}
	if len(d.Routes) != 3 || d.Routes[0].Destination.IsValid() || d.Routes[0].Family != 4 || d.Routes[0].Device != "eth0" ||
		d.Routes[1].Destination.String() != "10.244.0.0/16" || d.Routes[1].Source.String() != "10.233.0.2" ||
		d.Routes[2].Family != 6 || d.Routes[2].Destination.IsValid() {
		t.Errorf("routes: %+v", d.Routes)
	}
	if len(d.Neighbors) != 1 || d.Neighbors[0].IP.String() != "10.233.0.9" || d.Neighbors[0].Device != "eth0" {
		t.Errorf("neighbours: %+v", d.Neighbors)
	}
	e := c.Devices[1]
	if e.Type != TypeVhostUser || e.Path != "/run/vhost/net.sock" || e.Interface.MTU != defaultMTU {
		t.Errorf("device 1: %+v", e)
	}
	// No guest_mac: a random, locally administered unicast one.
	if m := e.Interface.MAC; len(m) != 6 || m[0]&1 != 0 || m[0]&2 == 0 {
		t.Errorf("generated mac %s", m)
	}
}

// Each malformed field is an error naming it.
func TestParseBad(t *testing.T) {
	for _, tc := range []struct {
		edit  func(m map[string]any)
		field string
	}{
		{func(m map[string]any) { m["netns"] = "run/netns/pod" }, "netns"},
		{func(m map[string]any) { m["netns"] = 7 }, "netns"},
		{func(m map[string]any) { m["devices"] = []any{} }, "devices"},
		{func(m map[string]any) { dev(m, 0)["name"] = "eth/0" }, "devices[0].name"},
		{func(m map[string]any) { dev(m, 0)["name"] = strings.Repeat("e", 16) }, "devices[0].name"},
		{func(m map[string]any) { dev(m, 1)["name"] = "eth0" }, "devices[1].name"},
		{func(m map[string]any) { dev(m, 0)["guest_mac"] = "01:00:5e:00:00:01" }, "devices[0].guest_mac"},
		{func(m map[string]any) { dev(m, 0)["guest_mac"] = "zz" }, "devices[0].guest_mac"},
		{func(m map[string]any) { dev(m, 1)["guest_mac"] = "02:cc:00:00:00:05" }, "devices[1].guest_mac"},
		{func(m map[string]any) { delete(dev(m, 0), "device") }, "devices[0].device"},
		{func(m map[string]any) { sub(dev(m, 0), "device")["type"] = "veth" }, "devices[0].device.type"},
		{func(m map[string]any) { sub(dev(m, 0), "device")["tap_name"] = "" }, "devices[0].device.tap_name"},
		{func(m map[string]any) { sub(dev(m, 1), "device")["path"] = "../sock" }, "devices[1].device.path"},
		{func(m map[string]any) { sub(dev(m, 0), "device")["queue_num"] = 4 }, "devices[0].device.queue_num"},
		{func(m map[string]any) { sub(dev(m, 0), "device")["queue_size"] = 300 }, "devices[0].device.queue_size"},
		{func(m map[string]any) { sub(dev(m, 0), "device")["queue_size"] = "big" }, "devices.device.queue_size"},
		{func(m map[string]any) { delete(sub(dev(m, 0), "network_info"), "interface") }, "devices[0].network_info.interface"},
		{func(m map[string]any) { ifc(m)["mtu"] = 20 }, "devices[0].network_info.interface.mtu"},
		{func(m map[string]any) { ifc(m)["ip_addresses"] = []any{"10.233.0.2"} }, "devices[0].network_info.interface.ip_addresses[0]"},
		{func(m map[string]any) { route(m, 1)["dest"] = "10.244.0.0" }, "devices[0].network_info.routes[1].dest"},
		{func(m map[string]any) { route(m, 0)["gateway"] = "gw" }, "devices[0].network_info.routes[0].gateway"},
		{func(m map[string]any) { route(m, 1)["source"] = "10.233.0.2/24" }, "devices[0].network_info.routes[1].source"},
		{func(m map[string]any) { route(m, 1)["scope"] = 256 }, "devices[0].network_info.routes[1].scope"},
		{func(m map[string]any) { route(m, 0)["gateway"] = "" }, "devices[0].network_info.routes[0].dest"},
		{func(m map[string]any) { route(m, 1)["gateway"] = "fd00:dd::1" }, "devices[0].network_info.routes[1].gateway"},
		{func(m map[string]any) { neigh(m)["ip_address"] = "10.233.0" }, "devices[0].network_info.neighbors[0].ip_address"},
		{func(m map[string]any) { neigh(m)["hardware_addr"] = "" }, "devices[0].network_info.neighbors[0].hardware_addr"},
	} {
		var m map[string]any
		if err := json.Unmarshal([]byte(good), &m); err != nil {
			t.Fatal(err)
		}
		tc.edit(m)
		data, _ := json.Marshal(m)
		_, err := Parse("bad.json", data)
		var fe *FieldError
		if !errors.As(err, &fe) || fe.Field != tc.field {
			t.Errorf("%s: %v, want an error naming %s", tc.field, err, tc.field)
		}
	}
	for _, data := range []string{"", "{", `{"devices": [] } {}`, strings.Repeat(" ", maxFileSize+1)} {
		var fe *FieldError
		if _, err := Parse("bad.json", []byte(data)); !errors.As(err, &fe) {
			t.Errorf("%.20q: %v, want a FieldError", data, err)
		}
	}
}

func dev(m map[string]any, i int) map[string]any { return m["devices"].([]any)[i].(map[string]any) }
func sub(m map[string]any, k string) map[string]any {
	return m[k].(map[string]any)
}
func ifc(m map[string]any) map[string]any { return sub(sub(dev(m, 0), "network_info"), "interface") }
func route(m map[string]any, i int) map[string]any {
	return sub(dev(m, 0), "network_info")["routes"].([]any)[i].(map[string]any)
}
func neigh(m map[string]any) map[string]any {
	return sub(dev(m, 0), "network_info")["neighbors"].([]any)[0].(map[string]any)
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	if c, err := Load(dir, "none"); c != nil || err != nil {
		t.Errorf("no file: %v, %v", c, err)
	}
	if err := os.WriteFile(filepath.Join(dir, "pod.json"), []byte(good), 0o600); err != nil {
		t.Fatal(err)
	}
	if c, err := Load(dir, "pod"); err != nil || len(c.Devices) != 2 {
		t.Errorf("pod: %v, %v", c, err)
	}
}

// FuzzParse: no panic, and what is accepted is within the limits.
func FuzzParse(f *testing.F) {
	f.Add([]byte(good))
	f.Add([]byte(`{"devices": [{"name": "e", "device": {"type": "host-tap", "tap_name": "t"}, "network_info": {"interface": {}}}]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse("f.json", data)
		if err != nil {
			var fe *FieldError
			if !errors.As(err, &fe) {
				t.Fatalf("error of another type: %v", err)
			}
			return
		}
		if len(c.Devices) == 0 || len(c.Devices) > maxDevices {
			t.Fatalf("%d devices accepted", len(c.Devices))
		}
		for _, d := range c.Devices {
			if len(d.Interface.MAC) != 6 || d.Interface.MTU < minMTU || d.Interface.MTU > maxMTU || len(d.Routes) > maxRoutes {
				t.Fatalf("accepted %+v", d)
			}
			for _, r := range d.Routes {
				if r.Family != 4 && r.Family != 6 || r.Device != d.Interface.Name {
					t.Fatalf("accepted route %+v", r)
				}
			}
		}
	})
}
