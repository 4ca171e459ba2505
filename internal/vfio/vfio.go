// Package vfio checks, on the host, that PCI devices can be passed to a VM
// through VFIO, and finds them from what a container spec names: a VFIO
// group's node (/dev/vfio/<group>, what CDI specs and device plugins
// inject) or a PCI address.
//
// A device can be passed only whole with its IOMMU group: every device of
// the group must be bound to vfio-pci (PCI bridges excepted, which stay
// with the host), and the host must have an IOMMU. Everything is read from
// sysfs below a root that tests point at a fake tree.
package vfio

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/cocoon-runtime/cocoon/agent/protocol"
)

// Errors callers branch on.
var (
	// ErrNoIOMMU: the host has no IOMMU (or it is off: intel_iommu=on,
	// amd_iommu=on), so no device can be passed.
	ErrNoIOMMU = errors.New("the host has no IOMMU")
	// ErrNotBound: a device is not bound to vfio-pci.
	ErrNotBound = errors.New("not bound to vfio-pci")
	// ErrGroupNotViable: another device of the IOMMU group is still used
	// by a host driver.
	ErrGroupNotViable = errors.New("IOMMU group not viable")
)

// Driver is the host driver a passed device must be bound to.
const Driver = "vfio-pci"

// maxGroupDevices bounds how many devices of one group are read.
const maxGroupDevices = 64

// Device is a PCI device ready for a VM.
type Device struct {
	BDF string // its PCI address, 0000:01:00.0
	// Group is its IOMMU group.
	Group int
	// Vendor, Product and Class as sysfs shows them (0x10de, 0x1eb8,
	// 0x030200).
	Vendor, Product, Class string
	// CDev is its VFIO device node for iommufd (/dev/vfio/devices/vfioN)
	// where the kernel has one, else empty: the group node is used.
	CDev string
}

// Host is the host's sysfs and /dev, "/sys" and "/dev" unless a test
// points them at a fake tree.
type Host struct{ Sys, Dev string }

// System is the real host.
func System() Host { return Host{Sys: "/sys", Dev: "/dev"} }

// IOMMU checks that the host has an IOMMU with groups.
func (h Host) IOMMU() error {
	groups, err := os.ReadDir(filepath.Join(h.Sys, "kernel", "iommu_groups"))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("vfio: %w", err)
	}
	if len(groups) == 0 {
		return ErrNoIOMMU
	}
	return nil
}

// GroupOfNode returns the IOMMU group a VFIO group node path names
// (/dev/vfio/12 → 12), or false for any other path (/dev/vfio/vfio, the
// container node, included).
func GroupOfNode(path string) (int, bool) {
	dir, name := filepath.Split(filepath.Clean(path))
	if dir != "/dev/vfio/" {
		return 0, false
	}
	n, err := strconv.Atoi(name)
	if err != nil || n < 0 || strconv.Itoa(n) != name {
		return 0, false
	}
	return n, true
}

// Group returns the devices of IOMMU group n that a VM gets (every one
// but the PCI bridges), in address order, after checking that the host
// has an IOMMU, that its node exists, and that the whole group is bound
// to vfio-pci.
func (h Host) Group(n int) ([]Device, error) {
	if err := h.IOMMU(); err != nil {
		return nil, err
	}
	if n < 0 {
		return nil, fmt.Errorf("vfio: group %d: invalid", n)
	}
	if _, err := os.Stat(filepath.Join(h.Dev, "vfio", strconv.Itoa(n))); err != nil {
		return nil, fmt.Errorf("vfio group %d: %w (is its device bound to %s?)", n, err, Driver)
	}
	entries, err := os.ReadDir(filepath.Join(h.Sys, "kernel", "iommu_groups", strconv.Itoa(n), "devices"))
	if err != nil {
		return nil, fmt.Errorf("vfio group %d: %w", n, err)
	}
	if len(entries) == 0 {
		return nil, fmt.Errorf("vfio group %d: no devices", n)
	}
	if len(entries) > maxGroupDevices {
		return nil, fmt.Errorf("vfio group %d: %d devices, more than %d", n, len(entries), maxGroupDevices)
	}
	var out []Device
	var busy []string
	for _, e := range entries {
		bdf := e.Name()
		if !protocol.ValidPCIAddress(bdf) {
			return nil, fmt.Errorf("vfio group %d: unexpected entry %q", n, bdf)
		}
		d, driver, err := h.read(bdf)
		if err != nil {
			return nil, fmt.Errorf("vfio group %d: %w", n, err)
		}
		if d.Group != n {
			return nil, fmt.Errorf("vfio group %d: %s is in group %d", n, bdf, d.Group)
		}
		if bridge(d.Class) {
			continue
		}
		if driver != Driver {
			busy = append(busy, fmt.Sprintf("%s (%s)", bdf, orNone(driver)))
			continue
		}
		out = append(out, d)
	}
	if len(busy) > 0 {
		return nil, fmt.Errorf("vfio group %d: %w: %s not bound to %s", n, ErrGroupNotViable, strings.Join(busy, ", "), Driver)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("vfio group %d: only bridges, nothing to pass", n)
	}
	slices.SortFunc(out, func(a, b Device) int { return strings.Compare(a.BDF, b.BDF) })
	return out, nil
}

