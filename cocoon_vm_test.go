package cocoon_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cocoon-runtime/cocoon"
	"github.com/cocoon-runtime/cocoon/internal/specutil"
	"github.com/cocoon-runtime/cocoon/internal/testutil"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// newRuntime returns a Runtime with a private state directory and the test
// environment's guest image.
func newRuntime(t *testing.T) (*cocoon.Runtime, *testutil.Env) {
	t.Helper()
	env := testutil.NeedVM(t)
	rt, err := cocoon.New(cocoon.Options{StateDir: env.StateDir, DataDir: filepath.Dir(env.CacheDir)})
	if err != nil {
		t.Fatal(err)
	}
	return rt, env
}

// bundle writes a busybox bundle running args.
func bundle(t *testing.T, args ...string) string {
	t.Helper()
	dir := t.TempDir()
	if err := specutil.BusyboxRootfs(filepath.Join(dir, "rootfs"), ""); err != nil {
		t.Skip(err)
	}
	if err := specutil.WriteBundle(dir, specutil.Default(args...)); err != nil {
		t.Fatal(err)
	}
	return dir
}

// sandboxConfig is a one-container sandbox config.
func sandboxConfig(env *testutil.Env, id, bundle string) cocoon.SandboxConfig {
	hv := env.Config()
	return cocoon.SandboxConfig{
		ID:          id,
		VM:          cocoon.VMConfig{Kernel: hv.Kernel, Initrd: hv.Initrd, VCPUs: hv.VCPUs, MemoryMiB: hv.MemoryMiB, Accelerator: hv.Accelerator},
		BootTimeout: 60 * time.Second,
		Containers:  []cocoon.ContainerConfig{{ID: id, Bundle: bundle}},
	}
}

// output collects a process's stdout and stderr.
type output struct {
	stdout, stderr bytes.Buffer
	wg             sync.WaitGroup
	// firstOut is when stdout's first bytes arrived.
	firstOut time.Time
}

// stampedWriter records when its first write came.
type stampedWriter struct {
	w     io.Writer
	first *time.Time
}

func (s stampedWriter) Write(b []byte) (int, error) {
	if s.first.IsZero() {
		*s.first = time.Now()
	}
	return s.w.Write(b)
}

func attach(t *testing.T, sb *cocoon.Sandbox, id, execID string, stdin io.Reader) *output {
	t.Helper()
	in, out, errs, err := sb.IOStream(context.Background(), id, execID)
	if err != nil {
		t.Fatal(err)
	}
	o := &output{}
	o.wg.Add(2)
	go func() {
		defer o.wg.Done()
		io.Copy(stampedWriter{&o.stdout, &o.firstOut}, out)
		out.Close()
	}()
	go func() {
		defer o.wg.Done()
		if errs != nil {
			io.Copy(&o.stderr, errs)
			errs.Close()
		}
	}()
	go func() {
		if stdin != nil {
			io.Copy(in, stdin)
		}
		in.Close()
	}()
	return o
}

// execIn runs args in container cid and returns its output (stdout then
// stderr) and exit status.
func execIn(t *testing.T, sb *cocoon.Sandbox, cid string, args ...string) (string, cocoon.ExitStatus) {
	t.Helper()
	ctx := context.Background()
	execID, err := sb.EnterContainer(ctx, cid, "", specs.Process{Args: args, Env: []string{"PATH=/bin"}, Cwd: "/"})
	if err != nil {
		t.Fatal(err)
	}
	o := attach(t, sb, cid, execID, nil)
	o.wg.Wait()
	st, err := sb.WaitProcess(ctx, cid, execID)
	if err != nil {
		t.Fatal(err)
	}
	return o.stdout.String() + o.stderr.String(), st
}

func cleanup(t *testing.T, rt *cocoon.Runtime, id string) {
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := rt.DeleteSandbox(ctx, id); err != nil && !errors.Is(err, cocoon.ErrNotFound) {
			t.Errorf("cleanup: %v", err)
		}
	})
}

