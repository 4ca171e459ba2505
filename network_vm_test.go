package cocoon_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cocoon-runtime/cocoon"
	"github.com/cocoon-runtime/cocoon/internal/testutil"
)

// netnsPair makes two network namespaces joined by a veth pair, as CNI's
// bridge plugin leaves a pod's (an eth0 with an address, an MTU and a
// default route): pod (10.231.0.2/24 and fd00:cc::2/64, MAC podMAC, MTU
// 1400, a permanent neighbour 10.231.0.9) and peer (10.231.0.1/24 and
// fd00:cc::1/64, the pod's gateways). Both are removed at the test's end.
func netnsPair(t *testing.T) (pod, peer string) {
	t.Helper()
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("no ip command")
	}
	tag := fmt.Sprintf("cc%d", os.Getpid()%100000)
	pod, peer = tag+"-pod", tag+"-peer"
	for _, ns := range []string{pod, peer} {
		run(t, "ip", "netns", "add", ns)
		t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
		run(t, "ip", "-n", ns, "link", "set", "lo", "up")
	}
	run(t, "ip", "link", "add", "eth0", "netns", pod, "type", "veth", "peer", "name", "peer0", "netns", peer)
	run(t, "ip", "-n", pod, "link", "set", "eth0", "address", podMAC, "mtu", "1400", "up")
	run(t, "ip", "-n", pod, "addr", "add", "10.231.0.2/24", "dev", "eth0")
	run(t, "ip", "-n", pod, "route", "add", "default", "via", "10.231.0.1")
	run(t, "ip", "-n", pod, "addr", "add", "fd00:cc::2/64", "dev", "eth0", "nodad")
	run(t, "ip", "-n", pod, "-6", "route", "add", "default", "via", "fd00:cc::1")
	// A static neighbour entry, as a CNI plugin or an operator may add.
	run(t, "ip", "-n", pod, "neigh", "add", "10.231.0.9", "lladdr", "02:cc:00:00:00:09", "dev", "eth0", "nud", "permanent")
	run(t, "ip", "-n", peer, "link", "set", "peer0", "mtu", "1400", "up")
	run(t, "ip", "-n", peer, "addr", "add", "10.231.0.1/24", "dev", "peer0")
	run(t, "ip", "-n", peer, "addr", "add", "fd00:cc::1/64", "dev", "peer0", "nodad")
	return pod, peer
}

