// Package dan reads directly attachable network (DAN) files: a network
// plugin that made a pod's host devices itself (a tap, a vhost-user
// socket) describes them, with what the guest is to see of each, in
// <dan_conf_dir>/<sandbox ID>.json, in the format Kata Containers' DAN
// reads:
//
//	{"netns": "/run/netns/pod",
//	 "devices": [{"name": "eth0", "guest_mac": "02:00:00:00:00:01",
//	   "device": {"type": "host-tap", "tap_name": "tap0"},
//	   "network_info": {
//	     "interface": {"ip_addresses": ["10.0.0.2/24"], "mtu": 1500},
//	     "routes": [{"dest": "", "gateway": "10.0.0.1"}],
//	     "neighbors": [{"ip_address": "10.0.0.9", "hardware_addr": "02:00:00:00:00:09"}]}}]}
//
// A file is checked whole before anything is used: a malformed one is a
// *FieldError naming the field.
package dan

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"

	"github.com/cocoon-runtime/cocoon/agent/protocol"
	"github.com/cocoon-runtime/cocoon/internal/network"
)

// Device types.
const (
	TypeHostTap   = "host-tap"
	TypeVhostUser = "vhost-user"
)

// Limits of a file.
const (
	maxFileSize  = 1 << 20
	maxDevices   = 16
	maxAddresses = 64
	maxRoutes    = 256
	maxNeighbors = 256
	minMTU       = 68
	maxMTU       = 65535
	defaultMTU   = 1500
)

// Config is a DAN file, checked.
type Config struct {
	// NetNS is the path of the network namespace the devices are in; ""
	// for the host's.
	NetNS   string
	Devices []Device
}

// Device is one host device and what the guest gets of it.
type Device struct {
	// Type is TypeHostTap or TypeVhostUser.
	Type string
	// TapName is the host tap (TypeHostTap), made by the plugin.
	TapName string
	// Path is the vhost-user socket (TypeVhostUser).
	Path string
	// QueueSize is the NIC's ring size, 0 for the default.
	QueueSize int
	// Interface is the guest's interface: Name, MAC (guest_mac, or a
	// random locally administered one), MTU and addresses.
	Interface network.Interface
	Routes    []network.Route
	Neighbors []network.Neighbor
}

// FieldError is a malformed DAN file: Field is the JSON path of what is
// wrong, such as "devices[0].network_info.routes[1].gateway".
type FieldError struct {
	File   string
	Field  string
	Reason string
}

func (e *FieldError) Error() string {
	if e.Field == "" {
		return fmt.Sprintf("DAN file %s: %s", e.File, e.Reason)
	}
	return fmt.Sprintf("DAN file %s: %s: %s", e.File, e.Field, e.Reason)
}

// Path is where the DAN file of sandbox id is in dir.
func Path(dir, id string) string { return filepath.Join(dir, id+".json") }

// Load reads and checks the DAN file of sandbox id in dir. It returns
// nil, nil when there is none.
func Load(dir, id string) (*Config, error) {
	path := Path(dir, id)
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("DAN file: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("DAN file %s: %w", path, err)
	}
	return Parse(path, data)
}

// The file's form.
type fileJSON struct {
	NetNS   *string      `json:"netns"`
	Devices []deviceJSON `json:"devices"`
}

type deviceJSON struct {
	Name     string `json:"name"`
	GuestMAC string `json:"guest_mac"`
	Device   *struct {
		Type      string `json:"type"`
		TapName   string `json:"tap_name"`
		Path      string `json:"path"`
		QueueNum  int    `json:"queue_num"`
		QueueSize int    `json:"queue_size"`
	} `json:"device"`
	NetworkInfo *struct {
		Interface *struct {
			IPAddresses []string `json:"ip_addresses"`
			MTU         *int     `json:"mtu"`
			NType       string   `json:"ntype"`
			Flags       uint32   `json:"flags"`
		} `json:"interface"`
		Routes []struct {
			Dest    string `json:"dest"`
			Gateway string `json:"gateway"`
			Source  string `json:"source"`
			Scope   int    `json:"scope"`
		} `json:"routes"`
		Neighbors []struct {
			IPAddress    string `json:"ip_address"`
			HardwareAddr string `json:"hardware_addr"`
		} `json:"neighbors"`
	} `json:"network_info"`
}

