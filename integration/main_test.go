// Package integration holds end-to-end tests across components: a real
// containerd (started by the tests, with its own root, state and socket)
// runs Cocoon's shim, which boots real VMs under QEMU.
package integration

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cocoon-runtime/cocoon/internal/ctrtest"
	"github.com/cocoon-runtime/cocoon/internal/storage"
	"github.com/cocoon-runtime/cocoon/internal/testutil"
)

// env is the containerd every test shares, started by the first test
// that needs it and stopped by TestMain.
type env struct {
	ctrd       *ctrtest.Containerd
	dir        string // everything of the run: shim binary, configs, containerd
	stateDir   string // Cocoon's state directory (the shim's)
	cocoonConf string
}

var (
	shared     *env
	sharedErr  error
	sharedOnce sync.Once
)

func TestMain(m *testing.M) {
	code := m.Run()
	if shared != nil {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		if err := shared.ctrd.Stop(ctx); err != nil {
			fmt.Fprintln(os.Stderr, "stop containerd:", err)
			code = 1
		}
		cancel()
		// A test that failed half-way may have left a VM (daemonized, so
		// not below containerd): everything of Cocoon names its state dir.
		for _, pid := range testutil.ProcessesMentioning(shared.stateDir) {
			fmt.Fprintf(os.Stderr, "killing leftover process %d\n", pid)
			syscall.Kill(pid, syscall.SIGKILL)
			code = 1
		}
		storage.RemoveUnmounted(shared.dir)
	}
	os.Exit(code)
}

// needContainerd returns the shared containerd, skipping (or failing under
// COCOON_REQUIRE_VM=1) where VMs or containerd cannot run.
func needContainerd(t *testing.T) *env {
	t.Helper()
	vmEnv := testutil.NeedVM(t)
	ctrtest.Need(t, ctrtest.Options{Containerd: os.Getenv("COCOON_CONTAINERD")})
	sharedOnce.Do(func() { shared, sharedErr = startEnv(vmEnv, nil) })
	if sharedErr != nil {
		t.Fatal(sharedErr)
	}
	return shared
}

// startEnv starts a containerd whose CNI configuration directory holds
// the files of cniConf (name → content), or containerd-cocoon.sh's
// loopback-only network when cniConf is empty.
func startEnv(vmEnv *testutil.Env, cniConf map[string]string) (*env, error) {
	// Short: CRI sandbox IDs are 64 characters, and the sockets below the
	// state directory must fit a unix socket path.
	dir, err := os.MkdirTemp("/run", "cct")
	if err != nil {
		return nil, err
	}
	e := &env{dir: dir, stateDir: filepath.Join(dir, "c"), cocoonConf: filepath.Join(dir, "cocoon.toml")}
	ok := false
	defer func() {
		if !ok {
			storage.RemoveUnmounted(dir)
		}
	}()
	repo, err := ctrtest.RepoRoot()
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := ctrtest.BuildShim(ctx, repo, filepath.Join(dir, "bin")); err != nil {
		return nil, err
	}
	err = ctrtest.CocoonConfig{
		Kernel: vmEnv.Kernel, Initrd: vmEnv.Initrd, Accelerator: os.Getenv("COCOON_ACCEL"),
		StateDir: e.stateDir, DataDir: filepath.Dir(vmEnv.CacheDir),
		EnableAnnotations: []string{"hypervisor.memory_mib", "hypervisor.hotplug_slots"},
	}.Write(e.cocoonConf)
	if err != nil {
		return nil, err
	}
	if len(cniConf) > 0 {
		// Start's CNI configuration directory: seeded, it is left alone.
		cniDir := filepath.Join(dir, "ctrd", "cni")
		if err := os.MkdirAll(cniDir, 0o700); err != nil {
			return nil, err
		}
		for name, conf := range cniConf {
			if err := os.WriteFile(filepath.Join(cniDir, name), []byte(conf), 0o600); err != nil {
				return nil, err
			}
		}
	}
	e.ctrd, err = ctrtest.Start(ctx, filepath.Join(dir, "ctrd"), ctrtest.Options{
		ShimDir:      filepath.Join(dir, "bin"),
		CocoonConfig: e.cocoonConf,
		Containerd:   os.Getenv("COCOON_CONTAINERD"),
		LogLevel:     "debug",
	})
	if err != nil {
		return nil, err
	}
	ok = true
	return e, nil
}

