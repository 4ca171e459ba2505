package accel

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cocoon-runtime/cocoon/hypervisor"
)

// fakeHost is a set of temporary files standing in for the probe's inputs.
type fakeHost struct {
	dir, qemu, kernel, bootID, osRelease, cacheDir string
	boots                                          int
	verdict                                        bootOutcome
}

func newFakeHost(t *testing.T) *fakeHost {
	t.Helper()
	d := t.TempDir()
	h := &fakeHost{
		dir:       d,
		qemu:      filepath.Join(d, "qemu-system-x86_64"),
		kernel:    filepath.Join(d, "vmlinux"),
		bootID:    filepath.Join(d, "boot_id"),
		osRelease: filepath.Join(d, "osrelease"),
		cacheDir:  filepath.Join(d, "data", "cache"), // does not exist yet
		verdict:   bootOutcome{Reason: "KVM too slow: kernel did not reach panic within 3.00s", Elapsed: 3 * time.Second},
	}
	writeFile(t, h.qemu, "#!/bin/sh\nexit 1\n", 0o755)
	writeFile(t, h.kernel, "not really a kernel", 0o644)
	writeFile(t, h.bootID, "11111111-2222-3333-4444-555555555555\n", 0o444)
	writeFile(t, h.osRelease, "6.1.0-test\n", 0o444)
	return h
}

func (h *fakeHost) config() ProbeConfig {
	return ProbeConfig{
		QEMUPath:      h.qemu,
		Kernel:        h.kernel,
		CacheDir:      h.cacheDir,
		checkKVM:      func(string) error { return nil },
		bootIDPath:    h.bootID,
		osReleasePath: h.osRelease,
		boot: func(_ context.Context, p bootParams) (bootOutcome, error) {
			h.boots++
			return h.verdict, nil
		},
	}
}

func writeFile(t *testing.T, path, data string, mode os.FileMode) {
	t.Helper()
	if err := os.WriteFile(path, []byte(data), mode); err != nil {
		t.Fatal(err)
	}
}

func noBoot(t *testing.T) func(context.Context, bootParams) (bootOutcome, error) {
	return func(context.Context, bootParams) (bootOutcome, error) {
		t.Error("boot probe ran but must not")
		return bootOutcome{}, errors.New("unexpected boot probe")
	}
}

