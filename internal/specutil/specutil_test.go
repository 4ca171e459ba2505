package specutil

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

func TestDefaultIsRunnable(t *testing.T) {
	s := Default("echo", "hi")
	if s.Process.Args[1] != "hi" || s.Root.Path != "rootfs" || s.Process.Cwd != "/" || !s.Process.NoNewPrivileges {
		t.Fatalf("spec %+v", s.Process)
	}
	for _, ns := range s.Linux.Namespaces {
		if ns.Type == "network" {
			t.Error("default spec has a network namespace: containers share the VM's network")
		}
	}
}

func TestBusyboxRootfs(t *testing.T) {
	bb, err := exec.LookPath("busybox")
	if err != nil {
		t.Skip("no busybox")
	}
	dir := t.TempDir()
	if err := BusyboxRootfs(dir, bb); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"bin/sh", "bin/cat", "bin/ps", "etc/passwd"} {
		if _, err := os.Stat(filepath.Join(dir, p)); err != nil {
			t.Errorf("rootfs lacks %s: %v", p, err)
		}
	}
	out, err := exec.Command(filepath.Join(dir, "bin", "echo"), "ok").Output()
	if err != nil || string(out) != "ok\n" {
		t.Fatalf("rootfs echo = %q, %v", out, err)
	}
}

func TestNetNSPath(t *testing.T) {
	for _, tc := range []struct {
		spec *specs.Spec
		want string
	}{
		{nil, ""},
		{&specs.Spec{}, ""},
		{&specs.Spec{Linux: &specs.Linux{Namespaces: []specs.LinuxNamespace{{Type: specs.PIDNamespace}, {Type: specs.NetworkNamespace}}}}, ""},
		{&specs.Spec{Linux: &specs.Linux{Namespaces: []specs.LinuxNamespace{{Type: specs.PIDNamespace}, {Type: specs.NetworkNamespace, Path: "/var/run/netns/cni-1"}}}}, "/var/run/netns/cni-1"},
	} {
		if got := NetNSPath(tc.spec); got != tc.want {
			t.Errorf("NetNSPath(%+v) = %q, want %q", tc.spec, got, tc.want)
		}
	}
}