// Inspect returns the PCI device at bdf after the same checks as Group,
// for its whole group.
func (h Host) Inspect(bdf string) (Device, error) {
	if !protocol.ValidPCIAddress(bdf) {
		return Device{}, fmt.Errorf("vfio: %q is not a PCI address (0000:01:00.0)", bdf)
	}
	if err := h.IOMMU(); err != nil {
		return Device{}, err
	}
	d, driver, err := h.read(bdf)
	if err != nil {
		return Device{}, fmt.Errorf("vfio: %w", err)
	}
	if driver != Driver {
		return Device{}, fmt.Errorf("vfio: %s: %w (bound to %s)", bdf, ErrNotBound, orNone(driver))
	}
	group, err := h.Group(d.Group)
	if err != nil {
		return Device{}, err
	}
	for _, g := range group {
		if g.BDF == bdf {
			return g, nil
		}
	}
	return Device{}, fmt.Errorf("vfio: %s: not in its group %d", bdf, d.Group)
}

// read reads device bdf from sysfs, and the name of its driver ("" when
// none is bound).
func (h Host) read(bdf string) (Device, string, error) {
	dir := filepath.Join(h.Sys, "bus", "pci", "devices", bdf)
	if _, err := os.Stat(dir); err != nil {
		return Device{}, "", fmt.Errorf("PCI device %s: %w", bdf, err)
	}
	d := Device{BDF: bdf}
	group, err := os.Readlink(filepath.Join(dir, "iommu_group"))
	if err != nil {
		return Device{}, "", fmt.Errorf("PCI device %s has no IOMMU group: %w", bdf, err)
	}
	if d.Group, err = strconv.Atoi(filepath.Base(group)); err != nil {
		return Device{}, "", fmt.Errorf("PCI device %s: IOMMU group %q", bdf, group)
	}
	for _, f := range []struct {
		name string
		v    *string
	}{{"vendor", &d.Vendor}, {"device", &d.Product}, {"class", &d.Class}} {
		b, err := os.ReadFile(filepath.Join(dir, f.name))
		if err != nil {
			return Device{}, "", fmt.Errorf("PCI device %s: %w", bdf, err)
		}
		if len(b) > 64 {
			return Device{}, "", fmt.Errorf("PCI device %s: %s too long", bdf, f.name)
		}
		*f.v = strings.TrimSpace(string(b))
	}
	var driver string
	if l, err := os.Readlink(filepath.Join(dir, "driver")); err == nil {
		driver = filepath.Base(l)
	} else if !errors.Is(err, os.ErrNotExist) {
		return Device{}, "", fmt.Errorf("PCI device %s: %w", bdf, err)
	}
	// iommufd: the kernel gives a VFIO-bound device a node of its own.
	if cdevs, err := os.ReadDir(filepath.Join(dir, "vfio-dev")); err == nil && len(cdevs) == 1 {
		if name := cdevs[0].Name(); strings.HasPrefix(name, "vfio") {
			if _, err := os.Stat(filepath.Join(h.Dev, "iommu")); err == nil {
				d.CDev = filepath.Join("/dev/vfio/devices", name)
			}
		}
	}
	return d, driver, nil
}

// bridge reports whether class (0xCCSSPP) is a PCI-to-PCI bridge.
func bridge(class string) bool { return strings.HasPrefix(class, "0x0604") }

func orNone(driver string) string {
	if driver == "" {
		return "no driver"
	}
	return driver
}
