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
// it has in the guest.
type deviceChange struct {
	index int
	guest devNum
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
		if !validSerial.MatchString(m.Serial) {
			return fmt.Errorf("devices: bad serial %q", m.Serial)
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
// l.Devices gets its guest numbers, and every device cgroup rule naming
// the host numbers of a changed block device names the guest's instead.
// Everything is checked and computed from the spec as the host sent it
// before anything is written, so the spec is never half-updated, and two
// devices whose numbers swap between host and guest cannot clobber each
// other (a rule rewritten for one is never taken for the other's). The
// device's path in the container stays what the spec says.
func rewriteDevices(l *specs.Linux, changes []deviceChange) error {
	hostToGuest := map[devNum]devNum{}
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
		if d.Type != "b" {
			return fmt.Errorf("device %d (%s): type %q is not a block device", c.index, d.Path, d.Type)
		}
		host := devNum{d.Major, d.Minor}
		if g, ok := hostToGuest[host]; ok && g != c.guest {
			return fmt.Errorf("device %d (%s): host device %d:%d stands for two disks", c.index, d.Path, d.Major, d.Minor)
		}
		hostToGuest[host] = c.guest
	}
	devices := append([]specs.LinuxDevice(nil), l.Devices...)
	for _, c := range changes {
		devices[c.index].Major, devices[c.index].Minor = c.guest.major, c.guest.minor
	}
	var rules []specs.LinuxDeviceCgroup
	if l.Resources != nil {
		rules = append([]specs.LinuxDeviceCgroup(nil), l.Resources.Devices...)
		for i, r := range rules {
			if r.Type != "b" || r.Major == nil || r.Minor == nil {
				continue
			}
			if g, ok := hostToGuest[devNum{*r.Major, *r.Minor}]; ok {
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
