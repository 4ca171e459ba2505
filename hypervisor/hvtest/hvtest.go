// Package hvtest is the conformance suite of hypervisor drivers: what
// the core relies on a hypervisor.Hypervisor to do, checked against real
// VMs. A driver's tests call Run with a Harness; a new driver (Cloud
// Hypervisor, Firecracker) runs the suite as is.
package hvtest

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/cocoon-runtime/cocoon/hypervisor"
	"github.com/cocoon-runtime/cocoon/internal/vmmproc"
)

// Harness is what the suite needs of a driver.
type Harness struct {
	// New returns a driver value for one new VM.
	New func() hypervisor.Hypervisor
	// Open re-attaches to the VM whose runtime directory is dir, as
	// another process would.
	Open func(ctx context.Context, dir string) (hypervisor.Hypervisor, error)
	// Config returns a config that boots a guest (its agent need not
	// answer), with a StateDir of the test's own.
	Config func(t *testing.T) hypervisor.Config
}

// timeout bounds each wait of the suite: a VM under emulation is slow.
const timeout = 60 * time.Second

// Run runs the suite.
func Run(t *testing.T, h Harness) {
	t.Run("InvalidID", func(t *testing.T) { testInvalidID(t, h) })
	t.Run("MissingKernel", func(t *testing.T) { testMissingKernel(t, h) })
	t.Run("CleanupBeforeStart", func(t *testing.T) { testCleanupBeforeStart(t, h) })
	t.Run("Lifecycle", func(t *testing.T) { testLifecycle(t, h) })
	t.Run("VMMKilled", func(t *testing.T) { testVMMKilled(t, h) })
}

// An ID that could name a path elsewhere is refused before anything is
// made.
func testInvalidID(t *testing.T, h Harness) {
	cfg := h.Config(t)
	for _, id := range []string{"", "../escape", "a/b", ".hidden"} {
		hv := h.New()
		if err := hv.CreateVM(context.Background(), id, cfg); err == nil {
			hv.Cleanup(context.Background())
			t.Errorf("CreateVM(%q) succeeded", id)
		}
	}
	assertEmpty(t, cfg.StateDir)
	if _, err := os.Lstat(filepath.Join(filepath.Dir(cfg.StateDir), "escape")); err == nil {
		t.Errorf("CreateVM(\"../escape\") made a file outside the state directory")
	}
}

// A VM whose kernel does not exist fails with a ConfigError and leaves
// nothing.
func testMissingKernel(t *testing.T, h Harness) {
	ctx := context.Background()
	cfg := h.Config(t)
	cfg.Kernel = filepath.Join(t.TempDir(), "no-such-kernel")
	hv := h.New()
	err := hv.CreateVM(ctx, "missing-kernel", cfg)
	if err == nil {
		err = hv.StartVM(ctx)
	}
	var ce *hypervisor.ConfigError
	if !errors.As(err, &ce) {
		t.Errorf("a missing kernel: %v, want a *hypervisor.ConfigError", err)
	}
	assertCleanup(t, hv, cfg.StateDir, nil)
}

// Cleanup of a VM created but never started removes what CreateVM made.
func testCleanupBeforeStart(t *testing.T, h Harness) {
	ctx := context.Background()
	cfg := h.Config(t)
	hv := h.New()
	if err := hv.CreateVM(ctx, "never-started", cfg); err != nil {
		t.Fatal(err)
	}
	if len(hv.PIDs()) != 0 {
		t.Errorf("a VM not started has processes %v", hv.PIDs())
	}
	assertCleanup(t, hv, cfg.StateDir, nil)
}

