package cocoon_test

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cocoon-runtime/cocoon"
	"github.com/cocoon-runtime/cocoon/internal/testutil"
)

// secondNetwork adds to the pod netns a second veth, net1 (10.232.0.2/24,
// MAC net1MAC, a route to 10.240.0.0/16 via 10.232.0.1), as multus or a
// second CNI ADD would, its peer peer1 in the peer netns.
func secondNetwork(t *testing.T, pod, peer string) {
	t.Helper()
	run(t, "ip", "link", "add", "net1", "netns", pod, "type", "veth", "peer", "name", "peer1", "netns", peer)
	run(t, "ip", "-n", pod, "link", "set", "net1", "address", net1MAC, "mtu", "1300", "up")
	run(t, "ip", "-n", pod, "addr", "add", "10.232.0.2/24", "dev", "net1")
	run(t, "ip", "-n", pod, "route", "add", "10.240.0.0/16", "via", "10.232.0.1", "dev", "net1")
	run(t, "ip", "-n", peer, "link", "set", "peer1", "mtu", "1300", "up")
	run(t, "ip", "-n", peer, "addr", "add", "10.232.0.1/24", "dev", "peer1")
}

const net1MAC = "02:cc:00:00:01:02"

// A veth that appears in a running pod's netns is hot-plugged into the VM
// and usable; its counters are listed; routes and addresses change; it is
// unplugged again; nothing of it is left after.
func TestNetworkHotplug(t *testing.T) {
	ctx := context.Background()
	rt, env := newRuntime(t)
	pod, peer := netnsPair(t)
	id := testutil.UniqueID(t)
	cfg := sandboxConfig(env, id, bundle(t, "sleep", "600"))
	cfg.NetNS = filepath.Join("/var/run/netns", pod)
	cfg.VM.HotplugSlots = 2
	sb, err := rt.RunSandbox(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	cleanup(t, rt, id)
	defer sb.Release()
	secondNetwork(t, pod, peer)

	// Bad input first: nothing of it may stay.
	if _, err := sb.AddInterface(ctx, "nosuch0"); err == nil || !strings.Contains(err.Error(), "nosuch0") {
		t.Errorf("add of a missing interface: %v", err)
	}
	if _, err := sb.AddInterface(ctx, "eth0"); !errors.Is(err, cocoon.ErrExists) {
		t.Errorf("add of eth0 again: %v, want ErrExists", err)
	}
	if _, err := sb.AddInterface(ctx, "lo"); err == nil || !strings.Contains(err.Error(), "not a veth") {
		t.Errorf("add of lo: %v", err)
	}
	if err := sb.RemoveInterface(ctx, "eth0"); !errors.Is(err, cocoon.ErrState) {
		t.Errorf("remove of the boot interface: %v, want ErrState", err)
	}
	if taps, qdiscs, _ := cocoonLeftovers(t, pod); taps != 1 || qdiscs != 2 {
		t.Errorf("after failed adds: %d taps, %d ingress qdiscs; want 1, 2", taps, qdiscs)
	}

	start := time.Now()
	ifc, err := sb.AddInterface(ctx, "net1")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("net1 hot-plugged in %v: %+v", time.Since(start).Round(time.Millisecond), ifc)
	if ifc.Name != "net1" || ifc.MAC.String() != net1MAC || ifc.MTU != 1300 || !slices.Contains(ifc.Addresses, netip.MustParsePrefix("10.232.0.2/24")) {
		t.Errorf("added interface %+v", ifc)
	}
	if taps, qdiscs, _ := cocoonLeftovers(t, pod); taps != 2 || qdiscs != 4 {
		t.Errorf("with net1: %d taps, %d ingress qdiscs; want 2, 4", taps, qdiscs)
	}
	out, st := execIn(t, sb, id, "ip", "addr", "show", "net1")
	for _, want := range []string{"10.232.0.2/24", net1MAC, "mtu 1300", "UP"} {
		if st.Code != 0 || !strings.Contains(out, want) {
			t.Errorf("guest's net1 lacks %q (exit %d):\n%s", want, st.Code, out)
		}
	}
	if out, _ := execIn(t, sb, id, "ip", "route", "get", "10.240.0.1"); !strings.Contains(out, "via 10.232.0.1 dev net1") {
		t.Errorf("the netns's route of net1 is not in the guest:\n%s", out)
	}

	// TCP over net1 to the peer's 10.232.0.1.
	got := filepath.Join(t.TempDir(), "got")
	srv := exec.Command("ip", "netns", "exec", peer, "sh", "-c", "echo from-peer | timeout 30 busybox nc -l -p 5002 > "+got)
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	out, st = execIn(t, sb, id, "sh", "-c", "echo over-net1 | nc -w 10 10.232.0.1 5002")
	if err := srv.Wait(); err != nil {
		t.Errorf("peer server: %v", err)
	}
	if data, _ := os.ReadFile(got); st.Code != 0 || strings.TrimSpace(string(data)) != "over-net1" || !strings.Contains(out, "from-peer") {
		t.Errorf("TCP over net1: exit %d, container got %q, peer got %q", st.Code, out, data)
	}

	ifcs, err := sb.ListInterfaces(ctx)
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]cocoon.NetInterface{}
	for _, i := range ifcs {
		names[i.Name] = i
	}
	if n1, ok := names["net1"]; !ok || n1.Stats == nil || n1.Stats.RxPackets == 0 || n1.Stats.TxBytes == 0 {
		t.Errorf("listed interfaces lack net1 with its counters: %+v", ifcs)
	} else {
		t.Logf("net1 counters: %+v", *n1.Stats)
	}
	if _, ok := names["eth0"]; !ok || len(ifcs) != 2 {
		t.Errorf("listed interfaces: %+v, want eth0 and net1", ifcs)
	}

	// Routes: one more via eth0, and net1's extra route gone.
	routes, err := sb.ListRoutes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var keep []cocoon.NetRoute
	for _, r := range routes {
		if r.Destination != netip.MustParsePrefix("10.240.0.0/16") {
			keep = append(keep, r)
		}
	}
	if len(keep) != len(routes)-1 {
		t.Errorf("listed routes lack 10.240.0.0/16: %+v", routes)
	}
	added := cocoon.NetRoute{Destination: netip.MustParsePrefix("10.250.0.0/16"), Gateway: netip.MustParseAddr("10.231.0.1"), Device: "eth0"}
	now, err := sb.UpdateRoutes(ctx, append(keep, added))
	if err != nil {
		t.Fatal(err)
	}
	out, _ = execIn(t, sb, id, "ip", "route")
	t.Logf("guest routes after update:\n%s", out)
	if !strings.Contains(out, "10.250.0.0/16 via 10.231.0.1 dev eth0") || strings.Contains(out, "10.240.0.0/16") || !strings.Contains(out, "default via 10.231.0.1 dev eth0") {
		t.Errorf("guest routes after update:\n%s", out)
	}
	if !slices.ContainsFunc(now, func(r cocoon.NetRoute) bool { return r.Destination == added.Destination && r.Gateway == added.Gateway }) {
		t.Errorf("routes returned by UpdateRoutes lack the new one: %+v", now)
	}
	if _, err := sb.UpdateRoutes(ctx, []cocoon.NetRoute{{Destination: netip.MustParsePrefix("10.251.0.0/16"), Device: "eth9"}}); err == nil || !strings.Contains(err.Error(), "eth9") {
		t.Errorf("route on a missing device: %v", err)
	}
	if out2, _ := execIn(t, sb, id, "ip", "route"); out2 != out {
		t.Errorf("a refused route update changed the guest's routes:\n%s", out2)
	}

	// Addresses of net1 replaced.
	upd, err := sb.UpdateInterface(ctx, cocoon.NetInterface{Name: "net1", Addresses: []netip.Prefix{netip.MustParsePrefix("10.232.0.3/24")}})
	if err != nil {
		t.Fatal(err)
	}
	if out, _ := execIn(t, sb, id, "ip", "addr", "show", "net1"); !strings.Contains(out, "10.232.0.3/24") || strings.Contains(out, "10.232.0.2/") {
		t.Errorf("net1 after update (%+v):\n%s", upd, out)
	}

	start = time.Now()
	if err := sb.RemoveInterface(ctx, "net1"); err != nil {
		t.Fatal(err)
	}
	t.Logf("net1 unplugged in %v", time.Since(start).Round(time.Millisecond))
	if out, _ := execIn(t, sb, id, "ip", "link"); strings.Contains(out, "net1") || strings.Contains(out, net1MAC) {
		t.Errorf("guest still has net1:\n%s", out)
	}
	if taps, qdiscs, _ := cocoonLeftovers(t, pod); taps != 1 || qdiscs != 2 {
		t.Errorf("after remove: %d taps, %d ingress qdiscs; want 1, 2", taps, qdiscs)
	}
	if out := run(t, "tc", "-n", pod, "qdisc", "show", "dev", "net1"); strings.Contains(out, "ingress") {
		t.Errorf("net1 keeps its ingress qdisc:\n%s", out)
	}
	if err := sb.RemoveInterface(ctx, "net1"); !errors.Is(err, cocoon.ErrNotFound) {
		t.Errorf("second remove: %v, want ErrNotFound", err)
	}

	// Added again, then left for Delete to undo.
	if _, err := sb.AddInterface(ctx, "net1"); err != nil {
		t.Fatal(err)
	}
	if err := rt.DeleteSandbox(ctx, id); err != nil {
		t.Fatal(err)
	}
	if taps, qdiscs, _ := cocoonLeftovers(t, pod); taps+qdiscs != 0 {
		t.Errorf("after delete: %d taps, %d ingress qdiscs left", taps, qdiscs)
	}
	if out := run(t, "ip", "-n", pod, "addr", "show", "net1"); !strings.Contains(out, "10.232.0.2/24") {
		t.Errorf("the pod's net1 changed:\n%s", out)
	}
}