func TestResolveForcedTCG(t *testing.T) {
	cfg := ProbeConfig{
		kvmDevice: filepath.Join(t.TempDir(), "kvm"),
		checkKVM:  func(string) error { t.Error("device checked for forced tcg"); return nil },
		boot:      noBoot(t),
	}
	res, err := Resolve(context.Background(), hypervisor.AccelTCG, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if res.Accelerator != hypervisor.AccelTCG || res.Reason != ReasonForced || res.KVMUsable || res.Cached {
		t.Fatalf("got %+v, want tcg %q", res, ReasonForced)
	}
}

func TestResolveForcedKVMMissingDevice(t *testing.T) {
	dev := filepath.Join(t.TempDir(), "kvm")
	cfg := ProbeConfig{kvmDevice: dev, boot: noBoot(t)}
	res, err := Resolve(context.Background(), hypervisor.AccelKVM, cfg)
	if err == nil {
		t.Fatalf("forced kvm with missing %s succeeded: %+v", dev, res)
	}
	var ue *UnusableError
	if !errors.As(err, &ue) {
		t.Fatalf("error %v (%T) is not an *UnusableError", err, err)
	}
	if !strings.Contains(ue.Reason, dev) || !strings.Contains(ue.Reason, "does not exist") {
		t.Errorf("reason %q does not name the missing device", ue.Reason)
	}
	if !errors.Is(err, os.ErrNotExist) {
		t.Errorf("error %v does not wrap os.ErrNotExist", err)
	}
}

func TestResolveForcedKVMNotADevice(t *testing.T) {
	dev := filepath.Join(t.TempDir(), "kvm")
	writeFile(t, dev, "", 0o666)
	_, err := Resolve(context.Background(), hypervisor.AccelKVM, ProbeConfig{kvmDevice: dev, boot: noBoot(t)})
	var ue *UnusableError
	if !errors.As(err, &ue) || !strings.Contains(ue.Reason, "not a character device") {
		t.Fatalf("got %v, want UnusableError about a character device", err)
	}
}

func TestResolveForcedKVMWrongDevice(t *testing.T) {
	// /dev/null is a character device but not KVM: the API version ioctl fails.
	_, err := Resolve(context.Background(), hypervisor.AccelKVM, ProbeConfig{kvmDevice: "/dev/null", boot: noBoot(t)})
	var ue *UnusableError
	if !errors.As(err, &ue) || !strings.Contains(ue.Reason, "KVM_GET_API_VERSION") {
		t.Fatalf("got %v, want UnusableError about KVM_GET_API_VERSION", err)
	}
}

func TestResolveForcedKVMSkipsProbe(t *testing.T) {
	h := newFakeHost(t)
	cfg := h.config()
	cfg.boot = noBoot(t)
	res, err := Resolve(context.Background(), hypervisor.AccelKVM, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if res.Accelerator != hypervisor.AccelKVM || !res.KVMUsable || !strings.HasPrefix(res.Reason, ReasonForced) {
		t.Fatalf("got %+v, want kvm forced", res)
	}
	if _, err := os.Stat(filepath.Join(h.cacheDir, CacheFile)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("forced kvm wrote a cache: %v", err)
	}
}

func TestResolveUnknownAccelerator(t *testing.T) {
	_, err := Resolve(context.Background(), "hvf", ProbeConfig{boot: noBoot(t)})
	var ce *hypervisor.ConfigError
	if !errors.As(err, &ce) || ce.Field != "Accelerator" {
		t.Fatalf("got %v, want ConfigError on Accelerator", err)
	}
}

func TestAutoWithoutDevice(t *testing.T) {
	dev := filepath.Join(t.TempDir(), "kvm")
	for _, want := range []hypervisor.Accelerator{hypervisor.AccelAuto, ""} {
		res, err := Resolve(context.Background(), want, ProbeConfig{kvmDevice: dev, Kernel: "/nonexistent", boot: noBoot(t)})
		if err != nil {
			t.Fatal(err)
		}
		if res.Accelerator != hypervisor.AccelTCG || res.KVMUsable || !strings.Contains(res.Reason, dev) {
			t.Errorf("Resolve(%q) = %+v, want tcg naming %s", want, res, dev)
		}
	}
}

func TestAutoWithoutKernel(t *testing.T) {
	h := newFakeHost(t)
	for _, k := range []string{"", filepath.Join(h.dir, "missing-vmlinux")} {
		cfg := h.config()
		cfg.Kernel = k
		cfg.boot = noBoot(t)
		res, err := Resolve(context.Background(), hypervisor.AccelAuto, cfg)
		if err != nil {
			t.Fatal(err)
		}
		if res.Accelerator != hypervisor.AccelTCG || res.Reason != ReasonNoKernel {
			t.Errorf("kernel %q: got %+v, want tcg %q", k, res, ReasonNoKernel)
		}
	}
}

func TestAutoWithoutQEMU(t *testing.T) {
	h := newFakeHost(t)
	cfg := h.config()
	cfg.QEMUPath = "cocoon-no-such-qemu"
	cfg.boot = noBoot(t)
	if _, err := Resolve(context.Background(), hypervisor.AccelAuto, cfg); err == nil || !strings.Contains(err.Error(), "cocoon-no-such-qemu") {
		t.Fatalf("got %v, want an error naming the missing qemu", err)
	}
}

func TestProbeCacheRoundTrip(t *testing.T) {
	h := newFakeHost(t)
	ctx := context.Background()

	first, err := Probe(ctx, h.config())
	if err != nil {
		t.Fatal(err)
	}
	if first.Cached || h.boots != 1 || first.Accelerator != hypervisor.AccelTCG || first.Reason != h.verdict.Reason {
		t.Fatalf("first probe: %+v after %d boots", first, h.boots)
	}
	path := filepath.Join(h.cacheDir, CacheFile)
	assertMode(t, path, 0o600)
	assertMode(t, h.cacheDir, 0o700)
	if m, _ := filepath.Glob(filepath.Join(h.cacheDir, "*tmp*")); len(m) != 0 {
		t.Errorf("temporary files left in cache dir: %v", m)
	}

	second, err := Probe(ctx, h.config())
	if err != nil {
		t.Fatal(err)
	}
	if !second.Cached || h.boots != 1 {
		t.Fatalf("second probe not served from cache: %+v after %d boots", second, h.boots)
	}
	if second.Accelerator != first.Accelerator || second.Reason != first.Reason || second.KVMUsable != first.KVMUsable || !second.CheckedAt.Equal(first.CheckedAt) {
		t.Fatalf("cached result %+v differs from probed %+v", second, first)
	}
	// Resolve(auto) shares the cache.
	if r, err := Resolve(ctx, hypervisor.AccelAuto, h.config()); err != nil || !r.Cached {
		t.Fatalf("Resolve(auto) = %+v, %v; want a cache hit", r, err)
	}

	// Each fingerprint input, changed, forces a new probe whose verdict
	// then replaces the cached one.
	changes := []struct {
		name   string
		change func()
	}{
		{"kernel size", func() { writeFile(t, h.kernel, "a different kernel", 0o644) }},
		{"kernel mtime", func() { touch(t, h.kernel, time.Now().Add(-time.Hour)) }},
		{"qemu mtime", func() { touch(t, h.qemu, time.Now().Add(-2*time.Hour)) }},
		{"boot id", func() { writeFile(t, h.bootID, "99999999-2222-3333-4444-555555555555\n", 0o644) }},
		{"kernel release", func() { writeFile(t, h.osRelease, "6.12.0-test\n", 0o644) }},
	}
	for i, c := range changes {
		c.change()
		h.verdict = bootOutcome{Usable: i%2 == 0, Reason: "verdict after " + c.name}
		res, err := Probe(ctx, h.config())
		if err != nil {
			t.Fatal(err)
		}
		if res.Cached || h.boots != i+2 {
			t.Fatalf("after changing %s: %+v after %d boots, want a new probe", c.name, res, h.boots)
		}
		want := hypervisor.AccelTCG
		if h.verdict.Usable {
			want = hypervisor.AccelKVM
		}
		if res.Accelerator != want || res.KVMUsable != h.verdict.Usable || res.Reason != h.verdict.Reason {
			t.Fatalf("after changing %s: got %+v, want %s %q", c.name, res, want, h.verdict.Reason)
		}
		again, err := Probe(ctx, h.config())
		if err != nil || !again.Cached || again.Accelerator != want || again.Reason != h.verdict.Reason {
			t.Fatalf("after changing %s: second call %+v, %v; want the new verdict cached", c.name, again, err)
		}
	}
}

func TestProbeCorruptCache(t *testing.T) {
	h := newFakeHost(t)
	ctx := context.Background()
	path := filepath.Join(h.cacheDir, CacheFile)
	if err := os.MkdirAll(h.cacheDir, 0o700); err != nil {
		t.Fatal(err)
	}

	corrupt := func(data string) {
		t.Helper()
		writeFile(t, path, data, 0o600)
		before := h.boots
		res, err := Probe(ctx, h.config())
		if err != nil {
			t.Fatal(err)
		}
		if res.Cached || h.boots != before+1 {
			t.Fatalf("cache %q was trusted: %+v", data, res)
		}
		var e cacheEntry
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(b, &e); err != nil || e.Reason != h.verdict.Reason {
			t.Fatalf("cache not rewritten after %q: %s (%v)", data, b, err)
		}
	}
	corrupt("{not json")
	corrupt("")
	// Well-formed but contradictory: KVM chosen yet not usable.
	fp, err := fingerprint(h.config().withDefaults(), h.qemu)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(cacheEntry{Fingerprint: fp.sum(), Inputs: fp, Accelerator: hypervisor.AccelKVM, Reason: "x"})
	corrupt(string(b))
	// Right inputs, wrong hash.
	b, _ = json.Marshal(cacheEntry{Fingerprint: "deadbeef", Inputs: fp, Accelerator: hypervisor.AccelTCG, Reason: "x"})
	corrupt(string(b))

	if r, err := Probe(ctx, h.config()); err != nil || !r.Cached {
		t.Fatalf("rewritten cache not used: %+v, %v", r, err)
	}
}

func TestProbeWithoutCacheDir(t *testing.T) {
	h := newFakeHost(t)
	cfg := h.config()
	cfg.CacheDir = ""
	for i := 1; i <= 2; i++ {
		res, err := Probe(context.Background(), cfg)
		if err != nil || res.Cached || h.boots != i {
			t.Fatalf("call %d: %+v, %v after %d boots", i, res, err, h.boots)
		}
	}
}

func TestProbeErrorNotCached(t *testing.T) {
	h := newFakeHost(t)
	cfg := h.config()
	cfg.boot = func(context.Context, bootParams) (bootOutcome, error) {
		return bootOutcome{}, context.Canceled
	}
	if _, err := Probe(context.Background(), cfg); !errors.Is(err, context.Canceled) {
		t.Fatalf("got %v, want context.Canceled", err)
	}
	if _, err := os.Stat(filepath.Join(h.cacheDir, CacheFile)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a failed probe was cached: %v", err)
	}
}

func TestProbeCanceledContext(t *testing.T) {
	h := newFakeHost(t)
	cfg := h.config()
	cfg.boot = noBoot(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := Probe(ctx, cfg); !errors.Is(err, context.Canceled) {
		t.Fatalf("got %v, want context.Canceled", err)
	}
}

func assertMode(t *testing.T, path string, want os.FileMode) {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := fi.Mode().Perm(); got != want {
		t.Errorf("%s has mode %#o, want %#o", path, got, want)
	}
}

func touch(t *testing.T, path string, at time.Time) {
	t.Helper()
	if err := os.Chtimes(path, at, at); err != nil {
		t.Fatal(err)
	}
}

func TestConcurrentProbesShareOneBoot(t *testing.T) {
	h := newFakeHost(t)
	var boots atomic.Int32
	cfg := h.config()
	cfg.boot = func(context.Context, bootParams) (bootOutcome, error) {
		boots.Add(1)
		time.Sleep(300 * time.Millisecond)
		return bootOutcome{Reason: "KVM too slow: test"}, nil
	}
	const n = 4
	results := make(chan Result, n)
	errs := make(chan error, n)
	for range n {
		go func() {
			res, err := Probe(context.Background(), cfg)
			results <- res
			errs <- err
		}()
	}
	cached := 0
	for range n {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
		res := <-results
		if res.Reason != "KVM too slow: test" {
			t.Errorf("got %+v", res)
		}
		if res.Cached {
			cached++
		}
	}
	if boots.Load() != 1 || cached != n-1 {
		t.Fatalf("%d boots and %d cache hits for %d concurrent probes, want 1 and %d", boots.Load(), cached, n, n-1)
	}
}

func TestProbeLockHonorsContext(t *testing.T) {
	h := newFakeHost(t)
	cfg := h.config()
	cfg.boot = noBoot(t)
	unlock, err := lockCache(context.Background(), filepath.Join(h.cacheDir, CacheFile+".lock"))
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if _, err := Probe(ctx, cfg); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got %v while another prober holds the lock, want context.DeadlineExceeded", err)
	}
}
