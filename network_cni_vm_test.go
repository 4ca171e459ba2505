package cocoon_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cocoon-runtime/cocoon"
	"github.com/cocoon-runtime/cocoon/internal/testutil"
)

// TestNetworkCNI has Cocoon make the pod's network itself: its own netns,
// where it runs the bridge and host-local CNI plugins. The container has
// the address CNI gave and its default route, and its web server answers
// on that address from the host; delete runs CNI's DEL and removes the
// netns.
func TestNetworkCNI(t *testing.T) {
	rt, env := newRuntime(t)
	ctx := context.Background()
	dir := t.TempDir()
	name := fmt.Sprintf("cctest%d", os.Getpid()%100000)
	br := testutil.CNIBridge(t, dir, name, "10.234.9", "fd00:cc:9")
	id := testutil.UniqueID(t)
	cfg := sandboxConfig(env, id, bundle(t, "httpd", "-f", "-p", "8080", "-h", "/bin"))
	cfg.Network = &cocoon.NetworkConfig{CNI: name, CNIConfDir: dir}
	sb, err := rt.RunSandbox(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	cleanup(t, rt, id)
	defer sb.Release()
	netns := "/run/netns/cocoon-" + id
	if _, err := os.Stat(netns); err != nil {
		t.Fatalf("the sandbox's own netns: %v", err)
	}
	var ip, ip6 string
	for _, l := range testutil.CNILeases(dir, name) {
		if a := filepath.Base(l); strings.Contains(a, ":") {
			ip6 = a
		} else {
			ip = a
		}
	}
	if ip == "" || ip6 == "" {
		t.Fatalf("host-local leases: %v, want an IPv4 and an IPv6 one", testutil.CNILeases(dir, name))
	}
	out, st := execIn(t, sb, id, "ip", "addr", "show", "eth0")
	if st.Code != 0 || !strings.Contains(out, "inet "+ip+"/24") {
		t.Errorf("container's eth0 lacks CNI's address %s (exit %d):\n%s", ip, st.Code, out)
	}
	if !strings.Contains(out, "inet6 "+ip6+"/64") {
		t.Errorf("container's eth0 lacks CNI's IPv6 address %s:\n%s", ip6, out)
	}
	out, _ = execIn(t, sb, id, "ip", "route")
	if !strings.Contains(out, "default via 10.234.9.1 dev eth0") {
		t.Errorf("container has no default route via the bridge:\n%s", out)
	}
	out, _ = execIn(t, sb, id, "ip", "-6", "route")
	if !strings.Contains(out, "default via fd00:cc:9::1 dev eth0") {
		t.Errorf("container has no IPv6 default route via the bridge:\n%s", out)
	}
	// The host reaches the pod's web server through the bridge.
	client := http.Client{Timeout: 10 * time.Second}
	var resp *http.Response
	for i := 0; ; i++ {
		resp, err = client.Get("http://" + ip + ":8080/busybox")
		if err == nil || i == 20 {
			break
		}
		time.Sleep(250 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("GET from the host: %v", err)
	}
	n, err := io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != 200 || n < 100000 {
		t.Errorf("GET /busybox from the host: %s, %d bytes, %v", resp.Status, n, err)
	}

	// And over IPv6.
	resp, err = client.Get("http://[" + ip6 + "]:8080/busybox")
	if err != nil {
		t.Errorf("GET over IPv6 from the host: %v", err)
	} else {
		n, _ := io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || n < 100000 {
			t.Errorf("GET over IPv6 from the host: %s, %d bytes", resp.Status, n)
		}
	}

	if err := sb.Delete(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(netns); !os.IsNotExist(err) {
		t.Errorf("the sandbox's netns after delete: %v", err)
	}
	if l := testutil.CNILeases(dir, name); len(l) != 0 {
		t.Errorf("host-local leases after delete: %v", l)
	}
	if out := run(t, "ip", "-o", "link", "show", "master", br); strings.TrimSpace(out) != "" {
		t.Errorf("veths still on the bridge after delete:\n%s", out)
	}
}

// TestNetworkCNIBad: a CNI network that does not exist, or whose plugin
// fails, is a clear error and leaves no netns, lease or record.
func TestNetworkCNIBad(t *testing.T) {
	rt, env := newRuntime(t)
	ctx := context.Background()
	dir := t.TempDir()
	name := fmt.Sprintf("ccbad%d", os.Getpid()%100000)
	testutil.CNIBridge(t, dir, name, "10.234.10", "")
	// A second network whose bridge plugin fails after host-local gave an
	// address: a bridge name longer than an interface name can be.
	os.WriteFile(filepath.Join(dir, "broken.conflist"), []byte(fmt.Sprintf(`{"cniVersion": "1.0.0", "name": "broken", "plugins": [
  {"type": "bridge", "bridge": "this-name-is-too-long", "ipam": {"type": "host-local", "dataDir": %q, "ranges": [[{"subnet": "10.234.11.0/24"}]]}}]}`,
		filepath.Join(dir, "leases"))), 0o600)
	for _, tc := range []struct{ network, want string }{
		{"no-such-network", `"no-such-network"`},
		{"broken", `cni network "broken": add`},
	} {
		id := testutil.UniqueID(t)
		cfg := sandboxConfig(env, id, bundle(t, "true"))
		cfg.Network = &cocoon.NetworkConfig{CNI: tc.network, CNIConfDir: dir}
		_, err := rt.CreateSandbox(ctx, cfg)
		if err == nil {
			rt.DeleteSandbox(ctx, id)
			t.Fatalf("%s: sandbox created", tc.network)
		}
		t.Logf("%s: %v", tc.network, err)
		if !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error does not say %s: %v", tc.network, tc.want, err)
		}
		if tc.network == "no-such-network" && !errors.Is(err, cocoon.ErrInvalidConfig) {
			t.Errorf("%s: error is not ErrInvalidConfig", tc.network)
		}
		if _, err := os.Stat("/run/netns/cocoon-" + id); !os.IsNotExist(err) {
			t.Errorf("%s: netns left: %v", tc.network, err)
		}
		if _, err := rt.FetchSandbox(ctx, id); err == nil {
			t.Errorf("%s: record left", tc.network)
		}
		if l := testutil.CNILeases(dir, "broken"); len(l) != 0 {
			t.Errorf("%s: leases left: %v", tc.network, l)
		}
	}
	cfg := sandboxConfig(env, testutil.UniqueID(t), bundle(t, "true"))
	cfg.NetNS, cfg.Network = "/run/netns/x", &cocoon.NetworkConfig{CNI: name, CNIConfDir: dir}
	if _, err := rt.CreateSandbox(ctx, cfg); !errors.Is(err, cocoon.ErrInvalidConfig) {
		t.Errorf("both NetNS and Network: %v, want ErrInvalidConfig", err)
	}
}
