package container

import (
	"maps"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

func TestVMSysctls(t *testing.T) {
	l := &specs.Linux{Sysctl: map[string]string{"net.ipv4.ip_unprivileged_port_start": "0", "kernel.shm_rmid_forced": "1"}}
	got := vmSysctls(l)
	if want := map[string]string{"net.ipv4.ip_unprivileged_port_start": "0"}; !maps.Equal(got, want) {
		t.Errorf("VM sysctls %v, want %v", got, want)
	}
	if want := map[string]string{"kernel.shm_rmid_forced": "1"}; !maps.Equal(l.Sysctl, want) {
		t.Errorf("container keeps %v, want %v", l.Sysctl, want)
	}
	// A container with a network namespace of its own keeps them.
	l = &specs.Linux{
		Namespaces: []specs.LinuxNamespace{{Type: specs.NetworkNamespace}},
		Sysctl:     map[string]string{"net.core.somaxconn": "1024"},
	}
	if got := vmSysctls(l); got != nil || len(l.Sysctl) != 1 {
		t.Errorf("with its own netns: moved %v, kept %v", got, l.Sysctl)
	}
}

func TestApplySysctlsRejectsPaths(t *testing.T) {
	for _, k := range []string{"net/../../etc/x", "net..ipv4", "../x", "NET.ipv4.x", "net"} {
		if err := applySysctls(map[string]string{k: "1"}); err == nil {
			t.Errorf("sysctl name %q accepted", k)
		}
	}
}