// runtimeFlags make ctr run a container with Cocoon.
func (e *env) runtimeFlags() []string {
	return []string{"--runtime", "io.containerd.cocoon.v2", "--runtime-config-path", e.cocoonConf}
}

// ctr runs ctr and fails the test on error.
func (e *env) ctr(t *testing.T, ctx context.Context, args ...string) string {
	t.Helper()
	out, _, err := e.ctrd.Ctr(ctx, args...)
	if err != nil {
		t.Fatalf("%v\n%s", err, e.ctrd.LogTail(30))
	}
	return out
}

// id returns a container ID unique to the test.
func id(t *testing.T) string { return testutil.UniqueID(t) }

// removeOnCleanup deletes container cid (its task first) when the test
// ends, whatever state it is in.
func (e *env) removeOnCleanup(t *testing.T, cid string) {
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		e.ctrd.Ctr(ctx, "task", "kill", "-s", "KILL", cid)
		e.ctrd.Ctr(ctx, "task", "delete", "-f", cid)
		e.ctrd.Ctr(ctx, "container", "delete", cid)
	})
}

// assertNoLeaks checks that nothing of sandbox sid is left: no process
// naming it (QEMU, virtiofsd, shim), no Cocoon state, no mount.
func (e *env) assertNoLeaks(t *testing.T, sid string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		var left []string
		for _, pid := range testutil.ProcessesMentioning(sid) {
			cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
			left = append(left, fmt.Sprintf("process %d: %s", pid, strings.ReplaceAll(string(cmdline), "\x00", " ")))
		}
		for _, d := range []string{filepath.Join(e.stateDir, "sandboxes", sid), filepath.Join(e.stateDir, "vm", sid), filepath.Join(e.stateDir, "state", sid+".json")} {
			if _, err := os.Stat(d); err == nil {
				left = append(left, "state "+d)
			}
		}
		for _, m := range testutil.MountsUnder(e.dir) {
			if strings.Contains(m, sid) {
				left = append(left, "mount "+m)
			}
		}
		if len(left) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("sandbox %s left behind:\n%s", sid, strings.Join(left, "\n"))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// pidsMentioning lists the live processes whose command line contains
// all of parts.
func pidsMentioning(parts ...string) []int {
	var out []int
	for _, pid := range testutil.ProcessesMentioning(parts[0]) {
		cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		all := true
		for _, p := range parts[1:] {
			all = all && strings.Contains(string(cmdline), p)
		}
		if all {
			out = append(out, pid)
		}
	}
	return out
}

// pidOf returns the pid of the one live process whose command line
// contains all of parts.
func pidOf(t *testing.T, parts ...string) int {
	t.Helper()
	found := pidsMentioning(parts...)
	if len(found) != 1 {
		t.Fatalf("processes mentioning %q: %v, want exactly one", parts, found)
	}
	return found[0]
}

func hostKernel(t *testing.T) string {
	var u syscall.Utsname
	if err := syscall.Uname(&u); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 0, len(u.Release))
	for _, c := range u.Release {
		if c == 0 {
			break
		}
		b = append(b, byte(c))
	}
	return string(b)
}

// logConsoles logs the end of every guest console of the state
// directory, for a test that failed while its VMs still run.
func (e *env) logConsoles(t *testing.T) {
	logs, _ := filepath.Glob(filepath.Join(e.stateDir, "vm", "*", "console", "console.log"))
	for _, l := range logs {
		b, err := os.ReadFile(l)
		if err != nil {
			continue
		}
		t.Logf("guest console %s (end):\n%s", l, b[max(0, len(b)-4096):])
	}
}
