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
//
// Template and clone RAM lives on a tmpfs of its own (Config.MemoryDir,
// of Config.MemoryMiB), so that guests filling their memory fill it and
// not /run. A clone's RAM file is removed once QEMU mapped it: its pages
// go when QEMU exits, however it exits. At most Config.TemplateLimit
// templates are kept: making one more evicts the least recently used one
// that is not in use.
//
// A template's lock (flock(2) on its lock file, through internal/flock)
// is held shared while a VM is restored from it and exclusive while it is
// made or removed; a template appears by the rename of its state file,
// and a maker that died leaves nothing that is seen as ready: the next
// maker clears what it left.
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
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/cocoon-runtime/cocoon/hypervisor"
	"github.com/cocoon-runtime/cocoon/internal/boundedfs"
	"github.com/cocoon-runtime/cocoon/internal/failpoint"
	"github.com/cocoon-runtime/cocoon/internal/flock"
	"github.com/cocoon-runtime/cocoon/internal/sparse"
	"github.com/cocoon-runtime/cocoon/internal/vm"
	"golang.org/x/sys/unix"
)

// Config places a factory's files and bounds them.
type Config struct {
	// Dir holds the templates: a directory each, with its lock, its
	// saved device state and its VM's runtime directory while it is made.
	Dir string
	// MemoryDir holds the RAM of the templates and of the VMs restored
	// from them, on a tmpfs of MemoryMiB that the factory mounts there on
	// first use: guests filling their RAM files fill that tmpfs, not the
	// file system of Dir (/run, shared with the whole host). Empty means
	// "mem" next to Dir.
	MemoryDir string
	// MemoryMiB sizes MemoryDir's tmpfs; 0 means DefaultMemoryMiB.
	MemoryMiB uint32
	// TemplateLimit is the most templates kept at once; 0 means
	// DefaultTemplateLimit. Making one more first evicts the least
	// recently used template that is not in use.
	TemplateLimit int
}

// Defaults of Config (those of the configuration file).
const (
	DefaultTemplateLimit = 4
	DefaultMemoryMiB     = 5120
)

// Factory keeps templates under a directory. It holds no state in memory
// and is safe for concurrent use, also by several processes: a template's
// lock, taken shared to restore from it and exclusive to make or remove
// it, coordinates them.
type Factory struct {
	cfg  Config
	opts vm.Options
	// boot makes template t (f.make; a fake in tests).
	boot func(ctx context.Context, t template, cfg hypervisor.Config) error
	// mount mounts the memory tmpfs (boundedfs.MountShared; a fake in tests).
	mount func(ctx context.Context, dir string, sizeMiB uint32) error
	// removeVM stops and removes the VM whose runtime directory is dir.
	removeVM func(ctx context.Context, dir string) error
}

// New returns a factory as cfg describes.
func New(cfg Config, opts vm.Options) *Factory {
	if cfg.MemoryDir == "" {
		cfg.MemoryDir = filepath.Join(filepath.Dir(cfg.Dir), "mem")
	}
	if cfg.MemoryMiB == 0 {
		cfg.MemoryMiB = DefaultMemoryMiB
	}
	if cfg.TemplateLimit <= 0 {
		cfg.TemplateLimit = DefaultTemplateLimit
	}
	f := &Factory{cfg: cfg, opts: opts, mount: mountMemory}
	f.boot = f.make
	f.removeVM = f.removeVMDir
	return f
}

// mountMemory mounts the tmpfs of sizeMiB MiB that VM memory lives on.
func mountMemory(ctx context.Context, dir string, sizeMiB uint32) error {
	return boundedfs.MountShared(ctx, dir, int64(sizeMiB)<<20)
}

// Files of a template, in its directory.
const (
	stateFile   = "state" // QEMU's saved device state; appears last, by rename
	lockFile    = "lock"
	usedFile    = "used" // its modification time is the template's last use
	vmDir       = "vm"   // the runtime directory of the template's VM
	sourcesFile = "sources.json"
	// legacyMemoryFile is where older versions kept a template's RAM.
	legacyMemoryFile = "guest.mem"
)

// template names the files of one template.
type template struct {
	key    string
	dir    string
	memory string // its RAM, under the memory tmpfs
}

func (f *Factory) template(key string) template {
	return template{key: key, dir: filepath.Join(f.cfg.Dir, key),
		memory: filepath.Join(f.cfg.MemoryDir, "templates", key+".guest.mem")}
}

func (t template) path(name string) string { return filepath.Join(t.dir, name) }

