package main

import (
	"fmt"
	"os"
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
