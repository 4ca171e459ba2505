package cocoon

import (
	"context"
	"errors"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

func limits(quota int64, period uint64, mem int64) *specs.LinuxResources {
	return &specs.LinuxResources{CPU: &specs.LinuxCPU{Quota: &quota, Period: &period}, Memory: &specs.LinuxMemory{Limit: &mem}}
}

// The VM grows when a container needs more than it has, from a second
// process too, and shrinks back (never below its boot size) when the
// container goes; an update that raises limits grows it, one that lowers
// them shrinks it; a request beyond the most refuses and changes nothing.
func TestUnitSandboxResize(t *testing.T) {
	u := newUnitRuntime(t)
	ctx := context.Background()
	cfg := unitSandboxConfig(t, "rs1")
	cfg.VM.VCPUs, cfg.VM.MemoryMiB, cfg.VM.MaxVCPUs, cfg.VM.MaxMemoryMiB = 1, 256, 4, 2048
	cfg.Resources = Resources{MemoryBytes: 256 << 20}
	sb, err := u.CreateSandbox(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer sb.Delete(ctx)
	v := u.vms.vm("rs1")
	want := func(what string, size vmSize) {
		t.Helper()
		if got, _ := v.sized(); got != size {
			t.Fatalf("%s: VM has %+v, want %+v", what, got, size)
		}
		if st := sb.Status(ctx); st.VCPUs != size.VCPUs || st.MemoryMiB != size.MemoryMiB {
			t.Fatalf("%s: status says %d vCPUs, %d MiB; want %+v", what, st.VCPUs, st.MemoryMiB, size)
		}
	}
	// Booted for the pod's 256 MiB (its container asks for nothing).
	want("created", vmSize{1, 512})
	if v.boot != (vmSize{1, 512}) || v.max != (vmSize{4, 2048}) {
		t.Fatalf("booted %+v, at most %+v", v.boot, v.max)
	}

	// A container with 1.5 CPUs and 512 MiB, created by another process.
	other, err := u.again(t).FetchSandbox(ctx, "rs1")
	if err != nil {
		t.Fatal(err)
	}
	b, spec := unitBundle(t, "sh")
	spec.Linux.Resources = limits(150000, 100000, 512<<20)
	if err := other.CreateContainer(ctx, ContainerConfig{ID: "big", Bundle: b, Spec: spec}); err != nil {
		t.Fatal(err)
	}
	other.Release()
	want("container with 1.5 CPUs and 512 MiB", vmSize{3, 768})

	// Raised to 3 CPUs and 1 GiB, then lowered to 1 CPU and 128 MiB.
	if err := sb.UpdateContainer(ctx, "big", limits(300000, 100000, 1<<30)); err != nil {
		t.Fatal(err)
	}
	want("raised", vmSize{4, 1280})
	if err := sb.UpdateContainer(ctx, "big", limits(100000, 100000, 128<<20)); err != nil {
		t.Fatal(err)
	}
	want("lowered", vmSize{2, 512})

	// Beyond the most: refused, nothing changed, the container's limits
	// as they were.
	_, before := v.sized()
	err = sb.UpdateContainer(ctx, "big", limits(100000, 100000, 4<<30))
	if !errors.Is(err, ErrInvalidConfig) {
		t.Fatalf("update beyond the most: %v, want ErrInvalidConfig", err)
	}
	if _, after := v.sized(); after != before {
		t.Errorf("a refused update resized the VM")
	}
	if n := len(v.agent.List("UpdateContainer")); n != 2 {
		t.Errorf("the agent got %d updates, want the 2 that were allowed", n)
	}
	err = sb.UpdateContainer(ctx, "big", limits(-5, 100000, 128<<20))
	if !errors.Is(err, ErrInvalidConfig) {
		t.Fatalf("a negative quota: %v, want ErrInvalidConfig", err)
	}

	// Gone: back to the boot size.
	if err := sb.DeleteContainer(ctx, "big"); err != nil {
		t.Fatal(err)
	}
	want("container deleted", vmSize{1, 512})
}

// A pod that asks for more than the most a VM may have is refused before
// anything boots.
func TestUnitSandboxTooBig(t *testing.T) {
	u := newUnitRuntime(t)
	cfg := unitSandboxConfig(t, "rs2")
	cfg.VM.MaxMemoryMiB = 1024
	cfg.Resources = Resources{MemoryBytes: 1 << 30}
	_, err := u.CreateSandbox(context.Background(), cfg)
	if !errors.Is(err, ErrInvalidConfig) {
		t.Fatalf("create: %v, want ErrInvalidConfig", err)
	}
	if len(u.vms.starts()) != 0 {
		t.Errorf("a VM was started for it")
	}
}
