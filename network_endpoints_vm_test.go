package cocoon_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cocoon-runtime/cocoon/internal/testutil"
)

// podWithLink makes a pod netns whose eth0 (10.231.0.2/24, default route
// via 10.231.0.1) is a kind link — a veth to the peer netns, or a macvlan
// or ipvlan on par0, a veth whose other end, peer0, is in the peer netns
// as a host parent's wire would be — and a peer netns with 10.231.0.1 on
// peer0. Both are removed at the test's end.
func podWithLink(t *testing.T, kind string) (pod, peer string) {
	t.Helper()
	if kind == "veth" {
		return netnsPair(t)
	}
	tag := fmt.Sprintf("cc%s%d", kind[:2], os.Getpid()%100000)
	pod, peer = tag+"-pod", tag+"-peer"
	for _, ns := range []string{pod, peer} {
		run(t, "ip", "netns", "add", ns)
		t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
		run(t, "ip", "-n", ns, "link", "set", "lo", "up")
	}
	run(t, "ip", "-n", peer, "link", "add", "par0", "type", "veth", "peer", "name", "peer0")
	run(t, "ip", "-n", peer, "link", "set", "par0", "up")
	run(t, "ip", "-n", peer, "link", "set", "peer0", "up")
	run(t, "ip", "-n", peer, "addr", "add", "10.231.0.1/24", "dev", "peer0")
	mode := "bridge"
	if kind == "ipvlan" {
		mode = "l2"
	}
	if out, err := exec.Command("ip", "-n", peer, "link", "add", "link", "par0", "name", "eth0", "type", kind, "mode", mode).CombinedOutput(); err != nil {
		// Not a runner's choice but the kernel's: this host's has no
		// ipvlan.
		t.Skipf("this kernel cannot make a %s: %v: %s", kind, err, out)
	}
	run(t, "ip", "-n", peer, "link", "set", "eth0", "netns", pod)
	run(t, "ip", "-n", pod, "link", "set", "eth0", "up")
	run(t, "ip", "-n", pod, "addr", "add", "10.231.0.2/24", "dev", "eth0")
	run(t, "ip", "-n", pod, "route", "add", "default", "via", "10.231.0.1")
	return pod, peer
}

// Each endpoint kind this host can make attaches at boot, passes TCP both
// ways with the peer, and leaves nothing after delete.
func TestNetworkEndpoints(t *testing.T) {
	for _, tc := range []struct{ kind, model string }{
		{"veth", "macvtap"},
		{"macvlan", ""},
		{"ipvlan", ""},
	} {
		t.Run(tc.kind+"-"+tc.model, func(t *testing.T) {
			ctx := context.Background()
			rt, env := newRuntime(t)
			pod, peer := podWithLink(t, tc.kind)
			id := testutil.UniqueID(t)
			cfg := sandboxConfig(env, id, bundle(t, "sleep", "600"))
			cfg.NetNS = filepath.Join("/var/run/netns", pod)
			cfg.NetworkModel = tc.model
			sb, err := rt.RunSandbox(ctx, cfg)
			if err != nil {
				t.Fatal(err)
			}
			cleanup(t, rt, id)
			defer sb.Release()
			links := run(t, "ip", "-n", pod, "-d", "-o", "link", "show")
			t.Logf("pod netns links:\n%s", links)
			out, st := execIn(t, sb, id, "ip", "addr", "show", "eth0")
			if st.Code != 0 || !strings.Contains(out, "10.231.0.2/24") || !strings.Contains(out, "UP") {
				t.Errorf("guest's eth0:\n%s", out)
			}
			tcpExchange(t, sb, id, peer, "10.231.0.1", "5004")
			if err := rt.DeleteSandbox(ctx, id); err != nil {
				t.Fatal(err)
			}
			left := run(t, "ip", "-n", pod, "-o", "link", "show")
			qd := run(t, "tc", "-n", pod, "qdisc", "show")
			if strings.Contains(left, "cctap") || strings.Contains(qd, "ingress") {
				t.Errorf("after delete:\n%s\n%s", left, qd)
			}
			if !strings.Contains(left, "eth0") {
				t.Errorf("the pod's eth0 went with the sandbox:\n%s", left)
			}
		})
	}
}

// A VM of two vCPUs gets a multi-queue NIC: a multi-queue tap, a NIC
// offering the guest two queue pairs, and traffic over it.
func TestNetworkMultiQueue(t *testing.T) {
	ctx := context.Background()
	rt, env := newRuntime(t)
	pod, peer := netnsPair(t)
	id := testutil.UniqueID(t)
	cfg := sandboxConfig(env, id, bundle(t, "sleep", "600"))
	cfg.NetNS = filepath.Join("/var/run/netns", pod)
	cfg.VM.VCPUs = 2
	sb, err := rt.RunSandbox(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	cleanup(t, rt, id)
	defer sb.Release()
	if out := run(t, "ip", "-n", pod, "-d", "link", "show", "cctap0"); !strings.Contains(out, "multi_queue") {
		t.Errorf("the tap is not multi-queue:\n%s", out)
	}
	// The NIC offers the guest several queue pairs (VIRTIO_NET_F_MQ, bit
	// 22 of the features). How many the guest uses is one a CPU it has
	// online, and this guest kernel brings up one (see issue 16).
	out, _ := execIn(t, sb, id, "cat", "/sys/class/net/eth0/device/features")
	if f := strings.TrimSpace(out); len(f) <= 22 || f[22] != '1' {
		t.Errorf("the guest's NIC does not offer multi-queue: features %q", f)
	}
	queues, _ := execIn(t, sb, id, "ls", "/sys/class/net/eth0/queues")
	cpus, _ := execIn(t, sb, id, "nproc")
	t.Logf("guest: %s CPU(s) online, queues %s", strings.TrimSpace(cpus), strings.Join(strings.Fields(queues), " "))
	tcpExchange(t, sb, id, peer, "10.231.0.1", "5005")
}
