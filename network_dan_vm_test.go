package cocoon_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cocoon-runtime/cocoon"
	"github.com/cocoon-runtime/cocoon/internal/dan"
	"github.com/cocoon-runtime/cocoon/internal/testutil"
)

// danRuntime is a runtime reading DAN files from a directory of its own.
func danRuntime(t *testing.T) (*cocoon.Runtime, *testutil.Env, string) {
	t.Helper()
	env := testutil.NeedVM(t)
	dir := t.TempDir()
	rt, err := cocoon.New(cocoon.Options{StateDir: env.StateDir, DataDir: filepath.Dir(env.CacheDir), DANConfDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	return rt, env, dir
}

// A DAN file's host tap, made by "the plugin" in a netns of the test's
// (with the netns side's address 10.233.0.1), is the guest's eth0 with
// the file's MAC, address, MTU, routes and neighbour, and passes TCP; the
// tap is the plugin's and stays after the sandbox goes.
func TestNetworkDAN(t *testing.T) {
	ctx := context.Background()
	rt, env, dir := danRuntime(t)
	ns := fmt.Sprintf("ccdan%d", os.Getpid()%100000)
	run(t, "ip", "netns", "add", ns)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
	run(t, "ip", "-n", ns, "link", "set", "lo", "up")
	run(t, "ip", "-n", ns, "tuntap", "add", "dev", "dantap0", "mode", "tap", "vnet_hdr")
	run(t, "ip", "-n", ns, "link", "set", "dantap0", "mtu", "1400", "up")
	run(t, "ip", "-n", ns, "addr", "add", "10.233.0.1/24", "dev", "dantap0")
	id := testutil.UniqueID(t)
	file := fmt.Sprintf(`{"netns": "/var/run/netns/%s", "devices": [{
	  "name": "eth0", "guest_mac": "02:cc:00:00:00:33",
	  "device": {"type": "host-tap", "tap_name": "dantap0"},
	  "network_info": {
	    "interface": {"ip_addresses": ["10.233.0.2/24"], "mtu": 1400},
	    "routes": [{"dest": "10.244.0.0/16", "gateway": "10.233.0.1"}],
	    "neighbors": [{"ip_address": "10.233.0.9/24", "hardware_addr": "02:cc:00:00:00:09"}]}}]}`, ns)
	if err := os.WriteFile(dan.Path(dir, id), []byte(file), 0o600); err != nil {
		t.Fatal(err)
	}
	sb, err := rt.RunSandbox(ctx, sandboxConfig(env, id, bundle(t, "sleep", "600")))
	if err != nil {
		t.Fatal(err)
	}
	cleanup(t, rt, id)
	defer sb.Release()
	out, st := execIn(t, sb, id, "ip", "addr", "show", "eth0")
	for _, want := range []string{"10.233.0.2/24", "02:cc:00:00:00:33", "mtu 1400", "UP"} {
		if st.Code != 0 || !strings.Contains(out, want) {
			t.Errorf("guest's eth0 lacks %q:\n%s", want, out)
		}
	}
	if out, _ := execIn(t, sb, id, "ip", "route"); !strings.Contains(out, "10.244.0.0/16 via 10.233.0.1 dev eth0") {
		t.Errorf("guest lacks the DAN route:\n%s", out)
	}
	if out, _ := execIn(t, sb, id, "ip", "neigh", "show", "dev", "eth0"); !strings.Contains(out, "10.233.0.9 lladdr 02:cc:00:00:00:09") {
		t.Errorf("guest lacks the DAN neighbour:\n%s", out)
	}
	tcpExchange(t, sb, id, ns, "10.233.0.1", "5003")
	if out := run(t, "tc", "-n", ns, "qdisc", "show", "dev", "dantap0"); strings.Contains(out, "ingress") {
		t.Errorf("Cocoon added a qdisc to the DAN tap:\n%s", out)
	}
	if err := rt.DeleteSandbox(ctx, id); err != nil {
		t.Fatal(err)
	}
	if out := run(t, "ip", "-n", ns, "link", "show", "dantap0"); !strings.Contains(out, "dantap0") {
		t.Errorf("the plugin's tap went with the sandbox:\n%s", out)
	}
}

// A malformed DAN file, or one naming a tap that does not exist, is an
// error naming what is wrong, and nothing of the sandbox is left.
func TestNetworkDANBad(t *testing.T) {
	ctx := context.Background()
	rt, env, dir := danRuntime(t)
	for name, tc := range map[string]struct{ file, want string }{
		"field": {`{"devices": [{"name": "eth0", "device": {"type": "host-tap", "tap_name": "t0"}, "network_info": {"interface": {"mtu": 9}}}]}`,
			"devices[0].network_info.interface.mtu"},
		"no tap": {`{"devices": [{"name": "eth0", "device": {"type": "host-tap", "tap_name": "ccnosuchtap"}, "network_info": {"interface": {}}}]}`,
			"ccnosuchtap"},
		"no netns": {`{"netns": "/var/run/netns/cocoon-no-such-netns", "devices": [{"name": "eth0", "device": {"type": "host-tap", "tap_name": "t0"}, "network_info": {"interface": {}}}]}`,
			"cocoon-no-such-netns"},
	} {
		id := testutil.UniqueID(t) + strings.ReplaceAll(name, " ", "")
		if err := os.WriteFile(dan.Path(dir, id), []byte(tc.file), 0o600); err != nil {
			t.Fatal(err)
		}
		_, err := rt.CreateSandbox(ctx, sandboxConfig(env, id, bundle(t, "true")))
		if err == nil {
			rt.DeleteSandbox(ctx, id)
			t.Errorf("%s: sandbox created", name)
			continue
		}
		t.Logf("%s: %v", name, err)
		if !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error does not name %q: %v", name, tc.want, err)
		}
		if name == "field" && !errors.Is(err, cocoon.ErrInvalidConfig) {
			t.Errorf("%s: not ErrInvalidConfig: %v", name, err)
		}
		if _, err := rt.FetchSandbox(ctx, id); !errors.Is(err, cocoon.ErrNotFound) {
			t.Errorf("%s: the failed sandbox left a record: %v", name, err)
		}
		if ents, _ := os.ReadDir(filepath.Join(env.StateDir, "sandboxes", id)); len(ents) > 0 {
			t.Errorf("%s: the failed sandbox left files: %v", name, ents)
		}
	}
}
