package cni

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cocoon-runtime/cocoon/internal/network"
	"github.com/cocoon-runtime/cocoon/internal/testutil"
)

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
}

func TestAddDel(t *testing.T) {
	needRoot(t)
	ctx := context.Background()
	dir := t.TempDir()
	testutil.CNIBridge(t, dir, "cctest", "10.233.7", "")
	ns := filepath.Join(dir, "netns")
	if err := network.NewNetNS(ns); err != nil {
		t.Fatal(err)
	}
	defer network.DeleteNetNS(ns)
	a, err := Prepare(ctx, Network{Name: "cctest", ConfDir: dir}, "cctest-1", ns, filepath.Join(dir, "cache"))
	if err != nil {
		t.Fatal(err)
	}
	// The attachment works from its own copy of the configuration.
	if err := os.Remove(filepath.Join(dir, "cctest.conflist")); err != nil {
		t.Fatal(err)
	}
	if err := Add(ctx, a); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("nsenter", "--net="+ns, "ip", "-o", "addr", "show", "dev", "eth0").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "inet 10.233.7.") {
		t.Fatalf("eth0 in the netns after ADD: %v: %s", err, out)
	}
	leases := testutil.CNILeases(dir, "cctest")
	if len(leases) != 1 {
		t.Fatalf("host-local leases after ADD: %v, want one", leases)
	}
	if err := Del(ctx, a); err != nil {
		t.Fatal(err)
	}
	leases = testutil.CNILeases(dir, "cctest")
	if len(leases) != 0 {
		t.Fatalf("host-local leases after DEL: %v", leases)
	}
	if _, err := os.Stat(filepath.Join(dir, "cache")); !os.IsNotExist(err) {
		t.Fatalf("result cache after DEL: %v", err)
	}
	if out, _ := exec.Command("nsenter", "--net="+ns, "ip", "-o", "link", "show", "dev", "eth0").CombinedOutput(); strings.Contains(string(out), "eth0@") {
		t.Fatalf("eth0 still in the netns after DEL: %s", out)
	}
	// DEL of what is gone succeeds, as CNI requires.
	if err := Del(ctx, a); err != nil {
		t.Fatalf("second DEL: %v", err)
	}
}

func TestPrepareErrors(t *testing.T) {
	needRoot(t)
	ctx := context.Background()
	dir := t.TempDir()
	if _, err := Prepare(ctx, Network{Name: "nope", ConfDir: dir}, "x", "/run/netns/x", ""); err == nil || !strings.Contains(err.Error(), `"nope"`) {
		t.Fatalf("missing network: %v", err)
	}
	os.WriteFile(filepath.Join(dir, "bad.conflist"), []byte(`{"cniVersion": "1.0.0", "name": "bad", "plugins": [{"type": "no-such-plugin"}]}`), 0o600)
	if _, err := Prepare(ctx, Network{Name: "bad", ConfDir: dir}, "x", "/run/netns/x", ""); err == nil || !strings.Contains(err.Error(), "no-such-plugin") {
		t.Fatalf("missing plugin: %v", err)
	}
	if _, err := Prepare(ctx, Network{ConfDir: dir}, "x", "/run/netns/x", ""); err == nil {
		t.Fatal("no network name: no error")
	}
}
