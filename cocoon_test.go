package cocoon_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cocoon-runtime/cocoon"
	"github.com/cocoon-runtime/cocoon/internal/testutil"
	"github.com/cocoon-runtime/cocoon/specutil"
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
	return cocoon.SandboxConfig{
		ID:          id,
		Hypervisor:  env.Config(),
		BootTimeout: 60 * time.Second,
		Containers:  []cocoon.ContainerConfig{{ID: id, Bundle: bundle}},
	}
}

// output collects a process's stdout and stderr.
type output struct {
	stdout, stderr bytes.Buffer
	wg             sync.WaitGroup
}

func attach(t *testing.T, sb *cocoon.Sandbox, id, execID string, stdin io.Reader) *output {
	t.Helper()
	in, out, errs, err := sb.IOStream(context.Background(), id, execID)
	if err != nil {
		t.Fatal(err)
	}
	o := &output{}
	o.wg.Add(2)
	go func() { defer o.wg.Done(); io.Copy(&o.stdout, out); out.Close() }()
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
	if m := testutil.MountsUnder(env.StateDir); len(m) > 0 {
		t.Errorf("mounts left behind: %v", m)
	}
	if _, err := rt.StatusSandbox(context.Background(), id); !errors.Is(err, cocoon.ErrNotFound) {
		t.Errorf("StatusSandbox after delete = %v", err)
	}
}

var _ = syscall.SIGKILL
var _ specs.Process