// ready reports whether the template is complete: its state is renamed
// into place only once everything else is.
func (t template) ready() bool {
	for _, p := range []string{t.path(stateFile), t.memory} {
		if _, err := os.Stat(p); err != nil {
			return false
		}
	}
	return true
}

// lastUse is when the template was last restored from (or made).
func (t template) lastUse() time.Time {
	st, err := os.Stat(t.path(usedFile))
	if err != nil {
		return time.Time{}
	}
	return st.ModTime()
}

// touch records a use of the template.
func (t template) touch() error {
	now := time.Now()
	err := os.Chtimes(t.path(usedFile), now, now)
	if errors.Is(err, os.ErrNotExist) {
		err = os.WriteFile(t.path(usedFile), nil, 0o600)
	}
	return err
}

// errNoRoom reports that a new template would exceed the limit and every
// template is in use.
var errNoRoom = errors.New("template limit reached and every template in use")

// VM returns a running VM id for cfg, restored from the template for
// cfg's configuration, which is made first if there is none. cfg is
// adjusted as templates need (a PCIe root port, a generation ID). When
// the template limit is reached and no template can be evicted, the VM
// boots without one.
func (f *Factory) VM(ctx context.Context, id string, cfg hypervisor.Config) (*vm.VM, error) {
	plain := cfg
	cfg = templated(cfg)
	key, err := Key(cfg)
	if err != nil {
		return nil, fmt.Errorf("vm template: %w", err)
	}
	if err := f.mount(ctx, f.cfg.MemoryDir, f.cfg.MemoryMiB); err != nil {
		return nil, fmt.Errorf("vm template: %w", err)
	}
	t := f.template(key)
	lock, err := f.use(ctx, t, cfg)
	if errors.Is(err, errNoRoom) {
		f.opts.Logger().Info("vm template limit reached, every template in use: booting", "vm", id, "limit", f.cfg.TemplateLimit)
		return vm.Start(ctx, id, plain, f.opts)
	}
	if err != nil {
		return nil, fmt.Errorf("vm template: %w", err)
	}
	defer lock.Close()
	f.sweepClones(cfg.StateDir)
	cfg.MemoryFile = f.cloneMemory(id)
	if err := os.MkdirAll(filepath.Dir(cfg.MemoryFile), 0o700); err != nil {
		return nil, fmt.Errorf("vm template: %w", err)
	}
	v, err := vm.Restore(ctx, id, cfg, f.opts, t.path(stateFile), t.memory)
	if errors.Is(err, unix.ENOSPC) {
		return nil, fmt.Errorf("%w (the tmpfs of guest RAM, %s of %d MiB, is full: raise factory.memory_mib)", err, f.cfg.MemoryDir, f.cfg.MemoryMiB)
	}
	return v, err
}

// use returns a shared lock on t, ready, making it first if there is
// none. The lock keeps it from being pruned or evicted while it is read.
func (f *Factory) use(ctx context.Context, t template, cfg hypervisor.Config) (*os.File, error) {
	for range 3 {
		if err := f.ensure(ctx, t, cfg); err != nil {
			return nil, err
		}
		lock, err := f.lock(ctx, t, unix.LOCK_SH)
		if err != nil {
			return nil, err
		}
		if t.ready() {
			if err := t.touch(); err != nil {
				f.opts.Logger().Debug("vm template: record use", "template", t.key, "err", err)
			}
			return lock, nil
		}
		lock.Close() // evicted between ensure and lock: make it again
	}
	return nil, fmt.Errorf("template %s: removed while in use", t.key)
}

// cloneMemory is the RAM file of the restored VM id. vm.Restore removes it
// once QEMU mapped it: its pages are then freed when QEMU exits, however
// it exits.
func (f *Factory) cloneMemory(id string) string {
	return filepath.Join(f.cfg.MemoryDir, "vms", id+".guest.mem")
}

// sweepClones removes the RAM files of restored VMs that no longer exist
// (their restore was cut short before the file was removed). A VM's
// runtime directory exists from before its RAM file is made to after it
// is removed, so a file without one belongs to nobody.
func (f *Factory) sweepClones(stateDir string) {
	entries, err := os.ReadDir(filepath.Join(f.cfg.MemoryDir, "vms"))
	if err != nil {
		return
	}
	for _, e := range entries {
		id, ok := strings.CutSuffix(e.Name(), ".guest.mem")
		if !ok || hypervisor.ValidateID(id) != nil {
			continue
		}
		if _, err := os.Lstat(filepath.Join(stateDir, id)); errors.Is(err, os.ErrNotExist) {
			os.Remove(filepath.Join(f.cfg.MemoryDir, "vms", e.Name()))
		}
	}
}

