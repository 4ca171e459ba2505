package agent

import (
	"os"
	"path/filepath"
	"reflect"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

func num(v int64) *int64 { return &v }

func devRule(typ string, major, minor int64) specs.LinuxDeviceCgroup {
	return specs.LinuxDeviceCgroup{Allow: true, Type: typ, Major: num(major), Minor: num(minor), Access: "rwm"}
}

func blockRule(major, minor int64) specs.LinuxDeviceCgroup { return devRule("b", major, minor) }
func charRule(major, minor int64) specs.LinuxDeviceCgroup  { return devRule("c", major, minor) }

// Several devices in one batch, two of them swapping numbers between host
// and guest: each entry and each rule gets its own disk's guest numbers,
// none is rewritten twice; other devices and rules are left alone.
func TestRewriteDevicesBatch(t *testing.T) {
	l := &specs.Linux{
		Devices: []specs.LinuxDevice{
			{Path: "/dev/xvda", Type: "b", Major: 7, Minor: 0},
			{Path: "/dev/fuse", Type: "c", Major: 10, Minor: 229},
			{Path: "/dev/data", Type: "b", Major: 254, Minor: 16},
			{Path: "/dev/third", Type: "b", Major: 8, Minor: 0},
		},
		Resources: &specs.LinuxResources{Devices: []specs.LinuxDeviceCgroup{
			{Allow: false, Access: "rwm"},
			blockRule(7, 0),
			{Allow: true, Type: "c", Major: num(10), Minor: num(229), Access: "rwm"},
			blockRule(254, 16),
			blockRule(8, 0),
			blockRule(9, 9), // no device of the spec: left alone
		}},
	}
	// Host 7:0 is the guest's 254:16, and host 254:16 the guest's 7:0.
	changes := []deviceChange{{0, devNum{254, 16}, ""}, {2, devNum{7, 0}, ""}, {3, devNum{254, 32}, ""}}
	if err := rewriteDevices(l, changes); err != nil {
		t.Fatal(err)
	}
	want := []specs.LinuxDevice{
		{Path: "/dev/xvda", Type: "b", Major: 254, Minor: 16},
		{Path: "/dev/fuse", Type: "c", Major: 10, Minor: 229},
		{Path: "/dev/data", Type: "b", Major: 7, Minor: 0},
		{Path: "/dev/third", Type: "b", Major: 254, Minor: 32},
	}
	if !reflect.DeepEqual(l.Devices, want) {
		t.Errorf("devices %+v, want %+v", l.Devices, want)
	}
	wantRules := []specs.LinuxDeviceCgroup{
		{Allow: false, Access: "rwm"},
		blockRule(254, 16),
		{Allow: true, Type: "c", Major: num(10), Minor: num(229), Access: "rwm"},
		blockRule(7, 0),
		blockRule(254, 32),
		blockRule(9, 9),
	}
	if !reflect.DeepEqual(l.Resources.Devices, wantRules) {
		t.Errorf("rules %+v, want %+v", l.Resources.Devices, wantRules)
	}
}

// A bad change leaves the whole spec as it was.
func TestRewriteDevicesAllOrNothing(t *testing.T) {
	for name, changes := range map[string][]deviceChange{
		"index out of range":      {{0, devNum{254, 0}, ""}, {5, devNum{254, 16}, ""}},
		"index twice":             {{0, devNum{254, 0}, ""}, {0, devNum{254, 16}, ""}},
		"fifo":                    {{0, devNum{254, 0}, ""}, {2, devNum{254, 16}, ""}},
		"final path outside /dev": {{0, devNum{254, 0}, "/etc/passwd"}},
		"final path unclean":      {{0, devNum{254, 0}, "/dev/../etc"}},
		"two at one path":         {{0, devNum{254, 0}, "/dev/fuse"}},
		"negative index":          {{-1, devNum{254, 0}, ""}},
	} {
		t.Run(name, func(t *testing.T) {
			l := &specs.Linux{
				Devices:   []specs.LinuxDevice{{Path: "/dev/a", Type: "b", Major: 7, Minor: 0}, {Path: "/dev/fuse", Type: "c", Major: 10, Minor: 229}, {Path: "/dev/p", Type: "p"}},
				Resources: &specs.LinuxResources{Devices: []specs.LinuxDeviceCgroup{blockRule(7, 0)}},
			}
			before := &specs.Linux{Devices: append([]specs.LinuxDevice(nil), l.Devices...), Resources: &specs.LinuxResources{Devices: append([]specs.LinuxDeviceCgroup(nil), l.Resources.Devices...)}}
			if err := rewriteDevices(l, changes); err == nil {
				t.Fatal("no error")
			}
			if !reflect.DeepEqual(l, before) {
				t.Errorf("spec changed on error: %+v", l)
			}
		})
	}
}

func TestDiskNumbers(t *testing.T) {
	dir := t.TempDir()
	for content, ok := range map[string]bool{"254:16\n": true, "254": false, "a:b": false, "-1:2": false} {
		p := filepath.Join(dir, "dev")
		os.WriteFile(p, []byte(content), 0o644)
		n, err := diskNumbers(p)
		if (err == nil) != ok || ok && n != (devNum{254, 16}) {
			t.Errorf("diskNumbers(%q) = %v, %v", content, n, err)
		}
	}
}

// VFIO groups reach the container at their final path, the guest's own
// /dev/vfio/<group>: two groups whose numbers swap between host and
// guest, beside a block device whose host numbers equal a group node's
// (types keep them apart); the rules follow each device, /dev/vfio/vfio
// (the container node, not passed) is left alone.
func TestRewriteDevicesVFIOFinalPaths(t *testing.T) {
	l := &specs.Linux{
		Devices: []specs.LinuxDevice{
			{Path: "/dev/vfio/vfio", Type: "c", Major: 10, Minor: 196},
			{Path: "/dev/vfio/12", Type: "c", Major: 243, Minor: 0},
			{Path: "/dev/vfio/3", Type: "c", Major: 243, Minor: 1},
			{Path: "/dev/xvdb", Type: "b", Major: 243, Minor: 0},
		},
		Resources: &specs.LinuxResources{Devices: []specs.LinuxDeviceCgroup{
			{Allow: false, Access: "rwm"},
			charRule(10, 196),
			charRule(243, 0),
			charRule(243, 1),
			blockRule(243, 0),
		}},
	}
	// Host group 12 is the guest's group 3 (node 241:1), host group 3 the
	// guest's 12 (241:0); the disk is the guest's 254:16.
	changes := []deviceChange{
		{1, devNum{241, 1}, "/dev/vfio/3"},
		{2, devNum{241, 0}, "/dev/vfio/12"},
		{3, devNum{254, 16}, ""},
	}
	if err := rewriteDevices(l, changes); err != nil {
		t.Fatal(err)
	}
	want := []specs.LinuxDevice{
		{Path: "/dev/vfio/vfio", Type: "c", Major: 10, Minor: 196},
		{Path: "/dev/vfio/3", Type: "c", Major: 241, Minor: 1},
		{Path: "/dev/vfio/12", Type: "c", Major: 241, Minor: 0},
		{Path: "/dev/xvdb", Type: "b", Major: 254, Minor: 16},
	}
	if !reflect.DeepEqual(l.Devices, want) {
		t.Errorf("devices %+v, want %+v", l.Devices, want)
	}
	wantRules := []specs.LinuxDeviceCgroup{
		{Allow: false, Access: "rwm"},
		charRule(10, 196),
		charRule(241, 1),
		charRule(241, 0),
		blockRule(254, 16),
	}
	if !reflect.DeepEqual(l.Resources.Devices, wantRules) {
		t.Errorf("rules %+v, want %+v", l.Resources.Devices, wantRules)
	}
}

// The guest's group of a passed PCI device comes from the guest's sysfs,
// every part checked.
func TestVFIOGroup(t *testing.T) {
	sys := t.TempDir()
	mk := func(bdf, group, dev string) {
		t.Helper()
		d := filepath.Join(sys, "bus", "pci", "devices", bdf)
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink("../../../../kernel/iommu_groups/"+group, filepath.Join(d, "iommu_group")); err != nil {
			t.Fatal(err)
		}
		if dev != "" {
			c := filepath.Join(sys, "class", "vfio", group)
			if err := os.MkdirAll(c, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(c, "dev"), []byte(dev), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	mk("0000:01:00.0", "3", "241:1\n")
	mk("0000:02:00.0", "4", "")              // not bound to vfio-pci in the guest
	mk("0000:03:00.0", "noiommu-5", "241:2") // not a group number
	if path, n, err := vfioGroup(sys, "0000:01:00.0"); err != nil || path != "/dev/vfio/3" || n != (devNum{241, 1}) {
		t.Errorf("vfioGroup = %q, %v, %v", path, n, err)
	}
	for _, bdf := range []string{"0000:02:00.0", "0000:03:00.0", "0000:09:00.0", "../../../etc"} {
		if path, _, err := vfioGroup(sys, bdf); err == nil {
			t.Errorf("vfioGroup(%s) = %q, want an error", bdf, path)
		}
	}
}
