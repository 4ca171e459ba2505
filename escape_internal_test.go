package cocoon

import (
	"errors"
	"strings"
	"testing"

	"github.com/cocoon-runtime/cocoon/internal/specutil"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// A mount destination or device path that climbs out of the container's
// root, or is not absolute, is refused with an error naming it, before
// anything is made.
func TestSpecPathsThatEscapeRefused(t *testing.T) {
	for _, c := range []struct {
		name  string
		edit  func(*specs.Spec)
		names string
	}{
		{"destination ../../etc", func(s *specs.Spec) {
			s.Mounts = append(s.Mounts, specs.Mount{Destination: "../../etc", Type: "bind", Source: "/tmp"})
		}, "../../etc"},
		{"destination climbing mid-way", func(s *specs.Spec) {
			s.Mounts = append(s.Mounts, specs.Mount{Destination: "/data/../../../etc", Type: "bind", Source: "/tmp"})
		}, "/data/../../../etc"},
		{"device ../", func(s *specs.Spec) {
			s.Linux.Devices = append(s.Linux.Devices, specs.LinuxDevice{Path: "/dev/../etc/shadow", Type: "b", Major: 7})
		}, "/dev/../etc/shadow"},
		{"device relative", func(s *specs.Spec) {
			s.Linux.Devices = append(s.Linux.Devices, specs.LinuxDevice{Path: "dev/xvdb", Type: "b", Major: 7})
		}, "dev/xvdb"},
	} {
		t.Run(c.name, func(t *testing.T) {
			spec := specutil.Default("true")
			c.edit(spec)
			err := checkSpec(spec)
			if !errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), c.names) {
				t.Errorf("checkSpec: %v; want ErrInvalidConfig naming %q", err, c.names)
			}
		})
	}
	spec := specutil.Default("true")
	spec.Mounts = append(spec.Mounts, specs.Mount{Destination: "/data/..x/y", Type: "bind", Source: "/tmp"})
	if err := checkSpec(spec); err != nil {
		t.Errorf("a name beginning with dots is not a climb: %v", err)
	}
}
