package cocoon

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cocoon-runtime/cocoon/agent/protocol"
	"github.com/cocoon-runtime/cocoon/internal/agent"
	"github.com/cocoon-runtime/cocoon/internal/storage"
	"github.com/cocoon-runtime/cocoon/internal/testutil"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// The unit tests of the sandbox lifecycle: the VMs and their agents are
// the fakes of fakes_internal_test.go, the rest (records, locks, the
// shared tree, the file server's process) is real. The tests that boot
// real VMs (*_vm_test.go) stay the proof that the whole works.

func wantState(t *testing.T, what string, got, want State) {
	t.Helper()
	if got != want {
		t.Fatalf("%s: state %s, want %s", what, got, want)
	}
}

// A sandbox goes ready → running → stopped → deleted; each state is
// persisted, so another Runtime (another process) sees it and acts on it.
func TestUnitSandboxLifecycle(t *testing.T) {
	u := newUnitRuntime(t)
	ctx := context.Background()
	sb, err := u.CreateSandbox(ctx, unitSandboxConfig(t, "sb1"))
	if err != nil {
		t.Fatal(err)
	}
	defer sb.Release()
	v := u.vms.vm("sb1")
	if v == nil {
		t.Fatal("no VM started")
	}
	st := sb.Status(ctx)
	wantState(t, "created sandbox", st.State, StateReady)
	if len(st.Containers) != 1 || st.Containers[0].State != StateReady || st.Containers[0].ID != "sb1" {
		t.Fatalf("created sandbox's containers: %+v", st.Containers)
	}
	if !slices.Equal(st.HypervisorPids, []int{fakeVMPid}) || st.Annotations["a"] != "b" {
		t.Errorf("status %+v: want the VM's pids and the annotations", st)
	}
	if fs := storage.LoadVirtiofsd(sb.vfsPidFile(), sb.vfsSocket()); fs == nil {
		t.Fatal("no file server runs for the sandbox")
	}
	if c := v.agent.created["sb1"]; c.rootfs != "sb1/rootfs" || c.spec.Hooks != nil {
		t.Errorf("agent asked to create %+v", c)
	}

	other := u.again(t)
	ost, err := other.StatusSandbox(ctx, "sb1")
	if err != nil {
		t.Fatal(err)
	}
	wantState(t, "created sandbox seen by another runtime", ost.State, StateReady)

	if err := sb.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if got := v.agent.status("sb1"); got != agent.ContainerRunning {
		t.Fatalf("container in the guest is %q after Start, want running", got)
	}
	list, err := other.ListSandbox(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 1 || list[0].ID != "sb1" || list[0].State != StateRunning || list[0].Containers[0].State != StateRunning {
		t.Fatalf("another runtime lists %+v, want sb1 running with its container", list)
	}

	if err := other.PauseSandbox(ctx, "sb1"); err != nil {
		t.Fatal(err)
	}
	if ost, _ := u.StatusSandbox(ctx, "sb1"); ost.State != StatePaused || !v.paused {
		t.Fatalf("paused sandbox: %s (vm paused %v)", ost.State, v.paused)
	}
	if err := other.ResumeSandbox(ctx, "sb1"); err != nil {
		t.Fatal(err)
	}

	// Stopped by the other runtime: the guest's containers are removed,
	// then the VM and the file server stop; the record stays.
	if err := other.StopSandbox(ctx, "sb1", false); err != nil {
		t.Fatal(err)
	}
	if got := v.agent.List("RemoveContainer"); !slices.Equal(got, []string{"RemoveContainer sb1 true"}) {
		t.Errorf("agent calls on stop: %v", got)
	}
	if !v.stopped || v.isRunning() {
		t.Error("VM still running after Stop")
	}
	if fs := storage.LoadVirtiofsd(sb.vfsPidFile(), sb.vfsSocket()); fs != nil {
		t.Errorf("file server %d still runs after Stop", fs.Pid)
	}
	ost, err = u.StatusSandbox(ctx, "sb1")
	if err != nil {
		t.Fatal(err)
	}
	wantState(t, "stopped sandbox", ost.State, StateStopped)
	wantState(t, "stopped sandbox's container", ost.Containers[0].State, StateStopped)
	if err := u.StartSandbox(ctx, "sb1"); !errors.Is(err, ErrState) {
		t.Fatalf("start of a stopped sandbox: %v, want ErrState", err)
	}
	if err := sb.StartContainer(ctx, "sb1"); !errors.Is(err, ErrState) {
		t.Fatalf("start of a container of a stopped sandbox: %v, want ErrState", err)
	}

	if err := u.DeleteSandbox(ctx, "sb1"); err != nil {
		t.Fatal(err)
	}
	if _, err := other.FetchSandbox(ctx, "sb1"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("fetch after delete: %v, want ErrNotFound", err)
	}
	if err := u.DeleteSandbox(ctx, "sb1"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("second delete: %v, want ErrNotFound", err)
	}
	assertNoFiles(t, u.opts.StateDir)
	if got := u.vms.starts(); !slices.Equal(got, []string{"sb1"}) {
		t.Errorf("VMs started: %v, want one", got)
	}
}

// A sandbox whose creation fails anywhere leaves nothing: no record, VM,
// file server, mount or file; the error says what failed.
func TestUnitCreateSandboxFailureCleansUp(t *testing.T) {
	for _, tc := range []struct {
		name string
		// fail arranges the failure; the VM's agent when there is one.
		fail func(u *unitRuntime)
		want error
	}{
		{"boot", func(u *unitRuntime) { u.vms.startErr = errAgent }, errAgent},
		{"container create in the guest", func(u *unitRuntime) { u.vms.agentFails = "CreateContainer" }, errAgent},
		{"bad virtiofsd", func(u *unitRuntime) { u.Runtime.opts.Virtiofsd = "/nonexistent/virtiofsd" }, os.ErrNotExist},
	} {
		t.Run(tc.name, func(t *testing.T) {
			u := newUnitRuntime(t)
			ctx := context.Background()
			tc.fail(u)
			cfg := unitSandboxConfig(t, "sb1")
			_, err := u.CreateSandbox(ctx, cfg)
			if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), "sb1") {
				t.Fatalf("CreateSandbox: %v, want an error naming the sandbox and wrapping %v", err, tc.want)
			}
			if _, err := u.again(t).FetchSandbox(ctx, "sb1"); !errors.Is(err, ErrNotFound) {
				t.Errorf("fetch after a failed create: %v, want ErrNotFound", err)
			}
			if v := u.vms.vm("sb1"); v != nil {
				t.Errorf("VM left running (stopped %v)", v.stopped)
			}
			if pids := testutil.ProcessesMentioning(u.opts.StateDir); len(pids) > 0 {
				t.Errorf("processes left: %v", pids)
			}
			assertNoFiles(t, u.opts.StateDir)
			// The ID is free again.
			u.vms.startErr, u.vms.agentFails = nil, ""
			u.Runtime.opts.Virtiofsd = u.opts.Virtiofsd
			sb, err := u.CreateSandbox(ctx, unitSandboxConfig(t, "sb1"))
			if err != nil {
				t.Fatalf("create after a failed create: %v", err)
			}
			if err := sb.Delete(ctx); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// Invalid IDs are refused before anything is booted or written.
func TestUnitInvalidIDs(t *testing.T) {
	u := newUnitRuntime(t)
	ctx := context.Background()
	for _, id := range []string{"", "-a", ".hidden", "a/b", "..", "a b", strings.Repeat("x", 65)} {
		cfg := unitSandboxConfig(t, "ok")
		cfg.ID = id
		if _, err := u.CreateSandbox(ctx, cfg); !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("sandbox id %q: %v, want ErrInvalidConfig", id, err)
		}
		if _, err := u.FetchSandbox(ctx, id); !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("fetch of sandbox id %q: %v, want ErrInvalidConfig", id, err)
		}
		cfg = unitSandboxConfig(t, "ok")
		cfg.Containers[0].ID = id
		if _, err := u.CreateSandbox(ctx, cfg); !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("container id %q: %v, want ErrInvalidConfig", id, err)
		}
	}
	if got := u.vms.starts(); len(got) > 0 {
		t.Errorf("VMs booted for invalid IDs: %v", got)
	}
	if ids, err := u.store.List(); err != nil || len(ids) > 0 {
		t.Errorf("records after invalid creates: %v, %v", ids, err)
	}
	assertNoFiles(t, u.opts.StateDir) // not even a lock file

	sb, v := u.running(t, "sb1")
	a := v.agent
	if _, err := sb.EnterContainer(ctx, "sb1", "../x", specs.Process{Args: []string{"sh"}}); !errors.Is(err, ErrInvalidConfig) {
		t.Errorf("exec id ../x: %v, want ErrInvalidConfig", err)
	}
	if _, err := sb.EnterContainer(ctx, "sb1", "", specs.Process{}); !errors.Is(err, ErrInvalidConfig) {
		t.Errorf("exec without args: %v, want ErrInvalidConfig", err)
	}
	if got := a.List("ExecProcess"); len(got) > 0 {
		t.Errorf("agent asked to exec invalid processes: %v", got)
	}
}

