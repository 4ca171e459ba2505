package integration

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cocoon-runtime/cocoon/internal/ctrtest"
	"github.com/cocoon-runtime/cocoon/internal/failpoint"
	"github.com/cocoon-runtime/cocoon/internal/testutil"
)

// killingShim writes a shim that kills itself (with SIGKILL) at point at
// and returns its path, for ctr's --runtime: the real shim, run with the
// failpoint in its environment (the shim's own children inherit it).
func killingShim(t *testing.T, e *env, at failpoint.Point) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "bin")
	os.Mkdir(dir, 0o755)
	shim := filepath.Join(dir, ctrtest.ShimBinary)
	script := fmt.Sprintf("#!/bin/sh\nexport %s=%s\nexec %s \"$@\"\n", failpoint.Env, at, filepath.Join(e.dir, "bin", ctrtest.ShimBinary))
	if err := os.WriteFile(shim, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return shim
}

// The shim is SIGKILLed at each moment of a pod's start; containerd then
// cleans up (it runs the shim's delete and deletes the task), and nothing
// of the pod may be left: no process, state, mount, nor a half-made VM
// template; the same ID works again.
func TestShimKilledAtEveryPhase(t *testing.T) {
	e := needContainerd(t)
	conf := e.templatesConfig(t)
	for i, at := range []failpoint.Point{failpoint.CreateBeforeBoot, failpoint.CreateAfterBoot, failpoint.ContainerCreate, failpoint.TemplateMake} {
		t.Run(string(at), func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			cid := fmt.Sprintf("shimkill%d-%d", i, time.Now().UnixNano()%1e9)
			e.removeOnCleanup(t, cid)
			var annotation []string
			if at == failpoint.TemplateMake {
				// A configuration no template exists for yet.
				annotation = []string{"--annotation", fmt.Sprintf("io.cocoon.config.hypervisor.memory_mib=%d", 300+i)}
			}
			args := append([]string{"run", "--rm", "--runtime", killingShim(t, e, at), "--runtime-config-path", conf}, annotation...)
			if _, stderr, err := e.ctrd.Ctr(ctx, append(args, ctrtest.BusyboxImage, cid, "true")...); err == nil {
				t.Fatalf("ctr run succeeded although its shim was killed at %s: %s", at, stderr)
			}
			// containerd notices the dead shim and runs its delete; then the
			// task and the container go.
			for deadline := time.Now().Add(30 * time.Second); taskStatus(t, e, ctx, cid) != "" && time.Now().Before(deadline); {
				e.ctrd.Ctr(ctx, "task", "delete", "-f", cid)
				time.Sleep(200 * time.Millisecond)
			}
			// ctr run --rm removed the container; a snapshot may be left by
			// ctr, which is not the runtime's to remove.
			e.ctrd.Ctr(ctx, "container", "delete", cid)
			e.ctrd.Ctr(ctx, "snapshot", "rm", cid)
			e.assertNoLeaks(t, cid)

			args = append([]string{"run", "--rm", "--runtime", "io.containerd.cocoon.v2", "--runtime-config-path", conf}, annotation...)
			e.ctr(t, ctx, append(args, ctrtest.BusyboxImage, cid, "true")...)
			e.assertNoLeaks(t, cid)
			e.assertNoUnfinishedTemplates(t)
		})
	}
}

// templatesConfig writes (once) and returns a Cocoon configuration for
// the shim with VM templates on, as the shim ships, and the memory size
// open to pod annotations.
func (e *env) templatesConfig(t *testing.T) string {
	t.Helper()
	conf := filepath.Join(e.dir, "cocoon-templates-ann.toml")
	vmEnv := testutil.NeedVM(t)
	err := ctrtest.CocoonConfig{
		Kernel: vmEnv.Kernel, Initrd: vmEnv.Initrd, Accelerator: os.Getenv("COCOON_ACCEL"),
		StateDir: e.stateDir, DataDir: filepath.Dir(vmEnv.CacheDir), Templates: true,
		EnableAnnotations: []string{"hypervisor.memory_mib"},
	}.Write(conf)
	if err != nil {
		t.Fatal(err)
	}
	return conf
}

// assertNoUnfinishedTemplates fails if a template VM runs (templates are
// saved and stopped once made) or a template directory has no saved state.
func (e *env) assertNoUnfinishedTemplates(t *testing.T) {
	t.Helper()
	for _, pid := range testutil.ProcessesMentioning(filepath.Join(e.stateDir, "factory") + "/") {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		t.Errorf("template VM still runs: %d %s", pid, strings.ReplaceAll(string(b), "\x00", " "))
	}
	dirs, _ := os.ReadDir(filepath.Join(e.stateDir, "factory"))
	for _, d := range dirs {
		if _, err := os.Stat(filepath.Join(e.stateDir, "factory", d.Name(), "state")); err != nil {
			t.Errorf("unfinished template %s left", d.Name())
		}
	}
}
