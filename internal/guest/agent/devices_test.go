package agent

import (
	"os"
	"path/filepath"
	"reflect"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

func num(v int64) *int64 { return &v }

func blockRule(major, minor int64) specs.LinuxDeviceCgroup {
	return specs.LinuxDeviceCgroup{Allow: true, Type: "b", Major: num(major), Minor: num(minor), Access: "rwm"}
}

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
	changes := []deviceChange{{0, devNum{254, 16}}, {2, devNum{7, 0}}, {3, devNum{254, 32}}}
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
		"index out of range": {{0, devNum{254, 0}}, {5, devNum{254, 16}}},
		"index twice":        {{0, devNum{254, 0}}, {0, devNum{254, 16}}},
		"char device":        {{0, devNum{254, 0}}, {1, devNum{254, 16}}},
		"negative index":     {{-1, devNum{254, 0}}},
	} {
		t.Run(name, func(t *testing.T) {
			l := &specs.Linux{
				Devices:   []specs.LinuxDevice{{Path: "/dev/a", Type: "b", Major: 7, Minor: 0}, {Path: "/dev/fuse", Type: "c", Major: 10, Minor: 229}},
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