// lock takes t's lock (how: a flock(2) operation), creating t's directory
// if needed. The lock is on the file at the lock's path, even when the
// template was removed while we waited.
func (f *Factory) lock(ctx context.Context, t template, how int) (*os.File, error) {
	for attempt := 1; ; attempt++ {
		if err := os.MkdirAll(t.dir, 0o700); err != nil {
			return nil, err
		}
		l, err := flock.Lock(ctx, t.path(lockFile), how)
		if errors.Is(err, os.ErrNotExist) && attempt < 100 {
			continue // the directory was removed after MkdirAll
		}
		return l, err
	}
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
const templateFormat = 3

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

// ensure makes template t if it is not ready. One process makes it;
// others wait for its lock. What a maker that died left is removed
// first, and room is made under the template limit.
func (f *Factory) ensure(ctx context.Context, t template, cfg hypervisor.Config) error {
	if t.ready() {
		return nil
	}
	lock, err := f.lock(ctx, t, unix.LOCK_EX)
	if err != nil {
		return err
	}
	if t.ready() { // made while we waited
		lock.Close()
		return nil
	}
	if err := f.cleanupPartial(ctx, t); err != nil {
		lock.Close()
		return fmt.Errorf("template %s: clear an unfinished template: %w", t.key, err)
	}
	if err := f.makeRoom(ctx, t.key); err != nil {
		// Leave no empty template behind to count against the limit.
		f.removeTemplate(ctx, t, lock)
		return err
	}
	if err := f.boot(ctx, t, cfg); err != nil {
		if rerr := f.removeTemplate(context.Background(), t, lock); rerr != nil {
			f.opts.Logger().Warn("vm template: remove after failure", "template", t.key, "err", rerr)
		}
		return err
	}
	if err := t.touch(); err != nil {
		f.opts.Logger().Debug("vm template: record use", "template", t.key, "err", err)
	}
	lock.Close()
	f.prune(ctx, t.key)
	return nil
}

// cleanupPartial removes the files of template t other than its lock,
// which the caller holds exclusively: its state first, so that it is
// never seen as ready while it is removed, then a VM left running or its
// runtime directory (by a maker killed while it made t), its memory file
// and its records.
func (f *Factory) cleanupPartial(ctx context.Context, t template) error {
	var errs []error
	rm := func(p string) {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	rm(t.path(stateFile))
	vms := t.path(vmDir)
	entries, err := os.ReadDir(vms)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	for _, e := range entries {
		if err := f.removeVM(ctx, filepath.Join(vms, e.Name())); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return errors.Join(errs...) // a VM still runs: keep its memory
	}
	rm(vms)
	for _, p := range []string{t.memory, t.path(legacyMemoryFile), t.path(stateFile + ".tmp"), t.path(sourcesFile), t.path(usedFile)} {
		rm(p)
	}
	return errors.Join(errs...)
}

// removeVMDir stops and removes a template VM left in runtime directory
// dir by a maker that died, however far its start got.
func (f *Factory) removeVMDir(ctx context.Context, dir string) error {
	return vm.Remove(ctx, filepath.Dir(dir), filepath.Base(dir), f.opts)
}

// removeTemplate removes template t, whose lock the caller holds
// exclusively (lock), and releases the lock. The lock file goes last,
// while held, so that a process waiting on it notices and locks a live
// file (a new template of the same key) instead of the removed one.
func (f *Factory) removeTemplate(ctx context.Context, t template, lock *os.File) error {
	if err := f.cleanupPartial(ctx, t); err != nil {
		lock.Close()
		return err
	}
	if err := flock.Remove(t.path(lockFile), lock); err != nil {
		return err
	}
	os.Remove(t.dir) // fails when a waiter already made a new lock there
	return nil
}

// GC removes what makers and restores killed midway left: unfinished
// templates that nobody is making (their lock is free), with a template VM
// still running if there is one, and the RAM files of restored VMs that no
// longer exist under vmStateDir. It returns the keys of the templates it
// removed. Finished templates stay: they are a cache.
func (f *Factory) GC(ctx context.Context, vmStateDir string) ([]string, error) {
	var removed []string
	var errs []error
	for _, t := range f.templates("") {
		if t.ready() {
			continue
		}
		lock, err := flock.Lock(ctx, t.path(lockFile), unix.LOCK_EX|unix.LOCK_NB)
		if err != nil {
			continue // being made, or gone meanwhile
		}
		if t.ready() {
			lock.Close()
			continue
		}
		if err := f.removeTemplate(ctx, t, lock); err != nil {
			errs = append(errs, fmt.Errorf("template %s: %w", t.key, err))
			continue
		}
		removed = append(removed, t.key)
	}
	f.sweepClones(vmStateDir)
	return removed, errors.Join(errs...)
}

// validKey is what a template directory's name looks like (Key).
var validKey = regexp.MustCompile(`^[0-9a-f]{16}$`)

// templates lists the templates other than key's.
func (f *Factory) templates(key string) []template {
	entries, err := os.ReadDir(f.cfg.Dir)
	if err != nil {
		return nil
	}
	var out []template
	for _, e := range entries {
		if e.IsDir() && e.Name() != key && validKey.MatchString(e.Name()) {
			out = append(out, f.template(e.Name()))
		}
	}
	return out
}

// makeRoom evicts templates, least recently used first, until one more
// (key's) stays within the limit. Templates in use (locked: being made or
// restored from) are never evicted; errNoRoom reports that not enough
// could be. Unfinished templates have no last use and go first.
func (f *Factory) makeRoom(ctx context.Context, key string) error {
	others := f.templates(key)
	n := len(others)
	if n < f.cfg.TemplateLimit {
		return nil
	}
	used := make(map[string]time.Time, n)
	for _, o := range others {
		used[o.key] = o.lastUse()
	}
	slices.SortFunc(others, func(a, b template) int { return used[a.key].Compare(used[b.key]) })
	for _, o := range others {
		if n < f.cfg.TemplateLimit {
			break
		}
		lock, err := f.lock(ctx, o, unix.LOCK_EX|unix.LOCK_NB)
		if err != nil {
			continue // in use
		}
		if err := f.removeTemplate(ctx, o, lock); err != nil {
			f.opts.Logger().Warn("vm template: evict", "template", o.key, "err", err)
			continue
		}
		f.opts.Logger().Info("vm template evicted", "template", o.key, "limit", f.cfg.TemplateLimit)
		n--
	}
	if n >= f.cfg.TemplateLimit {
		return fmt.Errorf("template %s: %w (%d)", key, errNoRoom, f.cfg.TemplateLimit)
	}
	return nil
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
func (f *Factory) prune(ctx context.Context, key string) {
	for _, t := range f.templates(key) {
		if !stale(t.dir) {
			continue
		}
		lock, err := f.lock(ctx, t, unix.LOCK_EX|unix.LOCK_NB)
		if err != nil {
			continue // in use
		}
		if !stale(t.dir) {
			lock.Close()
			continue
		}
		if err := f.removeTemplate(ctx, t, lock); err == nil {
			f.opts.Logger().Info("vm template pruned", "template", t.key)
		}
	}
}

// make boots the template VM, waits for its agent, leaves it idle, saves
// it and stops it. The state file appears last, by rename.
func (f *Factory) make(ctx context.Context, t template, cfg hypervisor.Config) (err error) {
	start := time.Now()
	id := "template-" + t.key
	cfg.StateDir = t.path(vmDir)
	cfg.MemoryFile = t.memory
	cfg.SharedFSSocket = "" // hot-plugged into each clone
	if err := os.MkdirAll(filepath.Dir(t.memory), 0o700); err != nil {
		return err
	}
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
	tmp := t.path(stateFile + ".tmp")
	if err := v.HV.SaveVM(ctx, tmp); err != nil {
		return err
	}
	punched, err := sparse.PunchZeros(cfg.MemoryFile)
	if err != nil {
		return err
	}
	if err := writeSources(t.dir, cfg); err != nil {
		return err
	}
	if err := os.Rename(tmp, t.path(stateFile)); err != nil {
		return err
	}
	f.opts.Logger().Info("vm template ready", "template", id, "took", time.Since(start),
		"guest_zeroed_mib", zeroed>>20, "zero_pages_dropped_mib", punched>>20)
	return nil
}

// Remove deletes every template that is not in use, and unmounts the
// memory tmpfs once nothing uses it (clones keep running: each has its
// own copy of the memory, and the tmpfs stays mounted while one runs).
func (f *Factory) Remove() error {
	ctx := context.Background()
	var errs []error
	for _, t := range f.templates("") {
		lock, err := f.lock(ctx, t, unix.LOCK_EX|unix.LOCK_NB)
		if err != nil {
			errs = append(errs, fmt.Errorf("template %s: %w", t.key, err))
			continue
		}
		errs = append(errs, f.removeTemplate(ctx, t, lock))
	}
	err := unix.Unmount(f.cfg.MemoryDir, 0)
	if err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.EBUSY) {
		errs = append(errs, fmt.Errorf("unmount %s: %w", f.cfg.MemoryDir, err))
	}
	return errors.Join(errs...)
}
