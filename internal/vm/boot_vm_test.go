package vm_test

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/cocoon-runtime/cocoon/internal/testutil"
	"github.com/cocoon-runtime/cocoon/internal/vm"
)

func TestBootCheckPauseStop(t *testing.T) {
	env := testutil.NeedVM(t)
	ctx := context.Background()
	id := testutil.UniqueID(t)
	start := time.Now()
	v, err := vm.Start(ctx, id, env.Config(), env.Options())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("launch to agent: %v", time.Since(start))
	env.Cleanup(t, id)

	if err := v.Agent.Check(ctx); err != nil {
		t.Fatal(err)
	}
	ver, err := v.Agent.Version(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if ver.Agent == "" || ver.Protocol == 0 {
		t.Fatalf("version = %+v", ver)
	}
	d, err := v.Agent.GuestDetails(ctx)
	if err != nil {
		t.Fatal(err)
	}
	host, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	if d.KernelRelease == "" || d.KernelRelease+"\n" == string(host) {
		t.Fatalf("guest kernel %q should differ from the host's %q", d.KernelRelease, host)
	}
	if d.OnlineCPUs != 1 || d.MemTotal < 128<<20 || d.MemTotal > 256<<20 {
		t.Fatalf("guest resources = %d cpus, %d bytes", d.OnlineCPUs, d.MemTotal)
	}
	t.Logf("guest %s, kernel to agent %v, modules %v", d.KernelRelease, d.BootToServe, d.Modules)

	if err := v.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	// A paused guest does not answer.
	pctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	err = v.Agent.Check(pctx)
	cancel()
	if err == nil {
		t.Fatal("paused guest answered a health check")
	}
	if err := v.Resume(ctx); err != nil {
		t.Fatal(err)
	}
	if err := v.Agent.Check(ctx); err != nil {
		t.Fatalf("after resume: %v", err)
	}

	pids := v.HV.PIDs()
	if err := v.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	testutil.AssertNoLeaks(t, env, id, pids)
}
