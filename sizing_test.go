package cocoon_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/cocoon-runtime/cocoon"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

func TestSizeVM(t *testing.T) {
	base := cocoon.VMConfig{VCPUs: 1, MemoryMiB: 256, MachineType: "q35"}
	lim := cocoon.SizeLimits{MaxVCPUs: 4, MaxMemoryMiB: 4096}
	for _, c := range []struct {
		name      string
		res       cocoon.Resources
		cpus, mem uint32
	}{
		{"no limits", cocoon.Resources{}, 1, 256},
		{"unlimited", cocoon.Resources{CPUQuota: -1, CPUPeriod: 100000, MemoryBytes: -1}, 1, 256},
		{"2 CPUs, 1 GiB", cocoon.Resources{CPUQuota: 200000, CPUPeriod: 100000, MemoryBytes: 1 << 30}, 3, 1280},
		{"half a CPU, 100 MiB", cocoon.Resources{CPUQuota: 50000, CPUPeriod: 100000, MemoryBytes: 100 << 20}, 2, 384},
		{"a byte over a block", cocoon.Resources{MemoryBytes: 128<<20 + 1}, 1, 512},
		{"CPUs capped", cocoon.Resources{CPUQuota: 1600000, CPUPeriod: 100000}, 4, 256},
	} {
		got, err := cocoon.SizeVM(base, c.res, lim)
		if err != nil || got.VCPUs != c.cpus || got.MemoryMiB != c.mem || got.MachineType != "q35" {
			t.Errorf("%s: %d vCPUs, %d MiB, %v; want %d, %d", c.name, got.VCPUs, got.MemoryMiB, err, c.cpus, c.mem)
		}
	}
	for _, c := range []struct {
		name string
		res  cocoon.Resources
		lim  cocoon.SizeLimits
		says string
	}{
		{"more memory than allowed", cocoon.Resources{MemoryBytes: 4 << 30}, lim, "more than 4096 MiB"},
		{"negative quota", cocoon.Resources{CPUQuota: -5, CPUPeriod: 100000}, lim, "negative"},
		{"period 0", cocoon.Resources{CPUQuota: 100000}, lim, "without a period"},
		{"period too long", cocoon.Resources{CPUQuota: 100000, CPUPeriod: 10000000}, lim, "outside"},
		{"absurd quota", cocoon.Resources{CPUQuota: 1 << 40, CPUPeriod: 100000}, lim, "more than 1024 CPUs"},
		{"negative memory", cocoon.Resources{MemoryBytes: -4096}, lim, "negative"},
		{"absurd memory", cocoon.Resources{MemoryBytes: 1 << 62}, lim, "absurd"},
		{"base above the most", cocoon.Resources{}, cocoon.SizeLimits{MaxMemoryMiB: 128}, "base memory"},
	} {
		got, err := cocoon.SizeVM(base, c.res, c.lim)
		if !errors.Is(err, cocoon.ErrInvalidConfig) || !strings.Contains(err.Error(), c.says) {
			t.Errorf("%s: %v; want ErrInvalidConfig saying %q", c.name, err, c.says)
		}
		if tooBig := c.name == "more memory than allowed" || c.name == "base above the most"; tooBig != errors.Is(err, cocoon.ErrTooBig) {
			t.Errorf("%s: %v; ErrTooBig %v, want %v", c.name, err, !tooBig, tooBig)
		}
		if got.VCPUs != base.VCPUs || got.MemoryMiB != base.MemoryMiB {
			t.Errorf("%s: returned %+v, want the base unchanged", c.name, got)
		}
	}
	// The host's own limits by default.
	if got, err := cocoon.SizeVM(base, cocoon.Resources{MemoryBytes: 1 << 30}, cocoon.SizeLimits{}); err != nil || got.MemoryMiB != 1280 {
		t.Errorf("host limits: %+v, %v", got, err)
	}
}

func TestResourcesOf(t *testing.T) {
	q, p, m := int64(150000), uint64(100000), int64(512<<20)
	got := cocoon.ResourcesOf(&specs.Spec{Linux: &specs.Linux{Resources: &specs.LinuxResources{CPU: &specs.LinuxCPU{Quota: &q, Period: &p}, Memory: &specs.LinuxMemory{Limit: &m}}}})
	if got != (cocoon.Resources{CPUQuota: q, CPUPeriod: p, MemoryBytes: m}) {
		t.Errorf("ResourcesOf = %+v", got)
	}
	for _, spec := range []*specs.Spec{nil, {}, {Linux: &specs.Linux{}}} {
		if got := cocoon.ResourcesOf(spec); got != (cocoon.Resources{}) {
			t.Errorf("ResourcesOf(%+v) = %+v", spec, got)
		}
	}
}
