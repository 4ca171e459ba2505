package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/cocoon-runtime/cocoon/internal/testutil"
)

// TestRunNetCNI: `cocoon run --net cni:NAME` runs the container on that CNI
// network, in a netns of Cocoon's own, and removes both when it ends.
func TestRunNetCNI(t *testing.T) {
	c := needVM(t)
	dir := t.TempDir()
	name := fmt.Sprintf("cccli%d", os.Getpid()%100000)
	testutil.CNIBridge(t, dir, name, "10.234.12", "")
	b := c.bundle(t, "sh", "-c", "ip -o -4 addr show eth0; ip route")
	c.deleteAtEnd(t, "netcni")
	r := c.run(t, nil, "run", "--boot-timeout", "2m", "--net", "cni:"+name, "--cni-conf-dir", dir, "--bundle", b, "netcni")
	if r.code != 0 || !strings.Contains(r.stdout, "inet 10.234.12.") || !strings.Contains(r.stdout, "default via 10.234.12.1 dev eth0") {
		t.Fatalf("container on the CNI network: %v", r)
	}
	c.assertGone(t, "netcni")
	if _, err := os.Stat("/run/netns/cocoon-netcni"); !os.IsNotExist(err) {
		t.Errorf("netns left after the run: %v", err)
	}
	if l := testutil.CNILeases(dir, name); len(l) != 0 {
		t.Errorf("CNI leases left after the run: %v", l)
	}

	// --net none: the guest's loopback only, whatever the network.
	r = c.run(t, nil, "run", "--boot-timeout", "2m", "--net", "none", "--bundle", b, "netnone")
	if strings.Contains(r.stdout, "inet ") || !strings.Contains(r.stderr, "can't find device 'eth0'") {
		t.Errorf("--net none: the container has an eth0: %v", r)
	}
	r = c.run(t, nil, "run", "--net", "cni:no-such-net", "--cni-conf-dir", dir, "--bundle", b, "netbad")
	if r.code == 0 || !strings.Contains(r.stderr, `"no-such-net"`) {
		t.Errorf("--net cni:no-such-net: %v", r)
	}
	c.assertGone(t, "netbad")
}

// TestNetworkCommands: `cocoon network add|ls|update|routes|rm` on a
// running sandbox, with a second veth put in its netns after it started.
func TestNetworkCommands(t *testing.T) {
	c := needVM(t)
	dir := t.TempDir()
	name := fmt.Sprintf("cchot%d", os.Getpid()%100000)
	testutil.CNIBridge(t, dir, name, "10.234.13", "")
	id := "nethot"
	c.deleteAtEnd(t, id)
	c.ok(t, "run", "-d", "--boot-timeout", "2m", "--hotplug-slots", "1", "--net", "cni:"+name, "--cni-conf-dir", dir,
		"--bundle", c.bundle(t, "sleep", "600"), id)
	netns := "cocoon-" + id
	peer := name + "-peer"
	sh(t, "ip", "netns", "add", peer)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", peer).Run() })
	sh(t, "ip", "link", "add", "net1", "netns", netns, "type", "veth", "peer", "name", "peer1", "netns", peer)
	sh(t, "ip", "-n", netns, "link", "set", "net1", "address", "02:cc:00:00:13:02", "up")
	sh(t, "ip", "-n", netns, "addr", "add", "10.235.13.2/24", "dev", "net1")

	var added []struct {
		Name      string   `json:"name"`
		MAC       string   `json:"mac"`
		Addresses []string `json:"addresses"`
	}
	decode(t, c.ok(t, "--json", "network", "add", id, "net1"), &added)
	if len(added) != 1 || added[0].Name != "net1" || added[0].MAC != "02:cc:00:00:13:02" || !slices.Contains(added[0].Addresses, "10.235.13.2/24") {
		t.Errorf("network add: %+v", added)
	}
	type listed struct {
		Name  string `json:"name"`
		Stats *struct {
			RxPackets uint64 `json:"rx_packets"`
		} `json:"stats"`
	}
	var ls []listed
	decode(t, c.ok(t, "--json", "network", "ls", id), &ls)
	if len(ls) != 2 || ls[0].Stats == nil || !slices.ContainsFunc(ls, func(i listed) bool { return i.Name == "net1" }) {
		t.Errorf("network ls: %+v", ls)
	}
	if out := c.ok(t, "network", "ls", id); !strings.Contains(out, "net1") || !strings.Contains(out, "10.235.13.2/24") {
		t.Errorf("network ls (table):\n%s", out)
	}

	r := c.run(t, strings.NewReader(`[{"destination": "10.236.0.0/16", "gateway": "10.235.13.1", "device": "net1"}, {"gateway": "10.234.13.1", "device": "eth0"}]`),
		"--json", "network", "routes", id, "--set", "-")
	if r.code != 0 || !strings.Contains(r.stdout, `"destination": "10.236.0.0/16"`) {
		t.Errorf("network routes --set: %v", r)
	}
	if out := c.ok(t, "network", "routes", id); !strings.Contains(out, "10.236.0.0/16") || !strings.Contains(out, "10.235.13.1") {
		t.Errorf("network routes:\n%s", out)
	}
	if out := c.ok(t, "network", "update", id, "net1", "--address", "10.235.13.7/24"); !strings.Contains(out, "10.235.13.7/24") || strings.Contains(out, "10.235.13.2/") {
		t.Errorf("network update:\n%s", out)
	}
	r = c.run(t, nil, "network", "add", id, "net1")
	assertOneLineError(t, r, "attached already")
	c.ok(t, "network", "rm", id, "net1")
	if out := c.ok(t, "network", "ls", id); strings.Contains(out, "net1") {
		t.Errorf("net1 listed after rm:\n%s", out)
	}
	r = c.run(t, nil, "network", "rm", id, "net1")
	assertOneLineError(t, r, "not found")
	c.ok(t, "delete", "-f", id)
	if _, err := os.Stat("/run/netns/" + netns); !os.IsNotExist(err) {
		t.Errorf("netns left after delete: %v", err)
	}
}

func sh(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

func decode(t *testing.T, s string, v any) {
	t.Helper()
	if err := json.Unmarshal([]byte(s), v); err != nil {
		t.Fatalf("decode %q: %v", s, err)
	}
}
