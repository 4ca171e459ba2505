// Package factory makes sandbox VMs without booting them: it boots one
// template VM per configuration, saves it, and restores every new VM from
// a copy of the template.
//
// A template is booted once (with ACPI, a free PCIe root port and a VM
// generation ID device), its agent is left idle, and QEMU saves its device
// state while its RAM stays in a memory file on a tmpfs. A clone gets its
// own copy of that file (only the pages that hold data), QEMU loads the
// small device state, and the sandbox's virtio-fs is hot-plugged, since
// QEMU cannot migrate a vhost-user-fs device. The new generation ID makes
// the guest reseed its random number generator, and the agent steps its
// clock to the hardware clock on the first host call, so clones share
// neither the template's randomness nor its time.
package factory

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/cocoon-runtime/cocoon/hypervisor"
	"github.com/cocoon-runtime/cocoon/internal/failpoint"
	"github.com/cocoon-runtime/cocoon/internal/sparse"
	"github.com/cocoon-runtime/cocoon/vm"
	"golang.org/x/sys/unix"
)

// Factory keeps templates under a directory (on a tmpfs: template RAM is
// a file there). It holds no state in memory and is safe for concurrent
// use, also by several processes.
type Factory struct {
	dir  string
	opts vm.Options
}

// New returns a factory keeping its templates in dir.
func New(dir string, opts vm.Options) *Factory { return &Factory{dir: dir, opts: opts} }

// Files of a template, in its directory.
const (
	stateFile  = "state"     // QEMU's saved device state
	memoryFile = "guest.mem" // the template's RAM
	lockFile   = "lock"
)

// VM returns a running VM id for cfg, restored from the template for
// cfg's configuration, which is made first if there is none. cfg is
// adjusted as templates need (a PCIe root port, a generation ID).
func (f *Factory) VM(ctx context.Context, id string, cfg hypervisor.Config) (*vm.VM, error) {
	cfg = templated(cfg)
	dir, err := f.ensure(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("vm template: %w", err)
	}
	// A shared lock keeps the template from being pruned while it is read.
	lock, err := lockTemplate(dir, unix.LOCK_SH)
	if err != nil {
		return nil, fmt.Errorf("vm template: %w", err)
	}
	defer lock.Close()
	if !ready(dir) {
		return nil, fmt.Errorf("vm template %s: removed while in use", filepath.Base(dir))
	}
	return vm.Restore(ctx, id, cfg, f.opts, filepath.Join(dir, stateFile), filepath.Join(dir, memoryFile))
}

// lockTemplate opens the lock of template dir and takes it (how: a
// flock(2) operation), creating dir if needed.
func lockTemplate(dir string, how int) (*os.File, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	lock, err := os.OpenFile(filepath.Join(dir, lockFile), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(lock.Fd()), how); err != nil {
		lock.Close()
		return nil, err
	}
	return lock, nil
}

// templated is cfg as a template and its clones run it: restoring needs
// the same devices on both sides, a root port for the shared file
// system's hotplug, and a generation ID.
func templated(cfg hypervisor.Config) hypervisor.Config {
	cfg.HotplugSlots = max(cfg.HotplugSlots, 1)
	cfg.GenerationID = true
	return cfg
}

// templateFormat changes whenever what a template holds changes for the
// same configuration (the driver's own kernel parameters, devices), so
// that an older template is not restored.
const templateFormat = 2

// Key identifies the template of a configuration: everything that shapes
// the saved VM, with the guest image's files identified by size and
// modification time as well as path.
func Key(cfg hypervisor.Config) (string, error) {
	kernel, err := identify(cfg.Kernel)
	if err != nil {
		return "", err
	}
	initrd, err := identify(cfg.Initrd)
	if err != nil {
		return "", err
	}
	b, err := json.Marshal(struct {
		Format                                   int
		Kernel, Initrd                           fileID
		Path, MachineType                        string
		KernelParams                             []string
		VCPUs, MaxVCPUs, MemoryMiB, MaxMemoryMiB uint32
		Accelerator                              hypervisor.Accelerator
		Transport                                hypervisor.Transport
		HotplugSlots                             int
		Debug, GenerationID                      bool
	}{templateFormat, kernel, initrd, cfg.Path, cfg.MachineType, cfg.KernelParams, cfg.VCPUs, cfg.MaxVCPUs, cfg.MemoryMiB, cfg.MaxMemoryMiB,
		cfg.Accelerator, cfg.AgentTransport, cfg.HotplugSlots, cfg.Debug, cfg.GenerationID})
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:8]), nil
}

// ensure returns the directory of cfg's template, making the template if
// it does not exist yet. One process makes it; others wait for its lock.
func (f *Factory) ensure(ctx context.Context, cfg hypervisor.Config) (string, error) {
	key, err := Key(cfg)
	if err != nil {
		return "", err
	}
	dir := filepath.Join(f.dir, key)
	if ready(dir) {
		return dir, nil
	}
	lock, err := lockTemplate(dir, unix.LOCK_EX)
	if err != nil {
		return "", err
	}
	defer lock.Close()
	if ready(dir) { // made while we waited
		return dir, nil
	}
	if err := f.make(ctx, dir, "template-"+key, cfg); err != nil {
		os.Remove(filepath.Join(dir, memoryFile))
		return "", err
	}
	f.prune(key)
	return dir, nil
}

