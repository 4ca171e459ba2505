package vfio

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
)

// fakeDev is one PCI device of a fake sysfs.
type fakeDev struct {
	bdf, driver, class string
	group              int
	cdev               string // its vfio-dev/ entry, if any
}

// fakeHost builds a sysfs and /dev with devs; groups get a /dev/vfio node
// unless listed in noNode.
func fakeHost(t *testing.T, devs []fakeDev, noNode ...int) Host {
	t.Helper()
	root := t.TempDir()
	h := Host{Sys: filepath.Join(root, "sys"), Dev: filepath.Join(root, "dev")}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	for _, d := range devs {
		g := strconv.Itoa(d.group)
		gdir := filepath.Join(h.Sys, "kernel", "iommu_groups", g, "devices")
		must(os.MkdirAll(gdir, 0o755))
		must(os.Symlink("../../../../bus/pci/devices/"+d.bdf, filepath.Join(gdir, d.bdf)))
		dir := filepath.Join(h.Sys, "bus", "pci", "devices", d.bdf)
		must(os.MkdirAll(dir, 0o755))
		must(os.Symlink("../../../../kernel/iommu_groups/"+g, filepath.Join(dir, "iommu_group")))
		for f, v := range map[string]string{"vendor": "0x10de", "device": "0x1eb8", "class": d.class} {
			must(os.WriteFile(filepath.Join(dir, f), []byte(v+"\n"), 0o644))
		}
		if d.driver != "" {
			must(os.Symlink("../../../bus/pci/drivers/"+d.driver, filepath.Join(dir, "driver")))
		}
		if d.cdev != "" {
			must(os.MkdirAll(filepath.Join(dir, "vfio-dev", d.cdev), 0o755))
		}
		must(os.MkdirAll(filepath.Join(h.Dev, "vfio"), 0o755))
		node := true
		for _, n := range noNode {
			node = node && n != d.group
		}
		if node {
			must(os.WriteFile(filepath.Join(h.Dev, "vfio", g), nil, 0o600))
		}
	}
	return h
}

const (
	gpu         = "0x030200"
	audio       = "0x040300"
	bridgeClass = "0x060400"
)

// A GPU and its audio function share a group with a bridge: both are
// passed, the bridge stays; the group's node and an IOMMU are required.
func TestGroup(t *testing.T) {
	h := fakeHost(t, []fakeDev{
		{bdf: "0000:01:00.1", driver: Driver, class: audio, group: 12},
		{bdf: "0000:01:00.0", driver: Driver, class: gpu, group: 12},
		{bdf: "0000:00:01.0", driver: "pcieport", class: bridgeClass, group: 12},
		{bdf: "0000:02:00.0", driver: Driver, class: gpu, group: 13},
	})
	got, err := h.Group(12)
	if err != nil {
		t.Fatal(err)
	}
	var bdfs []string
	for _, d := range got {
		bdfs = append(bdfs, d.BDF)
		if d.Group != 12 || d.Vendor != "0x10de" || d.CDev != "" {
			t.Errorf("device %+v", d)
		}
	}
	if !reflect.DeepEqual(bdfs, []string{"0000:01:00.0", "0000:01:00.1"}) {
		t.Errorf("group 12 passes %v, want the GPU and its audio function", bdfs)
	}
	d, err := h.Inspect("0000:02:00.0")
	if err != nil || d.Group != 13 || d.Class != gpu {
		t.Errorf("Inspect: %+v, %v", d, err)
	}
	if _, err := h.Group(14); err == nil {
		t.Error("a group that does not exist")
	}
}

