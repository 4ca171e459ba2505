package testutil

import (
	"fmt"
	"hash/fnv"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// CNIBridge writes into dir a CNI network named name: the bridge plugin
// with a bridge of the test's own (the gateway, subnet.1) and host-local
// addresses from subnet.0/24 (such as "10.233.7"), leases kept in
// dir/leases/name, and a default route. It returns the bridge's name; the
// bridge is removed at the test's end. The test is skipped without
// Debian's CNI plugins.
func CNIBridge(t testing.TB, dir, name, subnet string) string {
	t.Helper()
	for _, p := range []string{"bridge", "host-local"} {
		if _, err := os.Stat(filepath.Join("/usr/lib/cni", p)); err != nil {
			Unavailable(t, "CNI plugins", "no %s plugin in /usr/lib/cni (apt-get install containernetworking-plugins)", p)
		}
	}
	h := fnv.New32a()
	h.Write([]byte(name))
	br := fmt.Sprintf("ccbr%d%04x", os.Getpid()%100000, h.Sum32()&0xffff)
	conf := fmt.Sprintf(`{"cniVersion": "1.0.0", "name": %q, "plugins": [
  {"type": "bridge", "bridge": %q, "isGateway": true, "ipMasq": false,
   "ipam": {"type": "host-local", "dataDir": %q, "ranges": [[{"subnet": "%s.0/24"}]], "routes": [{"dst": "0.0.0.0/0"}]}}]}`,
		name, br, filepath.Join(dir, "leases"), subnet)
	if err := os.WriteFile(filepath.Join(dir, name+".conflist"), []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { exec.Command("ip", "link", "del", br).Run() })
	return br
}

// CNILeases lists the addresses host-local holds for network name of a
// CNIBridge in dir.
func CNILeases(dir, name string) []string {
	l, _ := filepath.Glob(filepath.Join(dir, "leases", name, "[0-9]*"))
	return l
}