// sources records what a template was made from, in its directory, so
// that prune can tell a template no configuration can use any more.
type sources struct {
	Format int
	Files  []fileID
}

type fileID struct {
	Path    string
	Size    int64
	ModTime time.Time
}

func identify(p string) (fileID, error) {
	if p == "" {
		return fileID{}, nil
	}
	st, err := os.Stat(p)
	if err != nil {
		return fileID{}, err
	}
	return fileID{p, st.Size(), st.ModTime().UTC()}, nil
}

// sourcesFile holds a template's sources.
const sourcesFile = "sources.json"

func writeSources(dir string, cfg hypervisor.Config) error {
	src := sources{Format: templateFormat}
	for _, p := range []string{cfg.Kernel, cfg.Initrd} {
		if p == "" {
			continue
		}
		id, err := identify(p)
		if err != nil {
			return err
		}
		src.Files = append(src.Files, id)
	}
	b, err := json.Marshal(src)
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, sourcesFile), b, 0o600)
}

// stale reports whether the template in dir is of an older format, or
// was made from a guest kernel or initramfs that changed or is gone since
// (a guest image was rebuilt or deleted): no configuration restores it.
func stale(dir string) bool {
	b, err := os.ReadFile(filepath.Join(dir, sourcesFile))
	if err != nil {
		return true // made by an older version, or never finished
	}
	var src sources
	if json.Unmarshal(b, &src) != nil || src.Format != templateFormat {
		return true
	}
	for _, want := range src.Files {
		if got, err := identify(want.Path); err != nil || got.Size != want.Size || !got.ModTime.Equal(want.ModTime) {
			return true
		}
	}
	return false
}

// prune removes the stale templates other than key's, each only if no
// other process holds its lock (making it, or restoring from it). It is
// best effort: a template it leaves is pruned after the next one is made.
func (f *Factory) prune(key string) {
	entries, err := os.ReadDir(f.dir)
	if err != nil {
		return
	}
	for _, e := range entries {
		dir := filepath.Join(f.dir, e.Name())
		if e.Name() == key || !e.IsDir() || !stale(dir) {
			continue
		}
		lock, err := lockTemplate(dir, unix.LOCK_EX|unix.LOCK_NB)
		if err != nil {
			continue // in use
		}
		if stale(dir) {
			if err := os.RemoveAll(dir); err == nil {
				f.opts.Logger().Info("vm template pruned", "template", e.Name())
			}
		}
		lock.Close()
	}
}

func ready(dir string) bool {
	_, err := os.Stat(filepath.Join(dir, stateFile))
	return err == nil
}

// make boots the template VM, waits for its agent, leaves it idle, saves
// it and stops it. The state file appears last, by rename.
func (f *Factory) make(ctx context.Context, dir, id string, cfg hypervisor.Config) (err error) {
	start := time.Now()
	cfg.StateDir = filepath.Join(dir, "vm")
	cfg.MemoryFile = filepath.Join(dir, memoryFile)
	cfg.SharedFSSocket = "" // hot-plugged into each clone
	os.Remove(cfg.MemoryFile)
	v, err := vm.Start(ctx, id, cfg, f.opts)
	if err != nil {
		return err
	}
	defer func() {
		if serr := v.HV.Cleanup(context.Background()); serr != nil && err == nil {
			err = serr
		}
	}()
	failpoint.Hit(failpoint.TemplateMake)
	// What the idle guest freed still holds data in its RAM: have it
	// zeroed, so that those pages are left out of the saved RAM file.
	zeroed, err := v.Agent.ReclaimMemory(ctx)
	if err != nil {
		f.opts.Logger().Warn("vm template: guest memory not reclaimed", "template", id, "err", err)
	}
	// The guest must see the host leave before the save, so that a clone's
	// agent waits for a new host instead of talking to a stale session.
	v.Agent.Close()
	v.Agent = nil
	time.Sleep(300 * time.Millisecond)
	tmp := filepath.Join(dir, stateFile+".tmp")
	if err := v.HV.SaveVM(ctx, tmp); err != nil {
		return err
	}
	punched, err := sparse.PunchZeros(cfg.MemoryFile)
	if err != nil {
		return err
	}
	if err := writeSources(dir, cfg); err != nil {
		return err
	}
	if err := os.Rename(tmp, filepath.Join(dir, stateFile)); err != nil {
		return err
	}
	f.opts.Logger().Info("vm template ready", "template", id, "took", time.Since(start),
		"guest_zeroed_mib", zeroed>>20, "zero_pages_dropped_mib", punched>>20)
	return nil
}

// Remove deletes every template (clones keep running: each has its own
// copy of the memory).
func (f *Factory) Remove() error {
	entries, err := os.ReadDir(f.dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var errs []error
	for _, e := range entries {
		errs = append(errs, os.RemoveAll(filepath.Join(f.dir, e.Name())))
	}
	return errors.Join(errs...)
}