// Each host check fails with its own error, naming what is wrong.
func TestHostChecks(t *testing.T) {
	for _, c := range []struct {
		name   string
		devs   []fakeDev
		noNode []int
		call   func(Host) error
		is     error
		says   string
	}{
		{"no IOMMU", nil, nil, func(h Host) error { _, err := h.Group(1); return err }, ErrNoIOMMU, "no IOMMU"},
		{"no IOMMU inspect", nil, nil, func(h Host) error { _, err := h.Inspect("0000:01:00.0"); return err }, ErrNoIOMMU, "no IOMMU"},
		{"sibling on a host driver", []fakeDev{
			{bdf: "0000:01:00.0", driver: Driver, class: gpu, group: 3},
			{bdf: "0000:01:00.1", driver: "snd_hda_intel", class: audio, group: 3},
		}, nil, func(h Host) error { _, err := h.Inspect("0000:01:00.0"); return err }, ErrGroupNotViable, "0000:01:00.1 (snd_hda_intel)"},
		{"sibling without driver", []fakeDev{
			{bdf: "0000:01:00.0", driver: Driver, class: gpu, group: 3},
			{bdf: "0000:01:00.1", class: audio, group: 3},
		}, nil, func(h Host) error { _, err := h.Group(3); return err }, ErrGroupNotViable, "no driver"},
		{"device on its own driver", []fakeDev{
			{bdf: "0000:01:00.0", driver: "nvidia", class: gpu, group: 3},
		}, nil, func(h Host) error { _, err := h.Inspect("0000:01:00.0"); return err }, ErrNotBound, "bound to nvidia"},
		{"no group node", []fakeDev{
			{bdf: "0000:01:00.0", driver: Driver, class: gpu, group: 3},
		}, []int{3}, func(h Host) error { _, err := h.Group(3); return err }, os.ErrNotExist, "vfio group 3"},
		{"bridges only", []fakeDev{
			{bdf: "0000:00:01.0", driver: "pcieport", class: bridgeClass, group: 3},
		}, nil, func(h Host) error { _, err := h.Group(3); return err }, nil, "only bridges"},
		{"address escapes", []fakeDev{
			{bdf: "0000:01:00.0", driver: Driver, class: gpu, group: 3},
		}, nil, func(h Host) error { _, err := h.Inspect("../../../../etc"); return err }, nil, "not a PCI address"},
		{"missing device", []fakeDev{
			{bdf: "0000:01:00.0", driver: Driver, class: gpu, group: 3},
		}, nil, func(h Host) error { _, err := h.Inspect("0000:05:00.0"); return err }, os.ErrNotExist, "0000:05:00.0"},
	} {
		t.Run(c.name, func(t *testing.T) {
			err := c.call(fakeHost(t, c.devs, c.noNode...))
			if err == nil {
				t.Fatal("no error")
			}
			if c.is != nil && !errors.Is(err, c.is) {
				t.Errorf("%v, want %v", err, c.is)
			}
			if !strings.Contains(err.Error(), c.says) {
				t.Errorf("%q does not say %q", err, c.says)
			}
		})
	}
}

// With iommufd (a vfio-dev entry and /dev/iommu), a device has a node of
// its own.
func TestIOMMUFDNode(t *testing.T) {
	h := fakeHost(t, []fakeDev{{bdf: "0000:01:00.0", driver: Driver, class: gpu, group: 7, cdev: "vfio4"}})
	d, err := h.Inspect("0000:01:00.0")
	if err != nil || d.CDev != "" {
		t.Fatalf("without /dev/iommu: %+v, %v; want the group node only", d, err)
	}
	if err := os.WriteFile(filepath.Join(h.Dev, "iommu"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if d, err = h.Inspect("0000:01:00.0"); err != nil || d.CDev != "/dev/vfio/devices/vfio4" {
		t.Fatalf("with /dev/iommu: %+v, %v", d, err)
	}
}

func TestGroupOfNode(t *testing.T) {
	for path, want := range map[string]int{"/dev/vfio/12": 12, "/dev/vfio/0": 0, "/dev/vfio//7": 7} {
		if n, ok := GroupOfNode(path); !ok || n != want {
			t.Errorf("GroupOfNode(%q) = %d, %v; want %d", path, n, ok, want)
		}
	}
	for _, path := range []string{"/dev/vfio/vfio", "/dev/vfio/-1", "/dev/vfio/012", "/dev/vfio/devices/vfio0", "/dev/sda", "/dev/vfio/../sda", "vfio/1"} {
		if n, ok := GroupOfNode(path); ok {
			t.Errorf("GroupOfNode(%q) = %d, want none", path, n)
		}
	}
}
