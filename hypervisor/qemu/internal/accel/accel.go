// Package accel decides which accelerator QEMU should use on this host.
//
// Opening /dev/kvm and creating a VM is not enough to know that KVM works:
// a nested KVM that emulates instructions in software passes those checks
// yet boots a real kernel far slower than TCG, or stops it with "KVM internal
// error". So, in auto mode, the decision rests on a real probe: QEMU boots
// the guest kernel under KVM with no root filesystem, and KVM is chosen only
// if the kernel reaches its "Unable to mount root fs" panic quickly. The
// probe's result is cached on disk, keyed by a fingerprint of everything
// that could change it.
package accel

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/cocoon-runtime/cocoon/hypervisor"
)

// DefaultTimeout bounds how long the real probe waits for the guest kernel
// to panic. A healthy KVM gets there in well under a second.
const DefaultTimeout = 3 * time.Second

// DefaultQEMUPath is the QEMU binary used when ProbeConfig.QEMUPath is empty.
const DefaultQEMUPath = "qemu-system-x86_64"

// CacheFile is the name of the probe cache inside ProbeConfig.CacheDir.
const CacheFile = "accel.json"

// Reasons that do not come from a probe.
const (
	ReasonForced   = "forced by configuration"
	ReasonNoKernel = "no guest kernel to probe KVM with (run `cocoon image build`)"
)

const defaultKVMDevice = "/dev/kvm"

// ProbeConfig configures Resolve and Probe.
type ProbeConfig struct {
	// QEMUPath is the QEMU binary: a path, or a name looked up in PATH.
	// Empty selects DefaultQEMUPath.
	QEMUPath string
	// Kernel is the guest kernel the probe boots (an ELF vmlinux with a PVH
	// note, or a bzImage). Empty or missing means auto mode falls back to
	// TCG without probing.
	Kernel string
	// CacheDir holds the probe cache (CacheFile). Empty disables caching.
	CacheDir string
	// Timeout bounds the boot probe; zero selects DefaultTimeout.
	Timeout time.Duration

	// Seams for tests; the zero values select the real host.
	kvmDevice     string                                                       // default /dev/kvm
	checkKVM      func(path string) error                                      // default checkKVMDevice
	bootIDPath    string                                                       // default /proc/sys/kernel/random/boot_id
	osReleasePath string                                                       // default /proc/sys/kernel/osrelease
	boot          func(ctx context.Context, p bootParams) (bootOutcome, error) // default bootProbe
	onStart       func(pid int, name string)                                   // called once the probe QEMU runs
}

func (c ProbeConfig) withDefaults() ProbeConfig {
	if c.QEMUPath == "" {
		c.QEMUPath = DefaultQEMUPath
	}
	if c.Timeout <= 0 {
		c.Timeout = DefaultTimeout
	}
	if c.kvmDevice == "" {
		c.kvmDevice = defaultKVMDevice
	}
	if c.checkKVM == nil {
		c.checkKVM = checkKVMDevice
	}
	if c.bootIDPath == "" {
		c.bootIDPath = "/proc/sys/kernel/random/boot_id"
	}
	if c.osReleasePath == "" {
		c.osReleasePath = "/proc/sys/kernel/osrelease"
	}
	if c.boot == nil {
		c.boot = bootProbe
	}
	return c
}

// Result is the accelerator chosen and why.
type Result struct {
	// Accelerator is AccelKVM or AccelTCG, never AccelAuto.
	Accelerator hypervisor.Accelerator `json:"accelerator"`
	// KVMUsable reports whether KVM passed the checks that were run: the
	// cheap device checks when KVM is forced, the boot probe in auto mode.
	// It is false when TCG is forced, since KVM was not examined.
	KVMUsable bool `json:"kvm_usable"`
	// Reason explains the choice for a person.
	Reason string `json:"reason"`
	// Cached is true when the result came from the probe cache.
	Cached bool `json:"cached"`
	// Elapsed is how long this call took (a cache hit takes microseconds;
	// the Reason of a probe result names how long the probe took).
	Elapsed time.Duration `json:"elapsed"`
	// CheckedAt is when KVM was examined: now, or when the cached probe ran.
	CheckedAt time.Time `json:"checked_at"`
}

// UnusableError reports that KVM was forced but cannot be used.
type UnusableError struct {
	// Reason says what is wrong and what to do about it.
	Reason string
	// Err is the underlying cause, if any.
	Err error
}

func (e *UnusableError) Error() string {
	if e.Err == nil {
		return "kvm unusable: " + e.Reason
	}
	return fmt.Sprintf("kvm unusable: %s: %v", e.Reason, e.Err)
}

func (e *UnusableError) Unwrap() error { return e.Err }

