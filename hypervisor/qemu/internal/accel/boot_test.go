package accel

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cocoon-runtime/cocoon/hypervisor"
	"github.com/cocoon-runtime/cocoon/internal/layout"
	"github.com/cocoon-runtime/cocoon/internal/vmmproc"
)

// fakeQEMU writes a shell script that plays QEMU. It records the pid of a
// grandchild (a sleep) in <dir>/child.pid so tests can check the whole
// process group died.
func fakeQEMU(t *testing.T, body string) (path, childPidFile string) {
	t.Helper()
	dir := t.TempDir()
	path = filepath.Join(dir, "qemu-system-x86_64")
	childPidFile = filepath.Join(dir, "child.pid")
	script := "#!/bin/sh\nsleep 300 &\necho $! > " + childPidFile + "\n" + body + "\n"
	writeFile(t, path, script, 0o755)
	t.Cleanup(func() { // do not leave a sleep behind when a test failed
		if b, err := os.ReadFile(childPidFile); err == nil {
			if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && pid > 0 {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	})
	return path, childPidFile
}

// processesWith lists live processes whose command line contains marker.
func processesWith(t *testing.T, marker string) []int {
	t.Helper()
	paths, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	var pids []int
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil || !bytes.Contains(b, []byte(marker)) {
			continue
		}
		pid, _ := strconv.Atoi(filepath.Base(filepath.Dir(p)))
		if pid != os.Getpid() && vmmproc.Running(pid) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// assertGone fails if the probe's processes outlived it.
func assertGone(t *testing.T, name, childPidFile string) {
	t.Helper()
	if name == "" {
		t.Fatal("probe never reported its start")
	}
	if pids := processesWith(t, name); len(pids) > 0 {
		t.Errorf("probe processes still running: %v", pids)
	}
	if childPidFile == "" {
		return
	}
	b, err := os.ReadFile(childPidFile)
	if err != nil {
		t.Fatalf("fake qemu did not record its child: %v", err)
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	// Killed processes may take a moment to be reaped by init.
	deadline := time.Now().Add(2 * time.Second)
	for vmmproc.Running(pid) && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if vmmproc.Running(pid) {
		t.Errorf("child %d of the probe's process group still running", pid)
	}
}

func runFake(t *testing.T, ctx context.Context, body string, timeout time.Duration) (bootOutcome, error, time.Duration) {
	t.Helper()
	qemu, childPid := fakeQEMU(t, body)
	var name string
	start := time.Now()
	out, err := bootProbe(ctx, bootParams{
		QEMU: qemu, Kernel: "/nonexistent/vmlinux", Timeout: timeout,
		OnStart: func(_ int, n string) { name = n },
	})
	took := time.Since(start)
	if !strings.HasPrefix(name, ProbeNamePrefix) {
		t.Errorf("probe name %q lacks prefix %q", name, ProbeNamePrefix)
	}
	assertGone(t, name, childPid)
	return out, err, took
}

func TestBootProbeHealthy(t *testing.T) {
	out, err, took := runFake(t, context.Background(), `
case "$*" in *"-accel kvm"*"-no-reboot"*"-kernel /nonexistent/vmlinux"*"panic=-1"*) ;; *) echo "bad args: $*" >&2; exit 2;; esac
echo "[    0.300000] Kernel panic - not syncing: VFS: Unable to mount root fs on unknown-block(0,0)"
exit 0`, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if !out.Usable || !strings.HasPrefix(out.Reason, "KVM works") {
		t.Fatalf("got %+v, want usable", out)
	}
	if took > 3*time.Second {
		t.Errorf("healthy probe took %v", took)
	}
}

func TestBootProbeInternalError(t *testing.T) {
	out, err, took := runFake(t, context.Background(), `
echo "KVM internal error. Suberror: 1" >&2
echo "extra data[0]: 0x0000000000000001" >&2
sleep 300`, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if out.Usable || !strings.HasPrefix(out.Reason, "KVM is emulated: guest hit 'KVM internal error' after ") {
		t.Fatalf("got %+v, want emulated", out)
	}
	if took > 5*time.Second {
		t.Errorf("internal error not detected promptly: %v", took)
	}
}

func TestBootProbeTimeout(t *testing.T) {
	out, err, took := runFake(t, context.Background(), "echo booting; exec sleep 300", 500*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if out.Usable || out.Reason != "KVM too slow: kernel did not reach panic within 0.50s" {
		t.Fatalf("got %+v, want too slow", out)
	}
	if took < 500*time.Millisecond || took > 5*time.Second {
		t.Errorf("timeout of 0.5s took %v", took)
	}
}

func TestBootProbeQEMUFails(t *testing.T) {
	out, err, _ := runFake(t, context.Background(), `
kill $(cat "$(dirname "$0")/child.pid")
echo "qemu-system-x86_64: -accel kvm: failed to initialize kvm: Permission denied" >&2
exit 1`, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if out.Usable || !strings.Contains(out.Reason, "exit status 1") || !strings.Contains(out.Reason, "failed to initialize kvm: Permission denied") {
		t.Fatalf("got %+v, want the qemu error in the reason", out)
	}
}

func TestBootProbeResetWithoutPanic(t *testing.T) {
	out, err, _ := runFake(t, context.Background(), `
echo "Booting from ROM..."
exit 0`, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if out.Usable || !strings.HasPrefix(out.Reason, "KVM is unreliable") {
		t.Fatalf("got %+v, want unreliable", out)
	}
}

func TestBootProbeContextCanceled(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	_, err, took := runFake(t, ctx, "exec sleep 300", 30*time.Second)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got %v, want context.DeadlineExceeded", err)
	}
	if took > 5*time.Second {
		t.Errorf("cancellation took %v", took)
	}
}

func TestPrintable(t *testing.T) {
	in := "\x1bc\x1b[?7l\x1b[2J\x1b[0mSeaBIOS (version 1.16)\r"
	if got := printable(in); got != "SeaBIOS (version 1.16)" {
		t.Errorf("printable(%q) = %q", in, got)
	}
}

// testKernel finds a guest kernel for the real probe: COCOON_TEST_KERNEL,
// or the current image under COCOON_DATA_DIR (default /var/lib/cocoon),
// which `make test` builds first.
func testKernel(t *testing.T) string {
	t.Helper()
	if k := os.Getenv("COCOON_TEST_KERNEL"); k != "" {
		return k
	}
	dataDir := os.Getenv("COCOON_DATA_DIR")
	if dataDir == "" {
		dataDir = layout.DataDir
	}
	if k := filepath.Join(dataDir, "images", "current", "vmlinux"); fileExists(k) {
		return k
	}
	if os.Getenv("COCOON_REQUIRE_VM") == "1" {
		t.Fatal("no guest kernel: run `cocoon image build`")
	}
	return ""
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// TestRealProbe boots a real kernel under this host's KVM. On the
// development and CI machines KVM is nested and emulating, so the verdict is
// TCG; the test checks that whatever was decided agrees with its reason, and
// COCOON_EXPECT_ACCEL=kvm|tcg pins the verdict.
func TestRealProbe(t *testing.T) {
	if testing.Short() {
		t.Skip("boots a VM")
	}
	qemu, err := exec.LookPath(DefaultQEMUPath)
	if err != nil {
		t.Skip("no qemu-system-x86_64")
	}
	if err := checkKVMDevice(defaultKVMDevice); err != nil {
		t.Skipf("no usable /dev/kvm: %v", err)
	}
	kernel := testKernel(t)
	if kernel == "" {
		t.Skip("no guest kernel: set COCOON_TEST_KERNEL")
	}

	var name string
	cfg := ProbeConfig{
		QEMUPath: qemu,
		Kernel:   kernel,
		CacheDir: t.TempDir(),
		onStart:  func(_ int, n string) { name = n },
	}
	res, err := Resolve(context.Background(), hypervisor.AccelAuto, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("kernel %s: %s (KVMUsable=%v) in %v: %s", kernel, res.Accelerator, res.KVMUsable, res.Elapsed, res.Reason)
	assertGone(t, name, "")
	if res.Cached {
		t.Error("first probe claims to be cached")
	}

	switch res.Accelerator {
	case hypervisor.AccelKVM:
		if !res.KVMUsable || !strings.HasPrefix(res.Reason, "KVM works: ") {
			t.Errorf("chose KVM but the reason says otherwise: %+v", res)
		}
		if res.Elapsed > DefaultTimeout+2*time.Second {
			t.Errorf("chose KVM after %v, beyond the %v timeout", res.Elapsed, DefaultTimeout)
		}
	case hypervisor.AccelTCG:
		if res.KVMUsable {
			t.Errorf("chose TCG although KVM is usable: %+v", res)
		}
		switch {
		case strings.HasPrefix(res.Reason, "KVM too slow: "):
			if res.Elapsed < DefaultTimeout {
				t.Errorf("says too slow after only %v: %+v", res.Elapsed, res)
			}
		case strings.HasPrefix(res.Reason, "KVM is emulated: guest hit 'KVM internal error'"),
			strings.HasPrefix(res.Reason, "KVM is unreliable: "),
			strings.HasPrefix(res.Reason, "QEMU could not run the guest under KVM"):
		default:
			t.Errorf("chose TCG for an unexplained reason: %q", res.Reason)
		}
	default:
		t.Fatalf("accelerator %q", res.Accelerator)
	}
	if want := os.Getenv("COCOON_EXPECT_ACCEL"); want != "" && string(res.Accelerator) != want {
		t.Errorf("chose %s, COCOON_EXPECT_ACCEL=%s", res.Accelerator, want)
	}

	name = ""
	again, err := Resolve(context.Background(), hypervisor.AccelAuto, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("cached: %s in %v", again.Accelerator, again.Elapsed)
	if !again.Cached || name != "" || again.Accelerator != res.Accelerator || again.Reason != res.Reason {
		t.Errorf("second probe %+v (started vm %q), want the first verdict from cache", again, name)
	}
	if again.Elapsed > 100*time.Millisecond {
		t.Errorf("cache hit took %v", again.Elapsed)
	}
}

// TestBootProbeRealQEMUUnderTCG runs the probe's real QEMU command line with
// KVM swapped for TCG, to check the healthy path end to end: the kernel
// boots, panics, QEMU exits and the probe says KVM works.
func TestBootProbeRealQEMUUnderTCG(t *testing.T) {
	if testing.Short() {
		t.Skip("boots a VM")
	}
	qemu, err := exec.LookPath(DefaultQEMUPath)
	if err != nil {
		t.Skip("no qemu-system-x86_64")
	}
	if _, err := exec.LookPath("bash"); err != nil {
		t.Skip("no bash")
	}
	kernel := testKernel(t)
	if kernel == "" {
		t.Skip("no guest kernel: set COCOON_TEST_KERNEL")
	}
	wrapper := filepath.Join(t.TempDir(), "qemu-tcg")
	writeFile(t, wrapper, `#!/bin/bash
a=("$@")
for i in "${!a[@]}"; do
	case "${a[$i]}" in kvm) a[$i]=tcg;; host) a[$i]=max;; esac
done
exec `+qemu+` "${a[@]}"
`, 0o755)
	var name string
	out, err := bootProbe(context.Background(), bootParams{
		QEMU: wrapper, Kernel: kernel, Timeout: 60 * time.Second,
		OnStart: func(_ int, n string) { name = n },
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%+v", out)
	assertGone(t, name, "")
	if !out.Usable || !strings.HasPrefix(out.Reason, "KVM works: guest kernel reached panic in ") {
		t.Fatalf("got %+v, want the kernel to reach its panic", out)
	}
}
