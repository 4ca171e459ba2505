// Package testutil holds helpers for tests that boot real VMs, and the
// one gate of those tests, BootsVM: in -short mode, the unit tier of
// `make unit`, it skips them. Each test that boots a VM (or starts a
// containerd) passes through it, directly or through NeedVM or
// ctrtest.Need; files of tests that boot a VM are named *_vm_test.go
// (all of package integration does).
package testutil

import (
	"context"
	"fmt"
	"github.com/cocoon-runtime/cocoon/hypervisor/drivers"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cocoon-runtime/cocoon/hypervisor"
	"github.com/cocoon-runtime/cocoon/image"
	"github.com/cocoon-runtime/cocoon/internal/layout"
	"github.com/cocoon-runtime/cocoon/internal/storage"
	"github.com/cocoon-runtime/cocoon/internal/vm"
)

// Env describes where a VM test finds its guest image and keeps its state.
type Env struct {
	Kernel, Initrd string
	StateDir       string
	CacheDir       string
}

// NeedVM skips the test unless it runs as root with QEMU and a guest image
// (the current image under COCOON_DATA_DIR, default /var/lib/cocoon, or
// COCOON_KERNEL and COCOON_INITRD). Setting COCOON_REQUIRE_VM=1 turns the
// skip into a failure, so CI cannot pass by skipping. With -short (the
// fast unit tier, `make unit`) VM tests are skipped (see BootsVM).
func NeedVM(t testing.TB) *Env {
	t.Helper()
	BootsVM(t)
	skip := func(format string, args ...any) {
		t.Helper()
		Unavailable(t, "VM", format, args...)
	}
	if os.Geteuid() != 0 {
		skip("not root")
	}
	drv, err := drivers.Lookup("")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := exec.LookPath(drv.Binary); err != nil {
		skip("no %s", drv.Binary)
	}
	env := &Env{}
	dataDir := os.Getenv("COCOON_DATA_DIR")
	if dataDir == "" {
		dataDir = layout.DataDir
	}
	env.Kernel, env.Initrd, err = image.OrCurrent(dataDir, os.Getenv("COCOON_KERNEL"), os.Getenv("COCOON_INITRD"))
	if err != nil {
		skip("%v", err)
	}
	env.CacheDir = layout.CacheDir(dataDir)
	// A short path: unix socket paths are limited to 108 bytes.
	dir, err := os.MkdirTemp("/run", "cocoon-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { storage.RemoveUnmounted(dir) })
	env.StateDir = dir
	return env
}

// BootsVM skips t in -short mode: t boots a VM (or starts a containerd,
// which is not for the unit tier either).
func BootsVM(t testing.TB) {
	t.Helper()
	if testing.Short() {
		t.Skip("VM test: skipped in -short mode")
	}
}

// Unavailable skips t because what it needs (a "VM", "containerd") is
// missing, or fails it under COCOON_REQUIRE_VM=1, so that CI cannot pass
// by skipping.
func Unavailable(t testing.TB, what, format string, args ...any) {
	t.Helper()
	if os.Getenv("COCOON_REQUIRE_VM") == "1" {
		t.Fatalf(what+" test cannot run: "+format, args...)
	}
	t.Skipf(what+" test skipped: "+format, args...)
}

// Config is a small VM config for tests: TCG unless COCOON_ACCEL says
// otherwise, one vCPU, 256 MiB.
func (e *Env) Config() hypervisor.Config {
	acc := hypervisor.Accelerator(os.Getenv("COCOON_ACCEL"))
	if acc == "" {
		acc = hypervisor.AccelAuto
	}
	return hypervisor.Config{
		Kernel: e.Kernel, Initrd: e.Initrd, VCPUs: 1, MemoryMiB: 256,
		Accelerator: acc, StateDir: e.StateDir,
	}
}

// Options are vm.Options for tests.
func (e *Env) Options() vm.Options {
	return vm.Options{CacheDir: e.CacheDir, BootTimeout: 60 * time.Second}
}

// UniqueID returns a VM id unique to this test run.
func UniqueID(t testing.TB) string {
	name := strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' {
			return r
		}
		return '-'
	}, t.Name())
	if len(name) > 40 {
		name = name[:40]
	}
	return fmt.Sprintf("%s-%d", strings.ToLower(name), time.Now().UnixNano()%1e9)
}

// Cleanup makes sure the VM id is gone when the test ends, whatever
// happened: it kills any process whose command line names the VM's state
// directory and removes the directory.
func (e *Env) Cleanup(t testing.TB, id string) {
	t.Cleanup(func() {
		dir := filepath.Join(e.StateDir, id)
		for _, pid := range ProcessesMentioning(dir) {
			syscall.Kill(pid, syscall.SIGKILL)
		}
		storage.RemoveUnmounted(dir)
	})
}

// ProcessesMentioning lists the live processes whose command line contains
// s (zombies hold nothing and are skipped).
func ProcessesMentioning(s string) []int {
	var pids []int
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		var pid int
		if _, err := fmt.Sscanf(e.Name(), "%d", &pid); err != nil || pid == os.Getpid() {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && strings.Contains(string(b), s) && !isZombie(pid) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// AssertNoLeaks fails the test if anything of VM id is left: a process
// among pids or naming its state directory, or the directory itself.
func AssertNoLeaks(t testing.TB, e *Env, id string, pids []int) {
	t.Helper()
	dir := filepath.Join(e.StateDir, id)
	// Processes may take a moment to be reaped by their parent.
	deadline := time.Now().Add(5 * time.Second)
	for {
		var alive []int
		for _, pid := range pids {
			if err := syscall.Kill(pid, 0); err == nil && !isZombie(pid) {
				alive = append(alive, pid)
			}
		}
		alive = append(alive, ProcessesMentioning(dir)...)
		if len(alive) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("processes left behind: %v", alive)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		entries, _ := os.ReadDir(dir)
		t.Fatalf("state directory %s left behind (err %v, entries %v)", dir, err, entries)
	}
}

func isZombie(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i >= 0 && i+2 < len(s) && s[i+2] == 'Z'
}

// WaitGone waits until pid has exited.
func WaitGone(ctx context.Context, pid int) error {
	for syscall.Kill(pid, 0) == nil && !isZombie(pid) {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
	return nil
}

// MountsUnder lists the mount points at or below dir.
func MountsUnder(dir string) []string {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && (f[4] == dir || strings.HasPrefix(f[4], dir+"/")) {
			out = append(out, f[4])
		}
	}
	return out
}

// Calls records the calls a fake receives, each as its method and
// arguments in one line ("Signal c1 15 true"), and fails the methods it
// is told to. It is safe for concurrent use.
type Calls struct {
	mu    sync.Mutex
	calls []string
	fail  map[string]error
}

// Record records a call of method with args and returns the error
// method is to fail with (nil if none).
func (c *Calls) Record(method string, args ...any) error {
	s := method
	for _, a := range args {
		s += fmt.Sprintf(" %v", a)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.calls = append(c.calls, s)
	return c.fail[method]
}

// FailOn makes method fail with err from now on; nil stops it failing.
func (c *Calls) FailOn(method string, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.fail == nil {
		c.fail = map[string]error{}
	}
	c.fail[method] = err
}

// List returns the calls recorded so far that begin with prefix.
func (c *Calls) List(prefix string) []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	for _, s := range c.calls {
		if strings.HasPrefix(s, prefix) {
			out = append(out, s)
		}
	}
	return out
}