// runNetSandbox runs a sandbox whose container sleeps, in the pod netns
// of a fresh netnsPair, with slots hotplug slots; it is deleted at the
// test's end.
func runNetSandbox(t *testing.T, slots int) (rt *cocoon.Runtime, sb *cocoon.Sandbox, pod, peer string) {
	t.Helper()
	rt, env := newRuntime(t)
	pod, peer = netnsPair(t)
	id := testutil.UniqueID(t)
	cfg := sandboxConfig(env, id, bundle(t, "sleep", "600"))
	cfg.NetNS = filepath.Join("/var/run/netns", pod)
	cfg.VM.HotplugSlots = slots
	sb, err := rt.RunSandbox(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	cleanup(t, rt, id)
	return rt, sb, pod, peer
}

const podMAC = "02:cc:00:00:00:02"

func run(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// tcpExchange has a server in netns ns, on port, and the container of sb
// connect to it at addr: each sends the other a line, and each must get
// the other's.
func tcpExchange(t *testing.T, sb *cocoon.Sandbox, id, ns, addr, port string) {
	t.Helper()
	got := filepath.Join(t.TempDir(), "got")
	srv := exec.Command("ip", "netns", "exec", ns, "sh", "-c", "echo from-peer | timeout 30 busybox nc -l -p "+port+" > "+got)
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	out, st := execIn(t, sb, id, "sh", "-c", "echo from-container | nc -w 10 "+addr+" "+port)
	if err := srv.Wait(); err != nil {
		t.Errorf("server in %s: %v", ns, err)
	}
	if data, _ := os.ReadFile(got); st.Code != 0 || strings.TrimSpace(out) != "from-peer" || strings.TrimSpace(string(data)) != "from-container" {
		t.Errorf("TCP with %s:%s: exit %d, container got %q, server got %q", addr, port, st.Code, out, data)
	}
}

// cocoonLeftovers counts what Cocoon makes in a pod netns: taps, ingress
// qdiscs and tc filters.
func cocoonLeftovers(t *testing.T, ns string) (taps, qdiscs, filters int) {
	t.Helper()
	taps = strings.Count(run(t, "ip", "-n", ns, "-o", "link", "show"), "cctap")
	qdiscs = strings.Count(run(t, "tc", "-n", ns, "qdisc", "show"), "qdisc ingress")
	filters = strings.Count(run(t, "tc", "-n", ns, "filter", "show", "dev", "eth0", "ingress"), "mirred")
	return
}

func TestNetworkVeth(t *testing.T) {
	ctx := context.Background()
	start := time.Now()
	_, sb, pod, peer := runNetSandbox(t, 0)
	id := sb.ID()
	defer sb.Release()
	t.Logf("sandbox with network running in %v", time.Since(start).Round(time.Millisecond))
	if taps, qdiscs, filters := cocoonLeftovers(t, pod); taps != 1 || qdiscs != 2 || filters != 1 {
		t.Errorf("while running: %d taps, %d ingress qdiscs, %d filters on eth0; want 1, 2, 1", taps, qdiscs, filters)
	}

	out, st := execIn(t, sb, id, "ip", "addr", "show", "eth0")
	t.Logf("guest: ip addr show eth0:\n%s", out)
	for _, want := range []string{"10.231.0.2/24", "fd00:cc::2/64", podMAC, "mtu 1400", "UP"} {
		if st.Code != 0 || !strings.Contains(out, want) {
			t.Errorf("container's eth0 lacks %q (exit %d):\n%s", want, st.Code, out)
		}
	}
	out, _ = execIn(t, sb, id, "ip", "route")
	t.Logf("guest: ip route:\n%s", out)
	if !strings.Contains(out, "default via 10.231.0.1 dev eth0") {
		t.Errorf("container has no default route via the gateway:\n%s", out)
	}
	out, _ = execIn(t, sb, id, "ip", "-6", "route")
	if !strings.Contains(out, "default via fd00:cc::1 dev eth0") {
		t.Errorf("container has no IPv6 default route via the gateway:\n%s", out)
	}
	out, _ = execIn(t, sb, id, "ip", "neigh", "show", "dev", "eth0")
	if !regexp.MustCompile(`(?m)^10\.231\.0\.9 lladdr 02:cc:00:00:00:09 .*PERMANENT`).MatchString(out) {
		t.Errorf("container lacks the pod's permanent neighbour:\n%s", out)
	}

	// TCP both ways with a server in the peer netns.
	tcpExchange(t, sb, id, peer, "10.231.0.1", "5001")

	// Throughput each way: the peer's server counts what it receives, or
	// sends; busybox nc -e gives it the connection as stdin and stdout.
	const mib = 64
	for _, dir := range []struct {
		name, server, client string
	}{
		{"container -> peer", "wc -c", fmt.Sprintf("dd if=/dev/zero bs=64k count=%d 2>/dev/null | nc 10.231.0.1 5002", mib*16)},
		{"peer -> container", fmt.Sprintf("dd if=/dev/zero bs=64k count=%d", mib*16), "nc 10.231.0.1 5002 | wc -c"},
	} {
		srv := exec.Command("ip", "netns", "exec", peer, "timeout", "60", "busybox", "nc", "-l", "-p", "5002", "-e", "busybox", "sh", "-c", dir.server+" 2>/dev/null")
		if err := srv.Start(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(300 * time.Millisecond)
		start := time.Now()
		out, st := execIn(t, sb, id, "sh", "-c", dir.client)
		el := time.Since(start)
		srv.Wait()
		if st.Code != 0 || strings.TrimSpace(out) != fmt.Sprint(mib<<20) {
			t.Errorf("TCP %s: exit %d, %d bytes arrived (%q), want %d", dir.name, st.Code, len(out), out, mib<<20)
			continue
		}
		t.Logf("TCP %s: %d MiB in %v: %.0f MB/s (one exec's overhead included)", dir.name, mib, el.Round(time.Millisecond), float64(mib<<20)/el.Seconds()/1e6)
	}
	// busybox nc moves 1 KiB a write (one TCP segment each); wget reads a
	// file from the peer's httpd in larger pieces.
	www := t.TempDir()
	run(t, "dd", "if=/dev/zero", "of="+filepath.Join(www, "big"), "bs=1M", fmt.Sprint("count=", mib))
	httpd := exec.Command("ip", "netns", "exec", peer, "busybox", "httpd", "-f", "-p", "10.231.0.1:8000", "-h", www)
	if err := httpd.Start(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	start = time.Now()
	out, st = execIn(t, sb, id, "sh", "-c", "wget -q -O - http://10.231.0.1:8000/big | wc -c")
	el := time.Since(start)
	httpd.Process.Kill()
	httpd.Wait()
	if st.Code != 0 || strings.TrimSpace(out) != fmt.Sprint(mib<<20) {
		t.Errorf("wget from the peer: exit %d: %q", st.Code, out)
	} else {
		t.Logf("TCP peer -> container (busybox httpd, wget): %d MiB in %v: %.0f MB/s", mib, el.Round(time.Millisecond), float64(mib<<20)/el.Seconds()/1e6)
	}
	// IPv6: the container fetches a file from the peer's httpd.
	httpd6 := exec.Command("ip", "netns", "exec", peer, "busybox", "httpd", "-f", "-p", "[fd00:cc::1]:8001", "-h", www)
	if err := httpd6.Start(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	out, st = execIn(t, sb, id, "sh", "-c", "wget -q -O - 'http://[fd00:cc::1]:8001/big' | wc -c")
	httpd6.Process.Kill()
	httpd6.Wait()
	if st.Code != 0 || strings.TrimSpace(out) != fmt.Sprint(mib<<20) {
		t.Errorf("wget over IPv6 from the peer: exit %d: %q", st.Code, out)
	}
	snmp, _ := execIn(t, sb, id, "grep", "Tcp:", "/proc/net/snmp")
	t.Logf("guest TCP counters:\n%s", snmp)

	if err := sb.Delete(ctx); err != nil {
		t.Fatal(err)
	}
	if taps, qdiscs, filters := cocoonLeftovers(t, pod); taps+qdiscs+filters != 0 {
		t.Errorf("after delete: %d taps, %d ingress qdiscs, %d filters left", taps, qdiscs, filters)
	}
	// The pod's own interface is the caller's and stays.
	if out := run(t, "ip", "-n", pod, "addr", "show", "eth0"); !strings.Contains(out, "10.231.0.2/24") {
		t.Errorf("pod's eth0 changed after delete:\n%s", out)
	}
}

func TestNetworkBadNetNS(t *testing.T) {
	rt, env := newRuntime(t)
	ctx := context.Background()
	id := testutil.UniqueID(t)
	cfg := sandboxConfig(env, id, bundle(t, "true"))
	cfg.NetNS = "/var/run/netns/cocoon-no-such-netns"
	_, err := rt.CreateSandbox(ctx, cfg)
	if err == nil {
		rt.DeleteSandbox(ctx, id)
		t.Fatal("sandbox created in a network namespace that does not exist")
	}
	t.Logf("error: %v", err)
	if !strings.Contains(err.Error(), "open network namespace /var/run/netns/cocoon-no-such-netns") || !strings.Contains(err.Error(), "no such file") {
		t.Errorf("error does not name the netns and why: %v", err)
	}
	if _, err := rt.FetchSandbox(ctx, id); err == nil {
		t.Error("the failed sandbox left a record")
	}
	if ents, _ := os.ReadDir(filepath.Join(env.StateDir, "sandboxes", id)); len(ents) > 0 {
		t.Errorf("the failed sandbox left files: %v", ents)
	}
}

// After QEMU is killed, its taps are gone with it; Delete removes the
// qdiscs and filters on the veth that remain.
func TestNetworkVMKilled(t *testing.T) {
	ctx := context.Background()
	rt, sb, pod, peer := runNetSandbox(t, 0)
	id := sb.ID()
	// A VM without hotplug slots cannot take a second interface: the
	// error says so and nothing of the attempt stays.
	secondNetwork(t, pod, peer)
	if _, err := sb.AddInterface(ctx, "net1"); err == nil || !strings.Contains(err.Error(), "hotplug slots") {
		t.Errorf("hot-add without hotplug slots: %v", err)
	}
	if taps, qdiscs, _ := cocoonLeftovers(t, pod); taps != 1 || qdiscs != 2 {
		t.Errorf("after a failed hot-add: %d taps, %d ingress qdiscs; want 1, 2", taps, qdiscs)
	}
	pids := sb.Status(ctx).HypervisorPids
	sb.Release()
	if len(pids) == 0 {
		t.Fatal("no hypervisor pid")
	}
	if err := syscall.Kill(pids[0], syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for syscall.Kill(pids[0], 0) == nil && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	taps, qdiscs, filters := cocoonLeftovers(t, pod)
	t.Logf("after SIGKILL of QEMU: %d taps, %d ingress qdiscs, %d filters", taps, qdiscs, filters)
	if err := rt.DeleteSandbox(ctx, id); err != nil {
		t.Fatal(err)
	}
	if taps, qdiscs, filters := cocoonLeftovers(t, pod); taps+qdiscs+filters != 0 {
		t.Errorf("after delete: %d taps, %d ingress qdiscs, %d filters left", taps, qdiscs, filters)
	}
}