// Creating a sandbox that exists fails without touching it.
func TestUnitCreateSandboxExists(t *testing.T) {
	u := newUnitRuntime(t)
	ctx := context.Background()
	sb, err := u.CreateSandbox(ctx, unitSandboxConfig(t, "sb1"))
	if err != nil {
		t.Fatal(err)
	}
	defer sb.Delete(ctx)
	if _, err := u.again(t).CreateSandbox(ctx, unitSandboxConfig(t, "sb1")); !errors.Is(err, ErrExists) {
		t.Fatalf("second create: %v, want ErrExists", err)
	}
	if got := u.vms.starts(); len(got) != 1 {
		t.Errorf("VMs started: %v, want only the first", got)
	}
	if v := u.vms.vm("sb1"); v == nil || !v.isRunning() {
		t.Fatal("the existing sandbox's VM was stopped")
	}
	st, err := u.StatusSandbox(ctx, "sb1")
	if err != nil || st.State != StateReady {
		t.Fatalf("existing sandbox after a second create: %+v, %v", st, err)
	}
}

// Containers of a sandbox: create, duplicates, unknown IDs, exec, delete,
// and a failed create in the guest that leaves nothing shared.
func TestUnitContainers(t *testing.T) {
	u := newUnitRuntime(t)
	ctx := context.Background()
	sb, v := u.running(t, "sb1")
	a := v.agent

	b, spec := unitBundle(t, "sleep", "9")
	spec.Process.Env = []string{"X=1"}
	// A path naming the VM's process is the pod's namespace; one naming
	// another process is the host's, which cannot be joined.
	spec.Linux.Namespaces = append(spec.Linux.Namespaces, specs.LinuxNamespace{Type: specs.IPCNamespace, Path: "/proc/1/ns/ipc"})
	if err := sb.CreateContainer(ctx, ContainerConfig{ID: "c2", Bundle: b, Spec: spec}); !errors.Is(err, ErrInvalidConfig) {
		t.Errorf("container joining a host namespace: %v, want ErrInvalidConfig", err)
	}
	spec.Linux.Namespaces[len(spec.Linux.Namespaces)-1].Path = fmt.Sprintf("/proc/%d/ns/ipc", fakeVMPid)
	if err := sb.CreateContainer(ctx, ContainerConfig{ID: "c2", Bundle: b, Spec: spec}); err != nil {
		t.Fatal(err)
	}
	if got := a.created["c2"].join; len(got) != 1 || got[specs.IPCNamespace] != "sb1" {
		t.Errorf("second container joins %v, want the pod container sb1's IPC namespace", got)
	}
	if err := sb.CreateContainer(ctx, ContainerConfig{ID: "c2", Bundle: b, Spec: spec}); !errors.Is(err, ErrExists) {
		t.Errorf("duplicate container: %v, want ErrExists", err)
	}
	if err := sb.CreateContainer(ctx, ContainerConfig{ID: "c3", Bundle: "relative", Spec: spec}); !errors.Is(err, ErrInvalidConfig) {
		t.Errorf("relative bundle: %v, want ErrInvalidConfig", err)
	}
	for name, op := range map[string]func() error{
		"start":  func() error { return sb.StartContainer(ctx, "nope") },
		"signal": func() error { return sb.KillContainer(ctx, "nope", syscall.SIGKILL, false) },
		"delete": func() error { return sb.DeleteContainer(ctx, "nope") },
		"status": func() error { _, err := sb.StatusContainer(ctx, "nope"); return err },
	} {
		if err := op(); !errors.Is(err, ErrNotFound) {
			t.Errorf("%s of an unknown container: %v, want ErrNotFound", name, err)
		}
	}

	// Seen by another process: the record has the container.
	other, err := u.again(t).FetchSandbox(ctx, "sb1")
	if err != nil {
		t.Fatal(err)
	}
	defer other.Release()
	if cs, err := other.StatusContainer(ctx, "c2"); err != nil || cs.State != StateReady || cs.Bundle != b {
		t.Fatalf("c2 seen by another runtime: %+v, %v", cs, err)
	}
	if err := other.StartContainer(ctx, "c2"); err != nil {
		t.Fatal(err)
	}
	execID, err := other.EnterContainer(ctx, "c2", "", specs.Process{Args: []string{"ls"}})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(execID, "exec-") {
		t.Errorf("generated exec id %q", execID)
	}
	if got := a.List("ExecProcess c2"); len(got) != 1 || !strings.Contains(got[0], "[X=1] /") {
		t.Errorf("exec without env and cwd: %v, want the container's env and /", got)
	}
	if err := other.DeleteProcess(ctx, "c2", ""); !errors.Is(err, ErrInvalidConfig) {
		t.Errorf("delete of the init process: %v, want ErrInvalidConfig", err)
	}

	// Stopping a process that ignores SIGTERM: SIGKILL after the timeout.
	a.ignoreTerm = true
	if err := other.StopContainer(ctx, "c2", 20*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	if got := a.List("SignalProcess c2"); !slices.Equal(got, []string{"SignalProcess c2  terminated false", "SignalProcess c2  killed true"}) {
		t.Errorf("signals to stop c2: %q, want SIGTERM then SIGKILL to all", got)
	}
	if st, err := other.WaitProcess(ctx, "c2", ""); err != nil || st.Signal != int(syscall.SIGKILL) {
		t.Errorf("wait after stop: %+v, %v", st, err)
	}

	if err := sb.DeleteContainer(ctx, "c2"); err != nil {
		t.Fatal(err)
	}
	if a.status("c2") != protocol.ContainerState_UNKNOWN {
		t.Error("c2 still in the guest after DeleteContainer")
	}
	if _, err := u.again(t).StatusSandbox(ctx, "sb1"); err != nil {
		t.Fatal(err)
	}
	if st, _ := u.StatusSandbox(ctx, "sb1"); len(st.Containers) != 1 {
		t.Errorf("containers after delete: %+v, want only sb1", st.Containers)
	}
	if m := testutil.MountsUnder(sb.sharedDir() + "/host/c2"); len(m) > 0 {
		t.Errorf("c2's shared mounts left: %v", m)
	}

	// A create the guest refuses leaves no record and no shared mount.
	a.failOn("CreateContainer")
	b3, spec3 := unitBundle(t, "sh")
	if err := sb.CreateContainer(ctx, ContainerConfig{ID: "c3", Bundle: b3, Spec: spec3}); !errors.Is(err, errAgent) {
		t.Fatalf("create refused by the guest: %v, want the agent's error", err)
	}
	if _, err := sb.StatusContainer(ctx, "c3"); !errors.Is(err, ErrNotFound) {
		t.Errorf("c3 after a failed create: %v, want ErrNotFound", err)
	}
	if m := testutil.MountsUnder(sb.sharedDir() + "/host/c3"); len(m) > 0 {
		t.Errorf("c3's shared mounts left: %v", m)
	}
}

// Without force an agent that fails to remove a container aborts the
// stop and the sandbox keeps running; with force it stops.
func TestUnitStopErrors(t *testing.T) {
	u := newUnitRuntime(t)
	ctx := context.Background()
	sb, v := u.running(t, "sb1")
	v.agent.failOn("RemoveContainer")
	if err := sb.Stop(ctx, false); !errors.Is(err, errAgent) {
		t.Fatalf("stop: %v, want the agent's error", err)
	}
	if st := sb.Status(ctx); st.State != StateRunning || !v.isRunning() {
		t.Fatalf("after a failed stop: %s (vm running %v), want running", st.State, v.isRunning())
	}
	if err := sb.Stop(ctx, true); err != nil {
		t.Fatal(err)
	}
	if st := sb.Status(ctx); st.State != StateStopped || v.isRunning() {
		t.Fatalf("after a forced stop: %s (vm running %v)", st.State, v.isRunning())
	}
}

// A sandbox whose agent cannot be reached is still fetched, reported
// unknown, and can be deleted; what needs the agent fails with why.
func TestUnitUnreachableAgent(t *testing.T) {
	u := newUnitRuntime(t)
	ctx := context.Background()
	sb, _ := u.running(t, "sb1")
	sb.Release()
	u.vms.openErr = func(string) error { return errAgent }
	other, err := u.again(t).FetchSandbox(ctx, "sb1")
	if err != nil {
		t.Fatalf("fetch of a sandbox whose agent does not answer: %v", err)
	}
	if st := other.Status(ctx); st.State != StateUnknown {
		t.Errorf("state %s, want unknown", st.State)
	}
	if err := other.StartContainer(ctx, "sb1"); !errors.Is(err, errAgent) {
		t.Errorf("start: %v, want the reason the agent is unreachable", err)
	}
	if err := other.Delete(ctx); err != nil {
		t.Fatal(err)
	}
	if u.vms.vm("sb1") != nil {
		t.Error("VM left after delete")
	}
	assertNoFiles(t, u.opts.StateDir)
}

// Monitor reports the VM's exit, and stops a VM whose file server died.
func TestUnitMonitor(t *testing.T) {
	u := newUnitRuntime(t)
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		kill func(sb *Sandbox, v *fakeVM)
		want string
	}{
		{"vm exits", func(_ *Sandbox, v *fakeVM) { v.exit() }, "vm exited"},
		{"file server exits", func(sb *Sandbox, _ *fakeVM) {
			storage.LoadVirtiofsd(sb.vfsPidFile(), sb.vfsSocket()).Stop(ctx)
		}, "virtiofsd"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sb, v := u.running(t, "sb1")
			ch := sb.Monitor()
			select {
			case err := <-ch:
				t.Fatalf("monitor reported %v before anything exited", err)
			case <-time.After(20 * time.Millisecond):
			}
			tc.kill(sb, v)
			select {
			case err := <-ch:
				if !IsGuestDied(err) || !strings.Contains(err.Error(), tc.want) {
					t.Errorf("monitor: %v, want a guest-died error naming %q", err, tc.want)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("monitor did not report")
			}
			if v.isRunning() {
				t.Error("VM still running")
			}
			if st := sb.Status(ctx); st.State != StateStopped {
				t.Errorf("state after the VM exited: %s", st.State)
			}
		})
	}
}
