package cocoon_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cocoon-runtime/cocoon"
	"github.com/cocoon-runtime/cocoon/internal/testutil"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// loadCycles and loadParallel size the load test; -short shrinks it.
const (
	loadCycles   = 100
	loadParallel = 4
)

// 100 create/run/delete cycles, 4 at a time, from VM templates as the shim
// makes them: every one runs its container to the right exit code, and
// nothing is left behind.
func TestLoadCreateRunDelete(t *testing.T) {
	env := testutil.NeedVM(t)
	cycles := loadCycles
	rt, err := cocoon.New(cocoon.Options{StateDir: env.StateDir, DataDir: filepath.Dir(env.CacheDir), VMTemplates: true})
	if err != nil {
		t.Fatal(err)
	}
	var b [loadParallel]string
	for i := range b {
		b[i] = bundle(t, "sh", "-c", fmt.Sprintf("exit %d", 10+i))
	}
	base := testutil.UniqueID(t)
	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, cycles)
	for w := range loadParallel {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < cycles; i += loadParallel {
				if err := loadCycle(rt, env, fmt.Sprintf("%s-%d", base, i), b[w], 10+w); err != nil {
					errs <- err
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	n := 0
	for err := range errs {
		n++
		if n <= 5 {
			t.Error(err)
		}
	}
	if n > 0 {
		t.Fatalf("%d of %d cycles failed", n, cycles)
	}
	t.Logf("%d cycles, %d at a time, in %v", cycles, loadParallel, time.Since(start).Round(time.Millisecond))
	assertStateEmpty(t, env)
}

func loadCycle(rt *cocoon.Runtime, env *testutil.Env, id, bundle string, want int) (err error) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cfg := sandboxConfig(env, id, bundle)
	sb, err := rt.CreateSandbox(ctx, cfg)
	if err != nil {
		return fmt.Errorf("cycle %s: %w", id, err)
	}
	defer func() {
		if derr := sb.Delete(context.Background()); derr != nil && err == nil {
			err = fmt.Errorf("cycle %s: delete: %w", id, derr)
		}
	}()
	if err := sb.Start(ctx); err != nil {
		return fmt.Errorf("cycle %s: %w", id, err)
	}
	st, err := sb.WaitProcess(ctx, id, "")
	if err != nil {
		return fmt.Errorf("cycle %s: %w", id, err)
	}
	if st.Code != want {
		return fmt.Errorf("cycle %s: exit code %d, want %d", id, st.Code, want)
	}
	return nil
}

// assertStateEmpty fails if any sandbox's processes, mounts or files are
// left in the test's state directory (complete VM templates, a cache,
// excepted).
func assertStateEmpty(t *testing.T, env *testutil.Env) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		var left []string
		for _, pid := range testutil.ProcessesMentioning(env.StateDir + "/") {
			b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
			if !strings.Contains(string(b), "template-") {
				left = append(left, fmt.Sprintf("process %d", pid))
			}
		}
		for _, m := range testutil.MountsUnder(env.StateDir) {
			if m != filepath.Join(env.StateDir, "mem") { // VM memory's tmpfs
				left = append(left, "mount "+m)
			}
		}
		for _, d := range []string{"sandboxes", "vm", "state"} {
			entries, _ := os.ReadDir(filepath.Join(env.StateDir, d))
			for _, e := range entries {
				left = append(left, filepath.Join(d, e.Name()))
			}
		}
		if len(left) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("left behind: %v", left)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// An exec storm: 1,000 execs into one container, 8 at a time, each with
// its own exit code, all reported right.
func TestExecStorm(t *testing.T) {
	rt, env := newRuntime(t)
	execs := 1000
	id := testutil.UniqueID(t)
	cleanup(t, rt, id)
	ctx := context.Background()
	sb, err := rt.RunSandbox(ctx, sandboxConfig(env, id, bundle(t, "sleep", "600")))
	if err != nil {
		t.Fatal(err)
	}
	defer sb.Release()
	start := time.Now()
	var wg sync.WaitGroup
	var mu sync.Mutex
	var failures []string
	jobs := make(chan int)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range jobs {
				code := i % 256
				execID, err := sb.EnterContainer(ctx, id, "", specs.Process{Args: []string{"sh", "-c", fmt.Sprintf("exit %d", code)}, Env: []string{"PATH=/bin"}, Cwd: "/"})
				var st cocoon.ExitStatus
				if err == nil {
					st, err = sb.WaitProcess(ctx, id, execID)
				}
				if err == nil {
					err = sb.DeleteProcess(ctx, id, execID)
				}
				if err == nil && st.Code != code {
					err = fmt.Errorf("exit code %d, want %d", st.Code, code)
				}
				if err != nil {
					mu.Lock()
					failures = append(failures, fmt.Sprintf("exec %d: %v", i, err))
					mu.Unlock()
				}
			}
		}()
	}
	for i := range execs {
		jobs <- i
	}
	close(jobs)
	wg.Wait()
	if len(failures) > 0 {
		t.Fatalf("%d of %d execs failed; first: %s", len(failures), execs, strings.Join(failures[:min(5, len(failures))], "; "))
	}
	t.Logf("%d execs, 8 at a time, in %v", execs, time.Since(start).Round(time.Millisecond))
}