func TestRunExitCodeAndOutput(t *testing.T) {
	rt, env := newRuntime(t)
	ctx := context.Background()
	id := testutil.UniqueID(t)
	b := bundle(t, "sh", "-c", "echo out; echo err >&2; read line; echo got $line; exit 7")
	sb, err := rt.CreateSandbox(ctx, sandboxConfig(env, id, b))
	if err != nil {
		t.Fatal(err)
	}
	cleanup(t, rt, id)
	o := attach(t, sb, id, "", strings.NewReader("hello\n"))
	if err := sb.StartContainer(ctx, id); err != nil {
		t.Fatal(err)
	}
	o.wg.Wait()
	st, err := sb.WaitProcess(ctx, id, "")
	if err != nil {
		t.Fatal(err)
	}
	if st.Code != 7 {
		t.Errorf("exit code %d, want 7", st.Code)
	}
	if got := o.stdout.String(); got != "out\ngot hello\n" {
		t.Errorf("stdout %q", got)
	}
	if got := o.stderr.String(); got != "err\n" {
		t.Errorf("stderr %q", got)
	}
	pids := sb.Status(ctx).HypervisorPids
	if err := sb.Delete(ctx); err != nil {
		t.Fatal(err)
	}
	assertSandboxGone(t, rt, env, id, pids)
}

// assertSandboxGone checks that nothing of sandbox id is left.
func assertSandboxGone(t *testing.T, rt *cocoon.Runtime, env *testutil.Env, id string, pids []int) {
	t.Helper()
	testutil.AssertNoLeaks(t, env, filepath.Join("vm", id), pids)
	for _, dir := range []string{filepath.Join(env.StateDir, "sandboxes", id), filepath.Join(env.StateDir, "vm", id)} {
		if _, err := os.Stat(dir); !os.IsNotExist(err) {
			t.Errorf("%s left behind", dir)
		}
		if procs := testutil.ProcessesMentioning(dir); len(procs) > 0 {
			t.Errorf("processes left behind: %v", procs)
		}
	}
	// The tmpfs of template RAM is the runtime's, not the sandbox's.
	mem := filepath.Join(env.StateDir, "mem")
	if m := slices.DeleteFunc(testutil.MountsUnder(env.StateDir), func(m string) bool { return m == mem }); len(m) > 0 {
		t.Errorf("mounts left behind: %v", m)
	}
	if _, err := rt.StatusSandbox(context.Background(), id); !errors.Is(err, cocoon.ErrNotFound) {
		t.Errorf("StatusSandbox after delete = %v", err)
	}
}

