package integration

import (
	"context"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// execResult runs cmd in container cid and returns its exit code and
// combined output, failing the test only when the exec itself fails.
func (p *criPod) execResult(t *testing.T, ctx context.Context, cid string, cmd ...string) (int32, string) {
	t.Helper()
	r, err := p.rs.ExecSync(ctx, &runtimeapi.ExecSyncRequest{ContainerId: cid, Cmd: cmd, Timeout: 60})
	if err != nil {
		t.Fatalf("ExecSync %v: %v", cmd, err)
	}
	return r.ExitCode, strings.TrimSpace(string(r.Stdout) + string(r.Stderr))
}

// A privileged container, and one with only NET_ADMIN added, get a guest
// kernel that does what they ask, as a host kernel with modules would
// under runc: bridges, veth pairs, vxlan and tap devices, nftables and
// iptables, loop devices and xfs, the modules loaded on demand in the VM.
// A privileged container sees the VM's devices (/dev/net/tun,
// /dev/loop-control), not the host's.
func TestCRIPrivilegedModules(t *testing.T) {
	e := needContainerd(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	rs := criAPI(t, ctx, e)

	cfg := e.podConfig(t, "pod-modules")
	cfg.Linux.SecurityContext.Privileged = true
	pod, err := runPodConfig(t, ctx, e, rs, "cocoon", cfg)
	if err != nil {
		t.Fatalf("RunPodSandbox: %v\n%s", err, e.ctrd.LogTail(40))
	}
	priv := pod.createIn(t, ctx, &runtimeapi.ContainerConfig{
		Metadata: &runtimeapi.ContainerMetadata{Name: "privileged"},
		Command:  []string{"sleep", "600"},
		Linux: &runtimeapi.LinuxContainerConfig{SecurityContext: &runtimeapi.LinuxContainerSecurityContext{
			Privileged:       true,
			NamespaceOptions: &runtimeapi.NamespaceOption{Network: runtimeapi.NamespaceMode_POD},
		}},
	})
	var failed []string
	for _, cmd := range [][]string{
		{"brctl", "addbr", "br0"},
		{"ip", "link", "add", "v0", "type", "veth", "peer", "name", "v1"},
		{"ip", "link", "add", "vx0", "type", "vxlan", "id", "42", "dstport", "4789"},
		{"test", "-c", "/dev/net/tun"},
		{"tunctl", "-t", "tap0"},
		{"test", "-c", "/dev/loop-control"},
		{"sh", "-c", "grep -w xfs /proc/filesystems || { mkdir -p /tmp/x && mount -t xfs /dev/null /tmp/x 2>&1; grep -w xfs /proc/filesystems; }"},
		{"sh", "-c", "mkdir -p /tmp/o && mount -t tmpfs t /tmp/o && mkdir /tmp/o/l /tmp/o/u /tmp/o/w /tmp/o/m && mount -t overlay o -o lowerdir=/tmp/o/l,upperdir=/tmp/o/u,workdir=/tmp/o/w /tmp/o/m"},
	} {
		if code, out := pod.execResult(t, ctx, priv, cmd...); code != 0 {
			failed = append(failed, strings.Join(cmd, " ")+": exit "+strconv.Itoa(int(code))+": "+out)
		}
	}
	if code, out := pod.execResult(t, ctx, priv, "ip", "-o", "link", "show", "br0"); code != 0 || !strings.Contains(out, "br0") {
		failed = append(failed, "br0 not listed: "+out)
	}

	// The VM's devices, not the host's: the host's root disk is not there
	// (the VM has no disk; its root is the host's shared directory).
	if src, err := exec.Command("findmnt", "-n", "-o", "SOURCE", "/").Output(); err == nil && strings.HasPrefix(string(src), "/dev/") {
		dev := strings.TrimSpace(string(src))
		if code, out := pod.execResult(t, ctx, priv, "ls", dev); code == 0 {
			t.Errorf("the privileged container has the host's root device %s: %s", dev, out)
		}
	}
	_, devs := pod.execResult(t, ctx, priv, "sh", "-c", "ls /dev | tr '\\n' ' '")
	t.Logf("/dev of the privileged container: %s", devs)
	_, mods := pod.execResult(t, ctx, priv, "sh", "-c", "cut -d' ' -f1 /proc/modules | sort | tr '\\n' ' '")
	t.Logf("modules loaded in the VM: %s", mods)

	netAdmin := pod.createIn(t, ctx, &runtimeapi.ContainerConfig{
		Metadata: &runtimeapi.ContainerMetadata{Name: "net-admin"},
		Command:  []string{"sleep", "600"},
		Linux: &runtimeapi.LinuxContainerConfig{SecurityContext: &runtimeapi.LinuxContainerSecurityContext{
			Capabilities:     &runtimeapi.Capability{AddCapabilities: []string{"NET_ADMIN"}},
			NamespaceOptions: &runtimeapi.NamespaceOption{Network: runtimeapi.NamespaceMode_POD},
		}},
	})
	if code, out := pod.execResult(t, ctx, netAdmin, "ip", "link", "add", "br1", "type", "bridge"); code != 0 {
		failed = append(failed, "NET_ADMIN: ip link add br1 type bridge: exit "+strconv.Itoa(int(code))+": "+out)
	}
	for _, f := range failed {
		t.Error(f)
	}
}
