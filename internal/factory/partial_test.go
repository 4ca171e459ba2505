package factory

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cocoon-runtime/cocoon/hypervisor"
	"github.com/cocoon-runtime/cocoon/internal/vmmproc"
	"golang.org/x/sys/unix"
)

// leaveKilledMaker puts on disk what a maker of tp killed mid-way leaves:
// the template VM's runtime directory, a partial memory file, an
// unfinished state and its records, but no state.
func leaveKilledMaker(t *testing.T, tp template) string {
	t.Helper()
	vmd := filepath.Join(tp.path(vmDir), "template-"+tp.key)
	os.MkdirAll(vmd, 0o700)
	os.WriteFile(filepath.Join(vmd, "qemu.log"), []byte("x"), 0o600)
	os.WriteFile(tp.path(lockFile), nil, 0o600)
	os.MkdirAll(filepath.Dir(tp.memory), 0o700)
	os.WriteFile(tp.memory, make([]byte, 4096), 0o600)
	os.WriteFile(tp.path(stateFile+".tmp"), []byte("partial"), 0o600)
	os.WriteFile(tp.path(sourcesFile), []byte("{}"), 0o600)
	if tp.ready() {
		t.Fatal("a template without its state is ready")
	}
	return vmd
}

// A maker killed while it made a template leaves the template VM's
// directory, a partial memory file and an unfinished state behind; the
// next maker of that configuration must clear them and make the template,
// not fail on the leftovers.
func TestEnsureClearsWhatAKilledMakerLeft(t *testing.T) {
	f := testFactory(t, 4)
	kernel := filepath.Join(t.TempDir(), "vmlinux")
	os.WriteFile(kernel, []byte("kernel"), 0o600)
	cfg := templated(hypervisor.Config{Kernel: kernel, MemoryMiB: 256, VCPUs: 1})
	key, err := Key(cfg)
	if err != nil {
		t.Fatal(err)
	}
	tp := f.template(key)
	leftVM := leaveKilledMaker(t, tp)
	var removed []string
	f.removeVM = func(_ context.Context, dir string) error {
		removed = append(removed, dir)
		return os.RemoveAll(dir)
	}
	booted := 0
	f.boot = func(ctx context.Context, got template, c hypervisor.Config) error {
		booted++
		for _, p := range []string{got.memory, got.path(stateFile + ".tmp"), got.path(sourcesFile)} {
			if _, err := os.Stat(p); err == nil {
				t.Errorf("%s of the killed maker is still there", filepath.Base(p))
			}
		}
		// What CreateVM does first.
		if err := os.MkdirAll(got.path(vmDir), 0o700); err != nil {
			return err
		}
		if err := os.Mkdir(filepath.Join(got.path(vmDir), "template-"+got.key), 0o700); err != nil {
			return err
		}
		os.WriteFile(got.memory, nil, 0o600)
		os.WriteFile(got.path(stateFile), nil, 0o600)
		return os.RemoveAll(filepath.Join(got.path(vmDir), "template-"+got.key))
	}
	if err := f.ensure(context.Background(), tp, cfg); err != nil {
		t.Fatalf("ensure after a killed maker: %v", err)
	}
	if booted != 1 || !tp.ready() {
		t.Errorf("ensure: %d boots, ready %v; want 1 boot, ready", booted, tp.ready())
	}
	if len(removed) != 1 || removed[0] != leftVM {
		t.Errorf("VMs removed: %v, want the killed maker's %s", removed, leftVM)
	}
}

// A failed make leaves nothing that counts against the template limit.
func TestEnsureRemovesAFailedTemplate(t *testing.T) {
	f := testFactory(t, 4)
	tp := f.template("00000000000000f0")
	f.boot = func(_ context.Context, got template, _ hypervisor.Config) error {
		os.WriteFile(got.memory, nil, 0o600)
		os.WriteFile(got.path(stateFile+".tmp"), nil, 0o600)
		return errors.New("boot failed")
	}
	if err := f.ensure(context.Background(), tp, hypervisor.Config{}); err == nil {
		t.Fatal("ensure succeeded with a failing boot")
	}
	if !gone(tp) {
		t.Error("a failed template was left behind")
	}
}

// cleanupPartial stops a template VM that is still running (its maker
// died after QEMU started) and removes a VM directory with no recorded
// state, through its console mount, without removing what is mounted.
func TestCleanupPartialStopsLeftoverVM(t *testing.T) {
	f := testFactory(t, 4)
	f.removeVM = f.removeVMDir
	tp := f.template("00000000000000aa")
	vmd := leaveKilledMaker(t, tp)
	// The maker's QEMU still runs, recorded in vm.json (a stand-in
	// process whose command line names the VM's pid file, as QEMU's does).
	pidFile := filepath.Join(vmd, "qemu.pid")
	cmd := exec.Command(os.Args[0], "-test.run=^TestFakeQEMU$", "--", pidFile)
	cmd.Env = append(os.Environ(), "COCOON_FAKE_QEMU=1")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	os.WriteFile(pidFile, []byte("0\n"), 0o600)
	st, _ := json.Marshal(map[string]any{"id": "template-" + tp.key, "pid": pid})
	os.WriteFile(filepath.Join(vmd, "vm.json"), st, 0o600)
	// A second VM directory without state, with its console mounted.
	bare := filepath.Join(tp.path(vmDir), "template-old")
	console := filepath.Join(bare, "console")
	os.MkdirAll(console, 0o700)
	mounted := os.Geteuid() == 0 && unix.Mount("tmpfs", console, "tmpfs", 0, "size=1m") == nil
	if mounted {
		t.Cleanup(func() { unix.Unmount(console, unix.MNT_DETACH) })
		os.WriteFile(filepath.Join(console, "console.log"), []byte("boot"), 0o600)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if err := f.cleanupPartial(ctx, tp); err != nil {
		t.Fatalf("cleanupPartial: %v", err)
	}
	if vmmproc.Running(pid) {
		t.Error("the leftover template VM still runs")
	}
	for _, p := range []string{tp.path(vmDir), tp.memory, tp.path(stateFile + ".tmp"), tp.path(sourcesFile)} {
		if _, err := os.Lstat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s is left", p)
		}
	}
	if _, err := os.Stat(tp.path(lockFile)); err != nil {
		t.Errorf("cleanupPartial removed the lock its caller holds: %v", err)
	}
	if mounted {
		b, _ := os.ReadFile("/proc/self/mountinfo")
		if strings.Contains(string(b), console) {
			t.Error("the console tmpfs is still mounted")
		}
	}
}

// TestFakeQEMU is the stand-in QEMU process of the tests above.
func TestFakeQEMU(t *testing.T) {
	if os.Getenv("COCOON_FAKE_QEMU") != "1" {
		t.Skip("a helper process")
	}
	time.Sleep(time.Minute)
	os.Exit(0)
}

// A template is ready only with both its state (renamed into place last)
// and its memory file: a half-made one, or one whose RAM tmpfs was
// emptied, is made again rather than restored from.
func TestReadyNeedsStateAndMemory(t *testing.T) {
	f := testFactory(t, 4)
	tp := fakeTemplate(t, f, "0000000000000077", nil)
	os.Remove(tp.memory)
	if tp.ready() {
		t.Error("a template without its memory file is ready")
	}
	tp = fakeTemplate(t, f, "0000000000000078", nil)
	os.Rename(tp.path(stateFile), tp.path(stateFile+".tmp"))
	if tp.ready() {
		t.Error("a template whose state was not renamed into place is ready")
	}
}