// TestSandboxWithTwoContainers covers exec (same filesystem and pid
// namespace), ps, kill, a second container sharing the VM, and memory
// limits, in one VM to keep the suite short.
func TestSandboxWithTwoContainers(t *testing.T) {
	rt, env := newRuntime(t)
	ctx := context.Background()
	id := testutil.UniqueID(t)
	b1 := bundle(t, "sh", "-c", "echo ready > /tmp/mark; exec sleep 1000")
	sb, err := rt.RunSandbox(ctx, sandboxConfig(env, id, b1))
	if err != nil {
		t.Fatal(err)
	}
	cleanup(t, rt, id)

	run := func(cid string, args ...string) (string, cocoon.ExitStatus) {
		t.Helper()
		return execIn(t, sb, cid, args...)
	}
	// The init wrote /tmp/mark before exec'ing sleep; wait for it.
	var out string
	for i := 0; i < 100; i++ {
		if out, _ = run(id, "cat", "/tmp/mark"); out == "ready\n" {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if out != "ready\n" {
		t.Fatalf("exec does not see the container's filesystem: %q", out)
	}
	if out, _ := run(id, "ps", "-o", "pid,comm"); !strings.Contains(out, "1 sleep") {
		t.Errorf("exec does not share the pid namespace: ps says %q", out)
	}
	if _, st := run(id, "sh", "-c", "exit 3"); st.Code != 3 {
		t.Errorf("exec exit code %d, want 3", st.Code)
	}
	// An exec whose status was collected can be forgotten; the guest then
	// no longer knows it, and the init process cannot be deleted this way.
	execID, err := sb.EnterContainer(ctx, id, "", specs.Process{Args: []string{"true"}})
	if err != nil {
		t.Fatal(err)
	}
	attach(t, sb, id, execID, nil).wg.Wait()
	if _, err := sb.WaitProcess(ctx, id, execID); err != nil {
		t.Fatal(err)
	}
	if err := sb.DeleteProcess(ctx, id, execID); err != nil {
		t.Fatalf("DeleteProcess: %v", err)
	}
	if _, err := sb.WaitProcess(ctx, id, execID); err == nil {
		t.Error("WaitProcess still knows a deleted exec")
	}
	if err := sb.DeleteProcess(ctx, id, ""); !errors.Is(err, cocoon.ErrInvalidConfig) {
		t.Errorf("DeleteProcess of the init = %v, want ErrInvalidConfig", err)
	}
	procs, err := sb.ProcessListContainer(ctx, id)
	if err != nil || len(procs) == 0 || !strings.Contains(procs[0].Command, "sleep") {
		t.Errorf("ProcessListContainer = %+v, %v", procs, err)
	}

	// A second container with a memory limit, in the same VM.
	// Filling tmpfs charges memory that cannot be reclaimed (no swap), in
	// big chunks: the OOM killer soon ends dd, the container's init.
	spec2 := specutil.Default("dd", "if=/dev/zero", "of=/dev/shm/fill", "bs=1M", "count=60")
	limit := int64(32 << 20)
	spec2.Linux.Resources = &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: &limit}}
	b2 := bundle(t)
	if err := specutil.WriteBundle(b2, spec2); err != nil {
		t.Fatal(err)
	}
	if err := sb.CreateContainer(ctx, cocoon.ContainerConfig{ID: "hog", Bundle: b2}); err != nil {
		t.Fatal(err)
	}
	if err := sb.CreateContainer(ctx, cocoon.ContainerConfig{ID: "hog", Bundle: b2}); !errors.Is(err, cocoon.ErrExists) {
		t.Errorf("duplicate container = %v, want ErrExists", err)
	}
	o := attach(t, sb, "hog", "", nil)
	if err := sb.StartContainer(ctx, "hog"); err != nil {
		t.Fatal(err)
	}
	o.wg.Wait()
	st, err := sb.WaitProcess(ctx, "hog", "")
	if err != nil {
		t.Fatal(err)
	}
	if !st.OOMKilled || st.Code != 137 {
		t.Errorf("memory limit not enforced: status %+v, output %q", st, o.stdout.String())
	}
	if stats, err := sb.StatsContainer(ctx, "hog"); err != nil || stats.Memory.OOMKillEvents == 0 || stats.Memory.LimitBytes != uint64(limit) {
		t.Errorf("stats after OOM = %+v, %v", stats, err)
	}
	if st2 := sb.Status(ctx); len(st2.Containers) != 2 {
		t.Errorf("sandbox lists %d containers, want 2", len(st2.Containers))
	}

	// Kill the first container's init with SIGTERM... sleep as PID 1 of its
	// namespace ignores it, so SIGKILL it.
	if err := sb.KillContainer(ctx, id, syscall.SIGKILL, false); err != nil {
		t.Fatal(err)
	}
	if st, err := sb.WaitProcess(ctx, id, ""); err != nil || st.Code != 137 || st.Signal != 9 {
		t.Errorf("after SIGKILL: %+v, %v", st, err)
	}
	if cs, err := sb.StatusContainer(ctx, id); err != nil || cs.State != cocoon.StateStopped {
		t.Errorf("status after kill = %+v, %v", cs, err)
	}
	pids := sb.Status(ctx).HypervisorPids
	if err := sb.Delete(ctx); err != nil {
		t.Fatal(err)
	}
	assertSandboxGone(t, rt, env, id, pids)
}