// Resolve turns the configured accelerator into the one QEMU should use.
//
// AccelTCG is returned as is. AccelKVM is checked cheaply (the device opens,
// the API version matches, a VM can be created) and an *UnusableError is
// returned if it fails; the slow boot probe is never run for it. AccelAuto
// (or the empty string) runs Probe.
func Resolve(ctx context.Context, want hypervisor.Accelerator, cfg ProbeConfig) (Result, error) {
	start := time.Now()
	cfg = cfg.withDefaults()
	switch want {
	case hypervisor.AccelTCG:
		return Result{Accelerator: hypervisor.AccelTCG, Reason: ReasonForced, Elapsed: time.Since(start), CheckedAt: start}, nil
	case hypervisor.AccelKVM:
		if err := ctx.Err(); err != nil {
			return Result{}, fmt.Errorf("resolve accelerator kvm: %w", err)
		}
		if err := cfg.checkKVM(cfg.kvmDevice); err != nil {
			return Result{}, err
		}
		return Result{
			Accelerator: hypervisor.AccelKVM,
			KVMUsable:   true,
			Reason:      ReasonForced + " (" + cfg.kvmDevice + " passed device checks; boot probe skipped)",
			Elapsed:     time.Since(start),
			CheckedAt:   start,
		}, nil
	case hypervisor.AccelAuto, "":
		return probe(ctx, cfg, start)
	default:
		return Result{}, &hypervisor.ConfigError{
			Field: "Accelerator",
			Err:   fmt.Errorf("unknown accelerator %q (want %q, %q or %q)", want, hypervisor.AccelAuto, hypervisor.AccelKVM, hypervisor.AccelTCG),
		}
	}
}

// Probe decides between KVM and TCG the way AccelAuto does: the cheap device
// checks first, then the cache, then a real boot of cfg.Kernel under KVM.
// A KVM that fails any step yields TCG with the reason, not an error. Errors
// are returned only when the probe could not be carried out: QEMU is
// missing or ctx ended.
func Probe(ctx context.Context, cfg ProbeConfig) (Result, error) {
	return probe(ctx, cfg.withDefaults(), time.Now())
}

func probe(ctx context.Context, cfg ProbeConfig, start time.Time) (Result, error) {
	if err := ctx.Err(); err != nil {
		return Result{}, fmt.Errorf("probe kvm: %w", err)
	}
	tcg := func(reason string) Result {
		return Result{Accelerator: hypervisor.AccelTCG, Reason: reason, Elapsed: time.Since(start), CheckedAt: start}
	}

	if err := cfg.checkKVM(cfg.kvmDevice); err != nil {
		var ue *UnusableError
		if errors.As(err, &ue) {
			return tcg(ue.Error()), nil
		}
		return tcg("kvm unusable: " + err.Error()), nil
	}

	if cfg.Kernel == "" {
		return tcg(ReasonNoKernel), nil
	}
	if _, err := os.Stat(cfg.Kernel); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return tcg(ReasonNoKernel), nil
		}
		return tcg(fmt.Sprintf("cannot read guest kernel %s to probe KVM with: %v", cfg.Kernel, err)), nil
	}

	qemu, err := lookQEMU(cfg.QEMUPath)
	if err != nil {
		return Result{}, fmt.Errorf("probe kvm: %w", err)
	}

	fp, fpErr := fingerprint(cfg, qemu)
	cachePath := ""
	if cfg.CacheDir != "" && fpErr == nil {
		cachePath = filepath.Join(cfg.CacheDir, CacheFile)
		cached := func() (Result, bool) {
			e, ok := loadCache(cachePath, fp)
			if !ok {
				return Result{}, false
			}
			return Result{
				Accelerator: e.Accelerator,
				KVMUsable:   e.KVMUsable,
				Reason:      e.Reason,
				Cached:      true,
				Elapsed:     time.Since(start),
				CheckedAt:   e.CheckedAt,
			}, true
		}
		if res, ok := cached(); ok {
			return res, nil
		}
		// Only one process probes at a time: concurrent probes would
		// compete for the CPUs and could make a healthy KVM look slow.
		// Whoever waited for the lock then finds the winner's verdict.
		unlock, err := lockCache(ctx, cachePath+".lock")
		if err != nil {
			if ctx.Err() != nil {
				return Result{}, fmt.Errorf("probe kvm: %w", err)
			}
			// No lock (read-only cache dir...): probe anyway.
		} else {
			defer unlock()
			if res, ok := cached(); ok {
				return res, nil
			}
		}
	}

	out, err := cfg.boot(ctx, bootParams{
		QEMU:    qemu,
		Kernel:  cfg.Kernel,
		Timeout: cfg.Timeout,
		OnStart: cfg.onStart,
	})
	if err != nil {
		return Result{}, fmt.Errorf("probe kvm with %s: %w", cfg.Kernel, err)
	}
	res := Result{
		Accelerator: hypervisor.AccelTCG,
		KVMUsable:   out.Usable,
		Reason:      out.Reason,
		CheckedAt:   start,
	}
	if out.Usable {
		res.Accelerator = hypervisor.AccelKVM
	}
	if cachePath != "" {
		// A cache that cannot be written only costs a probe next time.
		_ = saveCache(cachePath, cacheEntry{
			Fingerprint: fp.sum(),
			Inputs:      fp,
			Accelerator: res.Accelerator,
			KVMUsable:   res.KVMUsable,
			Reason:      res.Reason,
			ProbeTime:   out.Elapsed,
			CheckedAt:   res.CheckedAt,
		})
	}
	res.Elapsed = time.Since(start)
	return res, nil
}

// lookQEMU resolves the QEMU binary to an absolute path.
func lookQEMU(path string) (string, error) {
	if !strings.Contains(path, "/") {
		p, err := exec.LookPath(path)
		if err != nil {
			return "", fmt.Errorf("find qemu %q: %w", path, err)
		}
		path = p
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return "", fmt.Errorf("find qemu %q: %w", path, err)
	}
	fi, err := os.Stat(abs)
	if err != nil {
		return "", fmt.Errorf("find qemu: %w", err)
	}
	if fi.IsDir() || fi.Mode().Perm()&0o111 == 0 {
		return "", fmt.Errorf("find qemu %s: not an executable file", abs)
	}
	return abs, nil
}
