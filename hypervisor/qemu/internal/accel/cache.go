package accel

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/cocoon-runtime/cocoon/hypervisor"
	"golang.org/x/sys/unix"
)

// probeVersion is part of the fingerprint: bump it when the probe changes in
// a way that could change its verdict, so old cache entries are ignored.
const probeVersion = 1

// fileID identifies one version of a file.
type fileID struct {
	Path    string `json:"path"`
	Size    int64  `json:"size"`
	ModTime int64  `json:"mtime_ns"`
}

func statID(path string) (fileID, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return fileID{}, err
	}
	return fileID{Path: path, Size: fi.Size(), ModTime: fi.ModTime().UnixNano()}, nil
}

// fingerprintInputs is everything a probe verdict depends on. The boot ID
// changes on every host reboot, which catches a changed KVM module, BIOS
// setting or nesting configuration.
type fingerprintInputs struct {
	ProbeVersion  int    `json:"probe_version"`
	QEMU          fileID `json:"qemu"`
	Kernel        fileID `json:"kernel"`
	BootID        string `json:"boot_id"`
	KernelRelease string `json:"kernel_release"`
}

func (f fingerprintInputs) sum() string {
	b, _ := json.Marshal(f) // plain struct: cannot fail
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

func fingerprint(cfg ProbeConfig, qemu string) (fingerprintInputs, error) {
	q, err := statID(qemu)
	if err != nil {
		return fingerprintInputs{}, fmt.Errorf("fingerprint qemu: %w", err)
	}
	k, err := statID(cfg.Kernel)
	if err != nil {
		return fingerprintInputs{}, fmt.Errorf("fingerprint kernel: %w", err)
	}
	boot, err := os.ReadFile(cfg.bootIDPath)
	if err != nil {
		return fingerprintInputs{}, fmt.Errorf("fingerprint host boot id: %w", err)
	}
	rel, err := os.ReadFile(cfg.osReleasePath)
	if err != nil {
		return fingerprintInputs{}, fmt.Errorf("fingerprint host kernel release: %w", err)
	}
	return fingerprintInputs{
		ProbeVersion:  probeVersion,
		QEMU:          q,
		Kernel:        k,
		BootID:        strings.TrimSpace(string(boot)),
		KernelRelease: strings.TrimSpace(string(rel)),
	}, nil
}

// cacheEntry is the on-disk form of a probe verdict.
type cacheEntry struct {
	Fingerprint string                 `json:"fingerprint"`
	Inputs      fingerprintInputs      `json:"inputs"`
	Accelerator hypervisor.Accelerator `json:"accelerator"`
	KVMUsable   bool                   `json:"kvm_usable"`
	Reason      string                 `json:"reason"`
	ProbeTime   time.Duration          `json:"probe_time_ns"`
	CheckedAt   time.Time              `json:"checked_at"`
}

// loadCache returns the entry at path if it is well-formed and matches fp.
// A missing, unreadable, corrupt or stale cache is simply a miss.
func loadCache(path string, fp fingerprintInputs) (cacheEntry, bool) {
	b, err := os.ReadFile(path)
	if err != nil {
		return cacheEntry{}, false
	}
	var e cacheEntry
	if err := json.Unmarshal(b, &e); err != nil {
		return cacheEntry{}, false
	}
	if e.Fingerprint != fp.sum() || e.Inputs != fp {
		return cacheEntry{}, false
	}
	switch {
	case e.Accelerator == hypervisor.AccelKVM && e.KVMUsable:
	case e.Accelerator == hypervisor.AccelTCG && !e.KVMUsable:
	default:
		return cacheEntry{}, false
	}
	if e.Reason == "" {
		return cacheEntry{}, false
	}
	return e, true
}

// saveCache writes e to path atomically: a temporary file in the same
// directory, synced, then renamed over path. The directory is created 0700
// and the file is 0600.
func saveCache(path string, e cacheEntry) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("save accel cache: %w", err)
	}
	b, err := json.MarshalIndent(e, "", "  ")
	if err != nil {
		return fmt.Errorf("save accel cache %s: %w", path, err)
	}
	b = append(b, '\n')
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*") // created 0600
	if err != nil {
		return fmt.Errorf("save accel cache: %w", err)
	}
	tmp := f.Name()
	ok := false
	defer func() {
		if !ok {
			os.Remove(tmp)
		}
	}()
	if _, err := f.Write(b); err != nil {
		f.Close()
		return fmt.Errorf("save accel cache: write %s: %w", tmp, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("save accel cache: sync %s: %w", tmp, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("save accel cache: close %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("save accel cache: %w", err)
	}
	ok = true
	return nil
}

// lockCache takes an exclusive flock on path (created 0600, its directory
// 0700), polling so that ctx can end the wait. The lock dies with the
// process, so a crashed prober never blocks the next one.
func lockCache(ctx context.Context, path string) (unlock func(), err error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("lock accel cache: %w", err)
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock accel cache: %w", err)
	}
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return func() {
				_ = unix.Flock(int(f.Fd()), unix.LOCK_UN)
				f.Close()
			}, nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) && !errors.Is(err, unix.EINTR) {
			f.Close()
			return nil, fmt.Errorf("lock accel cache %s: %w", path, err)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("lock accel cache %s: %w", path, ctx.Err())
		case <-tick.C:
		}
	}
}