func TestOutputThroughputAndTTY(t *testing.T) {
	rt, env := newRuntime(t)
	ctx := context.Background()
	id := testutil.UniqueID(t)
	b := bundle(t, "sh", "-c", "head -c 10000000 /dev/zero | tr '\\0' a; head -c 3000000 /dev/zero | tr '\\0' b >&2")
	sb, err := rt.CreateSandbox(ctx, sandboxConfig(env, id, b))
	if err != nil {
		t.Fatal(err)
	}
	cleanup(t, rt, id)
	o := attach(t, sb, id, "", nil)
	if err := sb.StartContainer(ctx, id); err != nil {
		t.Fatal(err)
	}
	o.wg.Wait()
	if st, err := sb.WaitProcess(ctx, id, ""); err != nil || st.Code != 0 {
		t.Fatalf("exit %+v, %v", st, err)
	}
	if n := o.stdout.Len(); n != 10000000 || strings.Trim(o.stdout.String(), "a") != "" {
		t.Errorf("stdout: %d bytes, want 10000000 of 'a'", n)
	}
	if n := o.stderr.Len(); n != 3000000 || strings.Trim(o.stderr.String(), "b") != "" {
		t.Errorf("stderr: %d bytes, want 3000000 of 'b'", n)
	}

	// A second container with a terminal in the same VM.
	spec := specutil.Default("sh", "-c", "tty; read x; stty size")
	spec.Process.Terminal = true
	tb := bundle(t)
	specutil.WriteBundle(tb, spec)
	if err := sb.CreateContainer(ctx, cocoon.ContainerConfig{ID: "tty", Bundle: tb}); err != nil {
		t.Fatal(err)
	}
	pr, pw := io.Pipe()
	to := attach(t, sb, "tty", "", pr)
	if err := sb.StartContainer(ctx, "tty"); err != nil {
		t.Fatal(err)
	}
	if err := sb.WinsizeProcess(ctx, "tty", "", 40, 100); err != nil {
		t.Fatal(err)
	}
	pw.Write([]byte("go\n"))
	to.wg.Wait()
	pw.Close()
	got := to.stdout.String()
	if !strings.Contains(got, "/dev/pts/") || !strings.Contains(got, "40 100") {
		t.Errorf("tty output %q: want a /dev/pts path and size 40 100", got)
	}
}

