package shim

import (
	"errors"
	"testing"

	"github.com/cocoon-runtime/cocoon"
	ptypes "github.com/containerd/containerd/api/types"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// Only a whole file system image or device, mounted as is, goes to the VM
// as a disk; everything else is mounted by the host.
func TestBlockRootfs(t *testing.T) {
	for _, c := range []struct {
		name     string
		mounts   []*ptypes.Mount
		path     string
		readOnly bool
		ok       bool
	}{
		{"blockfile rw", []*ptypes.Mount{{Type: "ext4", Source: "/s/snapshots/5", Options: []string{"loop", "rw"}}}, "/s/snapshots/5", false, true},
		{"blockfile view", []*ptypes.Mount{{Type: "ext4", Source: "/s/snapshots/6", Options: []string{"loop", "ro"}}}, "/s/snapshots/6", true, true},
		{"devmapper", []*ptypes.Mount{{Type: "xfs", Source: "/dev/mapper/thin-7"}}, "/dev/mapper/thin-7", false, true},
		{"erofs layer", []*ptypes.Mount{{Type: "erofs", Source: "/s/layer.erofs", Options: []string{"ro", "loop"}}}, "/s/layer.erofs", true, true},
		{"overlay", []*ptypes.Mount{{Type: "overlay", Source: "overlay", Options: []string{"lowerdir=/a", "upperdir=/b", "workdir=/c"}}}, "", false, false},
		{"bind", []*ptypes.Mount{{Type: "bind", Source: "/s/dir", Options: []string{"rbind", "rw"}}}, "", false, false},
		{"two mounts", []*ptypes.Mount{{Type: "ext4", Source: "/a"}, {Type: "ext4", Source: "/b"}}, "", false, false},
		{"relative source", []*ptypes.Mount{{Type: "ext4", Source: "snap", Options: []string{"loop"}}}, "", false, false},
		{"unknown option", []*ptypes.Mount{{Type: "ext4", Source: "/s/5", Options: []string{"loop", "data=journal"}}}, "", false, false},
		{"target set", []*ptypes.Mount{{Type: "ext4", Source: "/s/5", Target: "/usr"}}, "", false, false},
		{"none", nil, "", false, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			path, ro, ok := blockRootfs(c.mounts)
			if path != c.path || ro != c.readOnly || ok != c.ok {
				t.Errorf("blockRootfs = %q, %v, %v; want %q, %v, %v", path, ro, ok, c.path, c.readOnly, c.ok)
			}
		})
	}
}

// A pod's resources come from the CRI's sandbox annotations, else from
// the sandbox task's own limits; a malformed annotation is refused.
func TestPodResources(t *testing.T) {
	res, err := podResources(&specs.Spec{Annotations: map[string]string{
		annSandboxCPUQuota: "200000", annSandboxCPUPeriod: "100000", annSandboxMemory: "1073741824",
	}})
	if err != nil || res != (cocoon.Resources{CPUQuota: 200000, CPUPeriod: 100000, MemoryBytes: 1 << 30}) {
		t.Errorf("from annotations: %+v, %v", res, err)
	}
	lim := int64(64 << 20)
	res, err = podResources(&specs.Spec{Linux: &specs.Linux{Resources: &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: &lim}}}})
	if err != nil || res != (cocoon.Resources{MemoryBytes: lim}) {
		t.Errorf("from the spec: %+v, %v", res, err)
	}
	if res, err := podResources(&specs.Spec{}); err != nil || res != (cocoon.Resources{}) {
		t.Errorf("none: %+v, %v", res, err)
	}
	for _, ann := range []map[string]string{
		{annSandboxMemory: "lots"},
		{annSandboxCPUQuota: "100000", annSandboxCPUPeriod: "-1"},
		{annSandboxCPUQuota: "1e9"},
	} {
		if _, err := podResources(&specs.Spec{Annotations: ann}); !errors.Is(err, cocoon.ErrInvalidConfig) {
			t.Errorf("%v: %v, want ErrInvalidConfig", ann, err)
		}
	}
}
