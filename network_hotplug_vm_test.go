package cocoon_test

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cocoon-runtime/cocoon"
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
	rt, sb, pod, peer := runNetSandbox(t, 2)
	id := sb.ID()
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
	tcpExchange(t, sb, id, peer, "10.232.0.1", "5002")

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
	// The pod's counters come with any container's stats.
	stats, err := sb.StatsContainer(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if i := slices.IndexFunc(stats.Network, func(n cocoon.InterfaceStats) bool { return n.Name == "net1" }); i < 0 || stats.Network[i].RxBytes == 0 || len(stats.Network) != 2 {
		t.Errorf("container stats' network: %+v", stats.Network)
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

// A tap that another made in the pod netns is hot-plugged as it is: the
// guest gets its MAC and address, and frames pass both ways through it.
// The tap is the maker's and stays.
func TestNetworkHotplugTap(t *testing.T) {
	ctx := context.Background()
	rt, sb, pod, _ := runNetSandbox(t, 1)
	id := sb.ID()
	defer sb.Release()
	run(t, "ip", "-n", pod, "tuntap", "add", "dev", "tap0", "mode", "tap", "vnet_hdr")
	run(t, "ip", "-n", pod, "link", "set", "tap0", "address", "02:cc:00:00:05:02", "up")
	run(t, "ip", "-n", pod, "addr", "add", "10.232.5.2/24", "dev", "tap0")
	ifc, err := sb.AddInterface(ctx, "tap0")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("tap0 in the guest: %+v", ifc)
	if out, _ := execIn(t, sb, id, "ip", "addr", "show", "tap0"); !strings.Contains(out, "10.232.5.2/24") || !strings.Contains(out, "02:cc:00:00:05:02") {
		t.Errorf("guest's tap0:\n%s", out)
	}
	// Frames both ways. The tap's own MAC is the guest's, so the netns's
	// stack cannot talk to the guest over it (a bridge or switch on the
	// tap can): count frames instead. Host to guest: three gratuitous
	// ARPs out of the tap reach the guest's NIC.
	guestRx := func() uint64 {
		ifcs, err := sb.ListInterfaces(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, i := range ifcs {
			if i.Name == "tap0" && i.Stats != nil {
				return i.Stats.RxPackets
			}
		}
		t.Fatalf("guest lists no tap0: %+v", ifcs)
		return 0
	}
	before := guestRx()
	run(t, "ip", "netns", "exec", pod, "busybox", "arping", "-U", "-c", "3", "-w", "5", "-I", "tap0", "10.232.5.2")
	if got := guestRx(); got < before+3 {
		t.Errorf("guest's tap0 received %d frames of the 3 sent into the tap", got-before)
	}
	// Guest to host: the guest's ARP requests for a neighbour come out of
	// the tap in the netns.
	hostRx := func() int {
		var n int
		fmt.Sscan(strings.TrimSpace(run(t, "ip", "netns", "exec", pod, "cat", "/sys/class/net/tap0/statistics/rx_packets")), &n)
		return n
	}
	hb := hostRx()
	execIn(t, sb, id, "nc", "-w", "2", "10.232.5.1", "80")
	if got := hostRx(); got <= hb {
		t.Errorf("no frame from the guest came out of tap0 (%d before, %d after)", hb, got)
	}
	if err := sb.RemoveInterface(ctx, "tap0"); err != nil {
		t.Fatal(err)
	}
	if err := rt.DeleteSandbox(ctx, id); err != nil {
		t.Fatal(err)
	}
	if out := run(t, "ip", "-n", pod, "link", "show", "tap0"); !strings.Contains(out, "tap0") {
		t.Errorf("the given tap went with the sandbox:\n%s", out)
	}
}