// Parse checks data, the DAN file at path.
func Parse(path string, data []byte) (*Config, error) {
	bad := func(field, format string, args ...any) error {
		return &FieldError{File: path, Field: field, Reason: fmt.Sprintf(format, args...)}
	}
	if len(data) > maxFileSize {
		return nil, bad("", "over %d bytes", maxFileSize)
	}
	var f fileJSON
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&f); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) {
			return nil, bad(te.Field, "%s where %s was expected", te.Value, te.Type)
		}
		return nil, bad("", "not JSON: %v", err)
	}
	if dec.More() {
		return nil, bad("", "more after the JSON object")
	}
	c := &Config{}
	if f.NetNS != nil {
		if !filepath.IsAbs(*f.NetNS) || filepath.Clean(*f.NetNS) != *f.NetNS {
			return nil, bad("netns", "%q is not a clean absolute path", *f.NetNS)
		}
		c.NetNS = *f.NetNS
	}
	if len(f.Devices) == 0 {
		return nil, bad("devices", "none")
	}
	if len(f.Devices) > maxDevices {
		return nil, bad("devices", "%d, over the limit of %d", len(f.Devices), maxDevices)
	}
	names, macs, taps := map[string]bool{}, map[string]bool{}, map[string]bool{}
	for i, dj := range f.Devices {
		at := func(field string) string { return fmt.Sprintf("devices[%d].%s", i, field) }
		var d Device
		if err := protocol.ValidInterfaceName(dj.Name); err != nil {
			return nil, bad(at("name"), "%v", err)
		}
		if names[dj.Name] {
			return nil, bad(at("name"), "%q is another device's too", dj.Name)
		}
		names[dj.Name] = true
		d.Interface.Name = dj.Name
		if dj.GuestMAC == "" {
			d.Interface.MAC = randomMAC()
		} else {
			mac, err := net.ParseMAC(dj.GuestMAC)
			if err != nil || len(mac) != 6 || mac[0]&1 != 0 || bytes.Equal(mac, make([]byte, 6)) {
				return nil, bad(at("guest_mac"), "%q is not a unicast Ethernet address", dj.GuestMAC)
			}
			d.Interface.MAC = mac
		}
		if macs[d.Interface.MAC.String()] {
			return nil, bad(at("guest_mac"), "%s is another device's too", d.Interface.MAC)
		}
		macs[d.Interface.MAC.String()] = true

		dev := dj.Device
		if dev == nil {
			return nil, bad(at("device"), "missing")
		}
		d.Type = dev.Type
		switch dev.Type {
		case TypeHostTap:
			if err := protocol.ValidInterfaceName(dev.TapName); err != nil {
				return nil, bad(at("device.tap_name"), "%v", err)
			}
			if taps[dev.TapName] {
				return nil, bad(at("device.tap_name"), "%q is another device's too", dev.TapName)
			}
			taps[dev.TapName] = true
			d.TapName = dev.TapName
		case TypeVhostUser:
			if !filepath.IsAbs(dev.Path) || filepath.Clean(dev.Path) != dev.Path {
				return nil, bad(at("device.path"), "%q is not a clean absolute path", dev.Path)
			}
			d.Path = dev.Path
		default:
			return nil, bad(at("device.type"), "%q: want %q or %q", dev.Type, TypeHostTap, TypeVhostUser)
		}
		if dev.QueueNum < 0 || dev.QueueNum > 1 {
			return nil, bad(at("device.queue_num"), "%d: one queue pair (0 or 1) is what Cocoon attaches", dev.QueueNum)
		}
		if q := dev.QueueSize; q != 0 && (q < 256 || q > 1024 || q&(q-1) != 0) {
			return nil, bad(at("device.queue_size"), "%d: want 0 (the default) or a power of two from 256 to 1024", q)
		}
		d.QueueSize = dev.QueueSize

		ni := dj.NetworkInfo
		if ni == nil || ni.Interface == nil {
			return nil, bad(at("network_info.interface"), "missing")
		}
		d.Interface.MTU = defaultMTU
		if ni.Interface.MTU != nil {
			if m := *ni.Interface.MTU; m < minMTU || m > maxMTU {
				return nil, bad(at("network_info.interface.mtu"), "%d out of range %d-%d", m, minMTU, maxMTU)
			}
			d.Interface.MTU = *ni.Interface.MTU
		}
		if len(ni.Interface.IPAddresses) > maxAddresses {
			return nil, bad(at("network_info.interface.ip_addresses"), "%d, over the limit of %d", len(ni.Interface.IPAddresses), maxAddresses)
		}
		for j, a := range ni.Interface.IPAddresses {
			p, err := netip.ParsePrefix(a)
			if err != nil {
				return nil, bad(at(fmt.Sprintf("network_info.interface.ip_addresses[%d]", j)), "%q is not an address in CIDR form", a)
			}
			d.Interface.Addresses = append(d.Interface.Addresses, p)
		}
		if len(ni.Routes) > maxRoutes {
			return nil, bad(at("network_info.routes"), "%d, over the limit of %d", len(ni.Routes), maxRoutes)
		}
		for j, rj := range ni.Routes {
			rat := func(field string) string { return at(fmt.Sprintf("network_info.routes[%d].%s", j, field)) }
			r := network.Route{Device: dj.Name}
			var err error
			if rj.Dest != "" {
				if r.Destination, err = netip.ParsePrefix(rj.Dest); err != nil {
					return nil, bad(rat("dest"), "%q is not a prefix in CIDR form", rj.Dest)
				}
				if r.Destination.Bits() == 0 {
					r.Family = network.Family(r.Destination.Addr())
					r.Destination = netip.Prefix{} // a default route
				}
			}
			if rj.Gateway != "" {
				if r.Gateway, err = netip.ParseAddr(rj.Gateway); err != nil {
					return nil, bad(rat("gateway"), "%q is not an IP address", rj.Gateway)
				}
			}
			if rj.Source != "" {
				if r.Source, err = netip.ParseAddr(rj.Source); err != nil {
					return nil, bad(rat("source"), "%q is not an IP address", rj.Source)
				}
			}
			if rj.Scope < 0 || rj.Scope > 255 {
				return nil, bad(rat("scope"), "%d out of range 0-255", rj.Scope)
			}
			r.Scope = uint8(rj.Scope)
			fams := map[int]bool{}
			for _, a := range []netip.Addr{r.Destination.Addr(), r.Gateway, r.Source} {
				if a.IsValid() {
					fams[network.Family(a)] = true
				}
			}
			if r.Family != 0 {
				fams[r.Family] = true
			}
			switch len(fams) {
			case 0:
				return nil, bad(rat("dest"), "a route needs a destination, gateway or source")
			case 2:
				return nil, bad(rat("gateway"), "mixes IPv4 and IPv6")
			}
			for f := range fams {
				r.Family = f
			}
			d.Routes = append(d.Routes, r)
		}
		if len(ni.Neighbors) > maxNeighbors {
			return nil, bad(at("network_info.neighbors"), "%d, over the limit of %d", len(ni.Neighbors), maxNeighbors)
		}
		for j, nj := range ni.Neighbors {
			nat := func(field string) string { return at(fmt.Sprintf("network_info.neighbors[%d].%s", j, field)) }
			// Kata writes the address in CIDR form; a bare one is fine too.
			ip, err := netip.ParseAddr(strings.SplitN(nj.IPAddress, "/", 2)[0])
			if err != nil {
				return nil, bad(nat("ip_address"), "%q is not an IP address", nj.IPAddress)
			}
			mac, err := net.ParseMAC(nj.HardwareAddr)
			if err != nil || len(mac) != 6 {
				return nil, bad(nat("hardware_addr"), "%q is not an Ethernet address", nj.HardwareAddr)
			}
			d.Neighbors = append(d.Neighbors, network.Neighbor{IP: ip, MAC: mac, Device: dj.Name})
		}
		c.Devices = append(c.Devices, d)
	}
	return c, nil
}

// randomMAC is a random locally administered unicast address.
func randomMAC() net.HardwareAddr {
	mac := make(net.HardwareAddr, 6)
	rand.Read(mac)
	mac[0] = mac[0]&^1 | 2
	return mac
}