// A VM starts, runs, pauses, resumes, is opened by another process, stops
// and leaves nothing.
func testLifecycle(t *testing.T, h Harness) {
	ctx := context.Background()
	cfg := h.Config(t)
	const id = "lifecycle"
	hv, pids := start(t, h, id, cfg)
	for _, pid := range pids {
		if !vmmproc.Running(pid) {
			t.Errorf("process %d of the VM is not running", pid)
		}
	}
	waitState(t, hv, hypervisor.StateRunning)
	if ep := hv.AgentEndpoint(); len(ep.Sockets) == 0 && ep.CID == 0 {
		t.Errorf("AgentEndpoint %+v names no way to the agent", ep)
	}
	if a := hv.Capabilities(ctx).AcceleratorUsed; a != hypervisor.AccelKVM && a != hypervisor.AccelTCG {
		t.Errorf("Capabilities().AcceleratorUsed = %q, want kvm or tcg", a)
	}
	select {
	case <-hv.Wait():
		t.Fatal("Wait's channel is closed while the VM runs")
	default:
	}

	if err := hv.PauseVM(ctx); err != nil {
		t.Fatal(err)
	}
	waitState(t, hv, hypervisor.StatePaused)
	if err := hv.ResumeVM(ctx); err != nil {
		t.Fatal(err)
	}
	waitState(t, hv, hypervisor.StateRunning)

	// Another process re-attaches, sees the same VM, and lets go.
	other, err := h.Open(ctx, filepath.Join(cfg.StateDir, id))
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	waitState(t, other, hypervisor.StateRunning)
	if got := other.PIDs(); !slices.Equal(got, pids) {
		t.Errorf("the opened VM's processes are %v, want %v", got, pids)
	}
	if err := other.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	waitState(t, hv, hypervisor.StateRunning)

	sctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if err := hv.StopVM(sctx); err != nil {
		t.Fatalf("StopVM: %v", err)
	}
	waitExit(t, hv)
	if _, err := hv.Status(ctx); !errors.Is(err, hypervisor.ErrNotRunning) {
		t.Errorf("Status of a stopped VM: %v, want ErrNotRunning", err)
	}
	assertCleanup(t, hv, cfg.StateDir, pids)
}

// A VMM killed from outside ends Wait; the driver then reports it not
// running, and Cleanup removes the rest.
func testVMMKilled(t *testing.T, h Harness) {
	ctx := context.Background()
	cfg := h.Config(t)
	hv, pids := start(t, h, "killed", cfg)
	if err := syscall.Kill(pids[0], syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitExit(t, hv)
	if _, err := hv.Status(ctx); !errors.Is(err, hypervisor.ErrNotRunning) {
		t.Errorf("Status after the VMM was killed: %v, want ErrNotRunning", err)
	}
	assertCleanup(t, hv, cfg.StateDir, pids)
}

// start creates and starts VM id, removed when the test ends, and
// returns it with its processes.
func start(t *testing.T, h Harness, id string, cfg hypervisor.Config) (hypervisor.Hypervisor, []int) {
	t.Helper()
	ctx := context.Background()
	hv := h.New()
	if err := hv.CreateVM(ctx, id, cfg); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { hv.Cleanup(context.Background()) })
	if err := hv.StartVM(ctx); err != nil {
		t.Fatal(err)
	}
	pids := hv.PIDs()
	if len(pids) == 0 {
		t.Fatal("a started VM reports no processes")
	}
	return hv, pids
}

// assertCleanup runs Cleanup twice (it is idempotent) and fails t if a
// process of pids still runs or anything is left in stateDir.
func assertCleanup(t *testing.T, hv hypervisor.Hypervisor, stateDir string, pids []int) {
	t.Helper()
	for range 2 {
		if err := hv.Cleanup(context.Background()); err != nil {
			t.Errorf("Cleanup: %v", err)
		}
	}
	assertGone(t, pids)
	assertEmpty(t, stateDir)
}

// waitState waits until hv reports state want.
func waitState(t *testing.T, hv hypervisor.Hypervisor, want hypervisor.RunState) {
	t.Helper()
	var got hypervisor.RunState
	var err error
	for deadline := time.Now().Add(timeout); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if got, err = hv.Status(context.Background()); err == nil && got == want {
			return
		}
	}
	t.Fatalf("run state %q (%v), want %q", got, err, want)
}

// waitExit waits for hv's Wait channel.
func waitExit(t *testing.T, hv hypervisor.Hypervisor) {
	t.Helper()
	select {
	case <-hv.Wait():
	case <-time.After(timeout):
		t.Fatal("Wait's channel did not close after the VMM exited")
	}
}

// assertGone fails t if a process of pids still runs.
func assertGone(t *testing.T, pids []int) {
	t.Helper()
	for _, pid := range pids {
		if vmmproc.Running(pid) {
			t.Errorf("process %d of the VM still runs", pid)
		}
	}
}

// assertEmpty fails t unless dir holds nothing: every VM's runtime
// directory is gone.
func assertEmpty(t *testing.T, dir string) {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	for _, e := range entries {
		t.Errorf("left in the state directory: %s", e.Name())
	}
}
