package testutil

import (
	"fmt"
	"hash/fnv"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// CNIBridge writes into dir a CNI network named name: the bridge plugin
// with a bridge of the test's own (the gateway, subnet.1) and host-local
// addresses from subnet.0/24 (such as "10.233.7"), leases kept in
// dir/leases/name, and a default route; with subnet6 (such as
// "fd00:cc:9") too, the same from subnet6::/64. It returns the bridge's name; the
// bridge is removed at the test's end. The test is skipped without
// Debian's CNI plugins.
func CNIBridge(t testing.TB, dir, name, subnet, subnet6 string) string {
	t.Helper()
	for _, p := range []string{"bridge", "host-local"} {
		if _, err := os.Stat(filepath.Join("/usr/lib/cni", p)); err != nil {
			Unavailable(t, "CNI plugins", "no %s plugin in /usr/lib/cni (apt-get install containernetworking-plugins)", p)
		}
	}
	h := fnv.New32a()
	h.Write([]byte(name))
	br := fmt.Sprintf("ccbr%d%04x", os.Getpid()%100000, h.Sum32()&0xffff)
	ranges, routes := fmt.Sprintf(`[{"subnet": "%s.0/24"}]`, subnet), `{"dst": "0.0.0.0/0"}`
	if subnet6 != "" {
		ranges += fmt.Sprintf(`, [{"subnet": "%s::/64"}]`, subnet6)
		routes += `, {"dst": "::/0"}`
	}
	conf := fmt.Sprintf(`{"cniVersion": "1.0.0", "name": %q, "plugins": [
  {"type": "bridge", "bridge": %q, "isGateway": true, "ipMasq": false,
   "ipam": {"type": "host-local", "dataDir": %q, "ranges": [%s], "routes": [%s]}}]}`,
		name, br, filepath.Join(dir, "leases"), ranges, routes)
	if err := os.WriteFile(filepath.Join(dir, name+".conflist"), []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { exec.Command("ip", "link", "del", br).Run() })
	return br
}

// CNILeases lists the addresses host-local holds for network name of a
// CNIBridge in dir (the paths of its lease files, named by address).
func CNILeases(dir, name string) []string {
	all, _ := filepath.Glob(filepath.Join(dir, "leases", name, "*"))
	var l []string
	for _, p := range all {
		if net.ParseIP(filepath.Base(p)) != nil {
			l = append(l, p)
		}
	}
	return l
}
