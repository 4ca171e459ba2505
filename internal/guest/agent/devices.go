package agent

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/cocoon-runtime/cocoon/agent/protocol"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// devNum is a device's major and minor number.
type devNum struct{ major, minor int64 }

// deviceChange is one entry of the spec's linux.devices and the numbers
// it has in the guest, and its final path: where the node must be in the
// container when that differs from the spec's path ("" keeps it). A VFIO
// group must appear as the guest's own /dev/vfio/<group>, the number of
// its IOMMU group in the guest's sysfs, whatever the host's was.
type deviceChange struct {
	index int
	guest devNum
	path  string
}

// passDevices gives the spec's devices that the host attached as disks
// the guest's numbers: it finds each disk by serial, then rewrites the
// spec in one batch (see rewriteDevices).
func (a *Agent) passDevices(ctx context.Context, spec *specs.Spec, maps []*protocol.DeviceMapping) error {
	if len(maps) == 0 {
		return nil
	}
	if spec.Linux == nil {
		return fmt.Errorf("devices: the spec has no linux section")
	}
	changes := make([]deviceChange, 0, len(maps))
	for _, m := range maps {
		if !protocol.ValidDiskSerial(m.Serial) {
			return fmt.Errorf("devices: bad serial %q", m.Serial)
		}
		if int(m.Index) < len(spec.Linux.Devices) && spec.Linux.Devices[m.Index].Type != "b" {
			return fmt.Errorf("device %d: a disk for a %q device", m.Index, spec.Linux.Devices[m.Index].Type)
		}
		dev, err := a.blocks.find(ctx, m.Serial)
		if err != nil {
			return fmt.Errorf("device %d: %w", m.Index, err)
		}
		num, err := diskNumbers(filepath.Join(a.blocks.sysfs, filepath.Base(dev), "dev"))
		if err != nil {
			return fmt.Errorf("device %d: %w", m.Index, err)
		}
		changes = append(changes, deviceChange{index: int(m.Index), guest: num})
	}
	return rewriteDevices(spec.Linux, changes)
}

// diskNumbers reads a sysfs "dev" file ("MAJOR:MINOR").
func diskNumbers(path string) (devNum, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return devNum{}, err
	}
	maj, min, ok := strings.Cut(strings.TrimSpace(string(b)), ":")
	ma, err1 := strconv.ParseInt(maj, 10, 64)
	mi, err2 := strconv.ParseInt(min, 10, 64)
	if !ok || err1 != nil || err2 != nil || ma < 0 || mi < 0 {
		return devNum{}, fmt.Errorf("%s: not MAJOR:MINOR: %q", path, b)
	}
	return devNum{ma, mi}, nil
}

// rewriteDevices applies every change at once: each changed entry of
// l.Devices gets its guest numbers (and its final path), and every device
// cgroup rule naming the host numbers of a changed device (of its type)
// names the guest's instead. Everything is checked and computed from the
// spec as the host sent it before anything is written, so the spec is
// never half-updated, and two devices whose numbers swap between host and
// guest cannot clobber each other (a rule rewritten for one is never
// taken for the other's). Two entries may not end at one path.
func rewriteDevices(l *specs.Linux, changes []deviceChange) error {
	type key struct {
		typ string
		num devNum
	}
	hostToGuest := map[key]devNum{}
	seen := map[int]bool{}
	for _, c := range changes {
		if c.index < 0 || c.index >= len(l.Devices) {
			return fmt.Errorf("device %d: the spec has %d devices", c.index, len(l.Devices))
		}
		if seen[c.index] {
			return fmt.Errorf("device %d given twice", c.index)
		}
		seen[c.index] = true
		d := l.Devices[c.index]
		if d.Type != "b" && d.Type != "c" {
			return fmt.Errorf("device %d (%s): type %q is not a block or character device", c.index, d.Path, d.Type)
		}
		if c.path != "" && (!filepath.IsAbs(c.path) || filepath.Clean(c.path) != c.path || !strings.HasPrefix(c.path, "/dev/")) {
			return fmt.Errorf("device %d (%s): final path %q is not a clean path below /dev", c.index, d.Path, c.path)
		}
		host := key{d.Type, devNum{d.Major, d.Minor}}
		if g, ok := hostToGuest[host]; ok && g != c.guest {
			return fmt.Errorf("device %d (%s): host device %d:%d stands for two devices", c.index, d.Path, d.Major, d.Minor)
		}
		hostToGuest[host] = c.guest
	}
	devices := append([]specs.LinuxDevice(nil), l.Devices...)
	for _, c := range changes {
		devices[c.index].Major, devices[c.index].Minor = c.guest.major, c.guest.minor
		if c.path != "" {
			devices[c.index].Path = c.path
		}
	}
	paths := map[string]int{}
	for i, d := range devices {
		if j, ok := paths[d.Path]; ok {
			return fmt.Errorf("devices %d and %d would both be %s", j, i, d.Path)
		}
		paths[d.Path] = i
	}
	var rules []specs.LinuxDeviceCgroup
	if l.Resources != nil {
		rules = append([]specs.LinuxDeviceCgroup(nil), l.Resources.Devices...)
		for i, r := range rules {
			if r.Major == nil || r.Minor == nil {
				continue
			}
			if g, ok := hostToGuest[key{r.Type, devNum{*r.Major, *r.Minor}}]; ok {
				ma, mi := g.major, g.minor
				rules[i].Major, rules[i].Minor = &ma, &mi
			}
		}
	}
	l.Devices = devices
	if l.Resources != nil {
		l.Resources.Devices = rules
	}
	return nil
}

// vfioGroup finds, in the guest's sysfs (sys, "/sys"), the VFIO group of
// the PCI device at bdf that the host passed: its IOMMU group, the final
// path the container must see it at (/dev/vfio/<group>) and the numbers
// of the guest's group node. Everything read is checked: the guest's
// sysfs is the guest kernel's word, and a malformed entry is an error.
func vfioGroup(sys, bdf string) (path string, num devNum, err error) {
	if !protocol.ValidPCIAddress(bdf) {
		return "", devNum{}, fmt.Errorf("vfio: %q is not a PCI address", bdf)
	}
	link, err := os.Readlink(filepath.Join(sys, "bus", "pci", "devices", bdf, "iommu_group"))
	if err != nil {
		return "", devNum{}, fmt.Errorf("vfio device %s: no IOMMU group in the guest: %w", bdf, err)
	}
	group := filepath.Base(link)
	if n, err := strconv.Atoi(group); err != nil || n < 0 || strconv.Itoa(n) != group {
		return "", devNum{}, fmt.Errorf("vfio device %s: IOMMU group %q", bdf, group)
	}
	num, err = diskNumbers(filepath.Join(sys, "class", "vfio", group, "dev"))
	if err != nil {
		return "", devNum{}, fmt.Errorf("vfio device %s: group %s has no node (is it bound to vfio-pci in the guest?): %w", bdf, group, err)
	}
	return "/dev/vfio/" + group, num, nil
}
