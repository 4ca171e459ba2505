package cocoon_test

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cocoon-runtime/cocoon"
	"github.com/cocoon-runtime/cocoon/internal/testutil"
)

// Sandboxes made from a VM template: the first boots and saves the
// template, the next are restored from it. Each clone runs its container
// from its own shared directory (virtio-fs hot-plugged after the restore),
// has the host's time rather than the template's, and its own randomness.
// Deleting them leaves nothing but the template.
func TestVMTemplates(t *testing.T) {
	env := testutil.NeedVM(t)
	rt, err := cocoon.New(cocoon.Options{StateDir: env.StateDir, DataDir: filepath.Dir(env.CacheDir), VMTemplates: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		os.RemoveAll(filepath.Join(env.StateDir, "factory"))
		syscall.Unmount(filepath.Join(env.StateDir, "mem"), 0)
	})
	ctx := context.Background()
	b := bundle(t, "sh", "-c", "cat /proc/sys/kernel/random/uuid; date +%s; cat /marker")
	outputs := map[string]string{}
	for i := range 3 {
		if err := os.WriteFile(filepath.Join(b, "rootfs", "marker"), []byte("run "+strconv.Itoa(i)), 0o644); err != nil {
			t.Fatal(err)
		}
		id := testutil.UniqueID(t) + strconv.Itoa(i)
		cleanup(t, rt, id)
		start := time.Now()
		sb, err := rt.CreateSandbox(ctx, sandboxConfig(env, id, b))
		if err != nil {
			t.Fatalf("sandbox %d: %v", i, err)
		}
		t.Logf("sandbox %d created in %v", i, time.Since(start).Round(time.Millisecond))
		o := attach(t, sb, id, "", nil)
		if err := sb.StartContainer(ctx, id); err != nil {
			t.Fatal(err)
		}
		st, err := sb.WaitProcess(ctx, id, "")
		o.wg.Wait()
		if err != nil || st.Code != 0 {
			t.Fatalf("sandbox %d: exit %+v, %v; stderr %q", i, st, err, o.stderr.String())
		}
		lines := strings.Split(strings.TrimSpace(o.stdout.String()), "\n")
		if len(lines) != 3 {
			t.Fatalf("sandbox %d printed %q", i, o.stdout.String())
		}
		if lines[2] != "run "+strconv.Itoa(i) {
			t.Errorf("sandbox %d read %q from its rootfs, want %q", i, lines[2], "run "+strconv.Itoa(i))
		}
		// Against the host's time when the output came, not after the
		// process was waited for, which on a busy host comes seconds later.
		guest, _ := strconv.ParseInt(lines[1], 10, 64)
		if d := o.firstOut.Unix() - guest; d < -3 || d > 3 {
			t.Errorf("sandbox %d: guest clock %d is %ds off the host's", i, guest, d)
		}
		if prev, ok := outputs[lines[0]]; ok {
			t.Errorf("sandbox %d drew the same random uuid %s as %s: the clones share the template's randomness", i, lines[0], prev)
		}
		outputs[lines[0]] = id
		pids := sb.Status(ctx).HypervisorPids
		if err := sb.Delete(ctx); err != nil {
			t.Fatal(err)
		}
		assertSandboxGone(t, rt, env, id, pids)
	}
	// The template's own VM is gone; its files stay for the next sandbox.
	entries, _ := os.ReadDir(filepath.Join(env.StateDir, "factory"))
	if len(entries) != 1 {
		t.Fatalf("templates: %v, want one", entries)
	}
	var st syscall.Stat_t
	if err := syscall.Stat(filepath.Join(env.StateDir, "mem", "templates", entries[0].Name()+".guest.mem"), &st); err != nil {
		t.Fatal(err)
	}
	t.Logf("template RAM file: %d MiB allocated of %d MiB", st.Blocks*512>>20, st.Size>>20)
	// An idle guest uses about a quarter of its 256 MiB, kernel included;
	// the rest was zeroed by the agent and left out. Without that, what
	// the guest freed while booting (~30 MiB) stays in the file.
	if st.Blocks*512 > st.Size*5/16 {
		t.Errorf("template RAM file holds %d MiB of %d: the guest's free memory was not left out", st.Blocks*512>>20, st.Size>>20)
	}
	if procs := testutil.ProcessesMentioning(filepath.Join(env.StateDir, "factory")); len(procs) > 0 {
		t.Errorf("template processes left: %v", procs)
	}
}