// TestSecondProcessActsOnSandbox runs a sandbox from this process and
// lists, kills and deletes it from another Runtime, as `cocoon list` and
// `cocoon kill` in another process would; then kills QEMU and checks the
// sandbox can still be deleted cleanly.
func TestSecondProcessActsOnSandbox(t *testing.T) {
	rt, env := newRuntime(t)
	ctx := context.Background()
	id := testutil.UniqueID(t)
	sb, err := rt.RunSandbox(ctx, sandboxConfig(env, id, bundle(t, "sleep", "1000")))
	if err != nil {
		t.Fatal(err)
	}
	cleanup(t, rt, id)
	pids := sb.Status(ctx).HypervisorPids
	// This process keeps its handle open.
	rt2, err := cocoon.New(cocoon.Options{StateDir: env.StateDir, DataDir: filepath.Dir(env.CacheDir)})
	if err != nil {
		t.Fatal(err)
	}
	list, err := rt2.ListSandbox(ctx)
	if err != nil || len(list) != 1 || list[0].ID != id || list[0].State != cocoon.StateRunning {
		t.Fatalf("ListSandbox = %+v, %v", list, err)
	}
	if len(list[0].Containers) != 1 || list[0].Containers[0].State != cocoon.StateRunning {
		t.Fatalf("containers %+v", list[0].Containers)
	}
	sb2, err := rt2.FetchSandbox(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if err := sb2.KillContainer(ctx, id, syscall.SIGKILL, true); err != nil {
		t.Fatal(err)
	}
	if st, err := sb.WaitProcess(ctx, id, ""); err != nil || st.Code != 137 {
		t.Errorf("wait in first process after kill from second = %+v, %v", st, err)
	}
	sb2.Release()

	// QEMU dies: the first handle learns it, and delete cleans up.
	mon := sb.Monitor()
	syscall.Kill(pids[0], syscall.SIGKILL)
	select {
	case err := <-mon:
		if !cocoon.IsGuestDied(err) {
			t.Errorf("monitor error %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("monitor did not report the VM's death")
	}
	if err := rt2.DeleteSandbox(ctx, id); err != nil {
		t.Fatal(err)
	}
	sb.Release()
	assertSandboxGone(t, rt, env, id, pids)
}

func TestBadInput(t *testing.T) {
	rt, env := newRuntime(t)
	ctx := context.Background()
	good := bundle(t, "true")
	noConfig := t.TempDir()
	noRootfs := t.TempDir()
	specutil.WriteBundle(noRootfs, specutil.Default("true"))
	cases := []struct {
		name, id, bundle string
	}{
		{"path in id", "../x", good},
		{"slash in id", "a/b", good},
		{"missing config.json", "", noConfig},
		{"missing rootfs", "", noRootfs},
		{"relative bundle", "", "relative/dir"},
		// A CRI sandbox id is 64 characters: with this test's state
		// directory its sockets' paths would not fit.
		{"socket path too long", strings.Repeat("f", 64), good},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			id := c.id
			if id == "" {
				id = testutil.UniqueID(t)
			}
			_, err := rt.RunSandbox(ctx, sandboxConfig(env, id, c.bundle))
			if !errors.Is(err, cocoon.ErrInvalidConfig) {
				t.Fatalf("RunSandbox = %v, want ErrInvalidConfig", err)
			}
			t.Log(err)
			if c.id == "" {
				assertSandboxGone(t, rt, env, id, nil)
			}
		})
	}
	t.Run("command not found", func(t *testing.T) {
		id := testutil.UniqueID(t)
		_, err := rt.RunSandbox(ctx, sandboxConfig(env, id, bundle(t, "nosuchcmd")))
		if err == nil || !strings.Contains(err.Error(), "nosuchcmd") {
			t.Fatalf("RunSandbox = %v, want an error naming the command", err)
		}
		t.Log(err)
		assertSandboxGone(t, rt, env, id, nil)
	})
	t.Run("duplicate id", func(t *testing.T) {
		id := testutil.UniqueID(t)
		sb, err := rt.CreateSandbox(ctx, sandboxConfig(env, id, good))
		if err != nil {
			t.Fatal(err)
		}
		cleanup(t, rt, id)
		if _, err := rt.CreateSandbox(ctx, sandboxConfig(env, id, good)); !errors.Is(err, cocoon.ErrExists) {
			t.Fatalf("second CreateSandbox = %v, want ErrExists", err)
		}
		pids := sb.Status(ctx).HypervisorPids
		if err := sb.Delete(ctx); err != nil {
			t.Fatal(err)
		}
		assertSandboxGone(t, rt, env, id, pids)
	})
}

// TestDeleteHungSandbox freezes QEMU: the guest no longer answers, yet
// another process must still be able to delete the sandbox completely.
func TestDeleteHungSandbox(t *testing.T) {
	rt, env := newRuntime(t)
	ctx := context.Background()
	id := testutil.UniqueID(t)
	sb, err := rt.RunSandbox(ctx, sandboxConfig(env, id, bundle(t, "sleep", "1000")))
	if err != nil {
		t.Fatal(err)
	}
	cleanup(t, rt, id)
	pids := sb.Status(ctx).HypervisorPids
	sb.Release()
	syscall.Kill(pids[0], syscall.SIGSTOP)
	defer syscall.Kill(pids[0], syscall.SIGKILL)

	rt2, _ := cocoon.New(cocoon.Options{StateDir: env.StateDir, DataDir: filepath.Dir(env.CacheDir)})
	list, err := rt2.ListSandbox(ctx)
	if err != nil || len(list) != 1 || list[0].State != cocoon.StateUnknown {
		t.Fatalf("ListSandbox of a hung sandbox = %+v, %v", list, err)
	}
	if err := rt2.DeleteSandbox(ctx, id); err != nil {
		t.Fatal(err)
	}
	assertSandboxGone(t, rt, env, id, pids)
}
