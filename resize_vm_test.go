package cocoon_test

import (
	"context"
	"log/slog"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/cocoon-runtime/cocoon"
	"github.com/cocoon-runtime/cocoon/internal/specutil"
	"github.com/cocoon-runtime/cocoon/internal/testutil"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// guestSize is what a container sees of its VM: online CPUs and MemTotal
// in MiB.
func guestSize(t *testing.T, sb *cocoon.Sandbox, cid string) (cpus, memMiB int) {
	t.Helper()
	out, st := execIn(t, sb, cid, "sh", "-c", "nproc; sed -n 's/^MemTotal: *\\([0-9]*\\) kB/\\1/p' /proc/meminfo")
	f := strings.Fields(out)
	if st.Code != 0 || len(f) != 2 {
		t.Fatalf("nproc and MemTotal: %q (exit %d)", out, st.Code)
	}
	cpus, _ = strconv.Atoi(f[0])
	kib, _ := strconv.Atoi(f[1])
	return cpus, kib >> 10
}

// limitedBundle is a bundle running args with a CPU quota (per 100 ms)
// and a memory limit.
func limitedBundle(t *testing.T, quota, mem int64, args ...string) (string, *specs.Spec) {
	t.Helper()
	dir := bundle(t, args...)
	spec := specutil.Default(args...)
	period := uint64(100000)
	spec.Linux.Resources = &specs.LinuxResources{CPU: &specs.LinuxCPU{Quota: &quota, Period: &period}, Memory: &specs.LinuxMemory{Limit: &mem}}
	if err := specutil.WriteBundle(dir, spec); err != nil {
		t.Fatal(err)
	}
	return dir, spec
}

// A running sandbox's VM grows when a container with limits joins and
// when they are raised (vCPUs hot-plugged and onlined, memory plugged by
// virtio-mem), the container's cgroup has the limits, and the VM shrinks
// back when the container goes, and grows again; from a template-restored
// VM too.
func TestResizeRunningVM(t *testing.T) {
	for _, templates := range []bool{false, true} {
		name := "booted"
		if templates {
			name = "from a template"
		}
		t.Run(name, func(t *testing.T) {
			env := testutil.NeedVM(t)
			rt, err := cocoon.New(cocoon.Options{StateDir: env.StateDir, DataDir: filepath.Dir(env.CacheDir), VMTemplates: templates,
				Log: slog.New(slog.NewTextHandler(testWriter{t}, nil))})
			if err != nil {
				t.Fatal(err)
			}
			ctx := context.Background()
			id := testutil.UniqueID(t)
			cfg := sandboxConfig(env, id, bundle(t, "sleep", "1000"))
			cfg.VM.VCPUs, cfg.VM.MemoryMiB, cfg.VM.MaxVCPUs, cfg.VM.MaxMemoryMiB = 1, 256, 3, 2048
			sb, err := rt.RunSandbox(ctx, cfg)
			if err != nil {
				t.Fatal(err)
			}
			cleanup(t, rt, id)
			defer sb.Release()
			cpus0, mem0 := guestSize(t, sb, id)
			st := sb.Status(ctx)
			if cpus0 != 1 || st.VCPUs != 1 || st.MemoryMiB != 256 || st.MaxVCPUs != 3 || st.MaxMemoryMiB != 2048 {
				t.Fatalf("booted: guest %d CPUs; status %+v", cpus0, st)
			}

			b, spec := limitedBundle(t, 100000, 512<<20, "sleep", "1000")
			if err := sb.CreateContainer(ctx, cocoon.ContainerConfig{ID: "big", Bundle: b, Spec: spec}); err != nil {
				t.Fatal(err)
			}
			if err := sb.StartContainer(ctx, "big"); err != nil {
				t.Fatal(err)
			}
			cpus, mem := guestSize(t, sb, "big")
			st = sb.Status(ctx)
			t.Logf("with a 1-CPU, 512 MiB container: guest %d CPUs, MemTotal %d MiB (was %d); status %d vCPUs, %d MiB", cpus, mem, mem0, st.VCPUs, st.MemoryMiB)
			if cpus != 2 || mem < mem0+500 || st.VCPUs != 2 || st.MemoryMiB != 768 {
				t.Fatalf("the VM did not grow for the container")
			}
			cg := func(file string) string {
				out, _ := execIn(t, sb, "big", "cat", "/sys/fs/cgroup/"+file)
				return strings.TrimSpace(out)
			}
			if m, c := cg("memory.max"), cg("cpu.max"); m != "536870912" || c != "100000 100000" {
				t.Errorf("container cgroup: memory.max %q, cpu.max %q", m, c)
			}

			quota, limit := int64(200000), int64(1<<30)
			period := uint64(100000)
			if err := sb.UpdateContainer(ctx, "big", &specs.LinuxResources{CPU: &specs.LinuxCPU{Quota: &quota, Period: &period}, Memory: &specs.LinuxMemory{Limit: &limit}}); err != nil {
				t.Fatal(err)
			}
			cpus, mem = guestSize(t, sb, "big")
			st = sb.Status(ctx)
			t.Logf("raised to 2 CPUs, 1 GiB: guest %d CPUs, MemTotal %d MiB; status %d vCPUs, %d MiB", cpus, mem, st.VCPUs, st.MemoryMiB)
			if cpus != 3 || mem < mem0+1000 || st.VCPUs != 3 || st.MemoryMiB != 1280 {
				t.Fatalf("the VM did not grow for the update")
			}
			if m, c := cg("memory.max"), cg("cpu.max"); m != "1073741824" || c != "200000 100000" {
				t.Errorf("updated container cgroup: memory.max %q, cpu.max %q", m, c)
			}

			if err := sb.DeleteContainer(ctx, "big"); err != nil {
				t.Fatal(err)
			}
			cpus, mem = guestSize(t, sb, id)
			st = sb.Status(ctx)
			t.Logf("container gone: guest %d CPUs, MemTotal %d MiB; status %d vCPUs, %d MiB", cpus, mem, st.VCPUs, st.MemoryMiB)
			if cpus != 1 || st.VCPUs != 1 || st.MemoryMiB != 256 {
				t.Errorf("the VM did not shrink back")
			}

			// And grows again: the same CPU slots, the same memory device
			// (QEMU 7.2 under TCG aborts if an unplugged vCPU is plugged
			// again, so there the vCPUs stay plugged, offline).
			b, spec = limitedBundle(t, 200000, 256<<20, "sleep", "1000")
			if err := sb.CreateContainer(ctx, cocoon.ContainerConfig{ID: "again", Bundle: b, Spec: spec}); err != nil {
				t.Fatal(err)
			}
			cpus, mem = guestSize(t, sb, id)
			st = sb.Status(ctx)
			t.Logf("a 2-CPU, 256 MiB container joins: guest %d CPUs, MemTotal %d MiB; status %d vCPUs, %d MiB", cpus, mem, st.VCPUs, st.MemoryMiB)
			if cpus != 3 || st.VCPUs != 3 || st.MemoryMiB != 512 {
				t.Errorf("the VM did not grow again")
			}
		})
	}
}

// A container allocating past its memory limit is OOM-killed, and
// reported so, while its sibling keeps running.
func TestOOMKilledContainer(t *testing.T) {
	rt, env := newRuntime(t)
	ctx := context.Background()
	id := testutil.UniqueID(t)
	sb, err := rt.RunSandbox(ctx, sandboxConfig(env, id, bundle(t, "sleep", "1000")))
	if err != nil {
		t.Fatal(err)
	}
	cleanup(t, rt, id)
	defer sb.Release()
	b, spec := limitedBundle(t, 0, 64<<20, "dd", "if=/dev/zero", "of=/dev/null", "bs=200M", "count=1")
	if err := sb.CreateContainer(ctx, cocoon.ContainerConfig{ID: "hog", Bundle: b, Spec: spec}); err != nil {
		t.Fatal(err)
	}
	if err := sb.StartContainer(ctx, "hog"); err != nil {
		t.Fatal(err)
	}
	st, err := sb.WaitProcess(ctx, "hog", "")
	if err != nil {
		t.Fatal(err)
	}
	if !st.OOMKilled || st.Signal != 9 {
		t.Errorf("the hog ended %+v, want OOM-killed", st)
	}
	if out, st := execIn(t, sb, id, "echo", "alive"); st.Code != 0 || strings.TrimSpace(out) != "alive" {
		t.Errorf("the sibling: %q %+v", out, st)
	}
	if s, err := sb.StatusContainer(ctx, id); err != nil || s.State != cocoon.StateRunning {
		t.Errorf("the sibling is %+v, %v", s, err)
	}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(b)))
	return len(b), nil
}
