package cocoon

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/cocoon-runtime/cocoon/agent/protocol"
	"github.com/cocoon-runtime/cocoon/hypervisor"
	"github.com/cocoon-runtime/cocoon/image"
	"github.com/cocoon-runtime/cocoon/internal/dan"
	"github.com/cocoon-runtime/cocoon/internal/factory"
	"github.com/cocoon-runtime/cocoon/internal/failpoint"
	"github.com/cocoon-runtime/cocoon/internal/layout"
	"github.com/cocoon-runtime/cocoon/internal/network"
	"github.com/cocoon-runtime/cocoon/internal/persist"
	"github.com/cocoon-runtime/cocoon/internal/storage"
	"github.com/cocoon-runtime/cocoon/internal/vm"
)

// SandboxConfig describes a sandbox to create.
type SandboxConfig struct {
	ID string
	// VM configures the sandbox's VM.
	VM VMConfig
	// BootTimeout bounds the wait for the guest agent (default 30s).
	BootTimeout time.Duration
	Annotations map[string]string
	// Containers are created (not started) with the sandbox.
	Containers []ContainerConfig
	// NetNS is the path of the pod's network namespace (such as the one
	// containerd's CRI makes and runs CNI in), or "" for a sandbox with no
	// network but the guest's loopback. Each veth there gets a tap beside
	// it, redirected both ways with tc, and the VM a NIC on that tap with
	// the veth's MAC; the guest gives the NIC the veth's name, MTU,
	// addresses and routes. The namespace stays the caller's: Cocoon
	// removes only what it added there.
	NetNS string
	// Network, when set (and NetNS is ""), has Cocoon make the pod's
	// network itself: see NetworkConfig.
	Network *NetworkConfig
	// NetworkModel is how each veth of the netns is wired to the VM's NIC:
	// "tcfilter" (the default: a tap beside it, frames redirected both
	// ways with tc), "macvtap" (a macvtap in passthru mode on it) or
	// "none" (only taps and macvtaps, which another made, are attached,
	// as they are). Macvlans and ipvlans are wired with tc either way.
	NetworkModel string
	// Resources are what the pod asks for as a whole (the CRI's pod
	// resources), beyond the VM's base: the VM gets the larger of them
	// and the sum of its containers' limits (see SizeVM), up to
	// VMConfig.MaxVCPUs and MaxMemoryMiB.
	Resources Resources
}

// VMConfig is what a caller chooses of a sandbox's VM. Zero values select
// the defaults: the current guest image, the driver's binary and machine
// type, one vCPU and 256 MiB, the accelerator and agent transport that
// work on this host.
type VMConfig struct {
	// Path is the VMM binary: a path, or a name looked up in PATH.
	Path string
	// Kernel and Initrd are the guest kernel and the initramfs holding the
	// agent; each defaults to the current guest image's.
	Kernel, Initrd string
	// KernelParams are appended to the driver's tuned command line.
	KernelParams []string
	// VCPUs and MemoryMiB are the VM's base: what the guest kernel, agent
	// and page cache take, to which a sandbox adds what its workload
	// asks for (see SandboxConfig.Resources).
	VCPUs, MemoryMiB uint32
	// MaxVCPUs and MaxMemoryMiB are the most a sandbox's VM may grow to
	// (0: the host's CPU count and memory); on q35 its VM can be grown
	// that far while it runs.
	MaxVCPUs, MaxMemoryMiB uint32
	// FixedSize boots the VM at its sandbox's size with no room to grow
	// (under TCG a q35 guest then boots without ACPI, measured 0.37 s
	// sooner): a container that needs more than it has is refused.
	FixedSize bool
	// MachineType selects the machine model ("q35", "microvm").
	MachineType string
	// Accelerator is "auto" (KVM where it really works), "kvm" or "tcg".
	Accelerator hypervisor.Accelerator
	// AgentTransport is "auto" (vsock where the host has it), "vsock" or
	// "virtio-serial".
	AgentTransport hypervisor.Transport
	// HotplugSlots is the number of PCIe root ports for device hotplug
	// (q35 only).
	HotplugSlots int
	// Debug keeps the guest kernel verbose and the agent at debug level.
	Debug bool
}

// HypervisorConfig is c as a hypervisor driver's configuration, without
// what the runtime sets for each sandbox (its state directory, file
// server socket and template memory).
func (c VMConfig) HypervisorConfig() hypervisor.Config {
	return hypervisor.Config{
		Path: c.Path, Kernel: c.Kernel, Initrd: c.Initrd, KernelParams: slices.Clone(c.KernelParams),
		VCPUs: c.VCPUs, MaxVCPUs: c.MaxVCPUs, MemoryMiB: c.MemoryMiB, MaxMemoryMiB: c.MaxMemoryMiB,
		MachineType: c.MachineType, Accelerator: c.Accelerator, AgentTransport: c.AgentTransport,
		HotplugSlots: c.HotplugSlots, Debug: c.Debug,
	}
}

// sandboxState is the persisted document of a sandbox.
type sandboxState struct {
	ID          string                     `json:"id"`
	State       State                      `json:"state"`
	Created     time.Time                  `json:"created"`
	Annotations map[string]string          `json:"annotations,omitempty"`
	Containers  map[string]*containerState `json:"containers"`
	// PodContainer is the container whose namespaces the pod's other
	// containers join: the first one created (see namespaces.go).
	PodContainer string `json:"pod_container,omitempty"`
	// Network lists what Cocoon made in the pod's network namespace; it
	// is saved before anything is made there.
	Network *network.Record `json:"network,omitempty"`
	// OwnNetwork is the pod network Cocoon made itself, saved before it
	// is made (see SandboxConfig.Network).
	OwnNetwork *ownNetwork `json:"own_network,omitempty"`
	// Devices are the block devices hot-plugged with AddDevice.
	Devices []Device `json:"devices,omitempty"`
	// NetworkModel is how interfaces added later are wired.
	NetworkModel network.Model `json:"network_model,omitempty"`
	// Sizing is what the VM is sized from and what it has (see
	// sandbox_resources.go).
	Sizing *sizing `json:"sizing,omitempty"`
}

// containerState is the persisted part of a container.
type containerState struct {
	ID          string            `json:"id"`
	Bundle      string            `json:"bundle"`
	Rootfs      string            `json:"rootfs"`
	Created     time.Time         `json:"created"`
	Annotations map[string]string `json:"annotations,omitempty"`
	Terminal    bool              `json:"terminal"`
	// Env is the container process's environment, the default of execs.
	Env []string `json:"env,omitempty"`
	// Execs are the exec IDs of processes started with EnterContainer.
	Execs []string `json:"execs,omitempty"`
	// Volumes are the pod-wide binds below the shared tree the container
	// uses (see volumeRel); the last container using one releases it.
	Volumes []string `json:"volumes,omitempty"`
	// RootDevice is the hotplug ID of the block device holding the
	// container's root filesystem (an image rootfs; see attachRootfs).
	RootDevice string `json:"root_device,omitempty"`
	// PassedDevices are the hotplug IDs of the disks that stand for the
	// block devices of the container's linux.devices.
	PassedDevices []string `json:"passed_devices,omitempty"`
	// VolumeDisks are the hotplug IDs of the disks of its block volumes.
	VolumeDisks []string `json:"volume_disks,omitempty"`
	// Resources are the container's CPU and memory limits, which the
	// VM is sized for.
	Resources Resources `json:"resources,omitzero"`
}

// Sandbox is a handle on one sandbox. Its methods may be called
// concurrently. Release closes the handle and leaves the sandbox running.
type Sandbox struct {
	rt  *Runtime
	id  string
	dir string

	mu    sync.Mutex
	state *sandboxState
	vm    sandboxVM
	// stopping is the VM a teardown is stopping: its file server's exit
	// is then expected, not a failure to act on.
	stopping sandboxVM
	shared   *storage.Shared
	// agentErr says why vm has no agent connection, when it has none.
	agentErr error
}

// paths of a sandbox's host files.
func (r *Runtime) sandboxDir(id string) string {
	return filepath.Join(r.opts.StateDir, "sandboxes", id)
}
func (r *Runtime) vmStateDir() string { return layout.VMStateDir(r.opts.StateDir) }

func (s *Sandbox) sharedDir() string  { return filepath.Join(s.dir, "shared") }
func (s *Sandbox) vfsSocket() string  { return filepath.Join(s.dir, "vfs.sock") }
func (s *Sandbox) vfsPidFile() string { return filepath.Join(s.dir, "virtiofsd.pid") }

// ID returns the sandbox's ID.
func (s *Sandbox) ID() string { return s.id }

// CreateSandbox boots a sandbox VM and creates the configured containers
// in it. On error nothing of the sandbox is left behind.
func (r *Runtime) CreateSandbox(ctx context.Context, cfg SandboxConfig) (_ *Sandbox, err error) {
	if err := validateID("sandbox", cfg.ID); err != nil {
		return nil, err
	}
	if err := r.checkSocketPaths(cfg.ID); err != nil {
		return nil, err
	}
	// Check every container, and find the guest, before anything is
	// written (even the sandbox's lock file) or booted.
	for i := range cfg.Containers {
		if err := prepareContainer(&cfg.Containers[i]); err != nil {
			return nil, err
		}
	}
	if cfg.Network != nil && cfg.NetNS != "" {
		return nil, fmt.Errorf("create sandbox %s: %w: both a network namespace (%s) and a network for Cocoon to make", cfg.ID, ErrInvalidConfig, cfg.NetNS)
	}
	model, err := network.ParseModel(cfg.NetworkModel)
	if err != nil {
		return nil, fmt.Errorf("create sandbox %s: %w: %w", cfg.ID, ErrInvalidConfig, err)
	}
	var danCfg *dan.Config
	if r.opts.DANConfDir != "" {
		if danCfg, err = dan.Load(r.opts.DANConfDir, cfg.ID); err != nil {
			return nil, fmt.Errorf("create sandbox %s: %w: %w", cfg.ID, ErrInvalidConfig, err)
		}
		if danCfg != nil && cfg.Network != nil {
			return nil, fmt.Errorf("create sandbox %s: %w: both a DAN file (%s) and a network for Cocoon to make", cfg.ID, ErrInvalidConfig, dan.Path(r.opts.DANConfDir, cfg.ID))
		}
	}
	hv := cfg.VM.HypervisorConfig()
	sz, err := newSizing(cfg.VM, cfg.Resources)
	if err != nil {
		return nil, fmt.Errorf("create sandbox %s: %w", cfg.ID, err)
	}
	var asks []Resources
	for i := range cfg.Containers {
		asks = append(asks, ResourcesOf(cfg.Containers[i].Spec))
	}
	size, err := sz.target(asks)
	if err != nil {
		return nil, fmt.Errorf("create sandbox %s: %w", cfg.ID, err)
	}
	hv.VCPUs, hv.MemoryMiB, hv.MaxVCPUs, hv.MaxMemoryMiB = size.VCPUs, size.MemoryMiB, sz.Max.VCPUs, sz.Max.MemoryMiB
	if cfg.VM.FixedSize {
		hv.MaxVCPUs, hv.MaxMemoryMiB = 0, 0
	}
	// Each image rootfs is hot-plugged after boot (or a template's
	// restore), into a root port of its own.
	for i := range cfg.Containers {
		if image, _ := rootfsImage(containerRootfs(&cfg.Containers[i])); image {
			hv.HotplugSlots++
		}
		// And each block device passed to it, and each block volume.
		hv.HotplugSlots += len(passedDevices(cfg.Containers[i].Spec)) + len(blockVolumes(cfg.Containers[i].Spec))
	}
	if hv.Kernel, hv.Initrd, err = image.OrCurrent(r.opts.DataDir, hv.Kernel, hv.Initrd); err != nil {
		return nil, fmt.Errorf("create sandbox %s: %w", cfg.ID, err)
	}
	unlock, err := r.store.Lock(ctx, cfg.ID)
	if err != nil {
		return nil, err
	}
	defer unlock()
	var existing sandboxState
	if err := r.store.Load(cfg.ID, &existing); err == nil {
		return nil, fmt.Errorf("create sandbox %s: %w", cfg.ID, ErrExists)
	}
	s := &Sandbox{rt: r, id: cfg.ID, dir: r.sandboxDir(cfg.ID)}
	// The record comes first, in state creating, under the lock: whatever
	// a process killed from here on leaves, the record names it, so that
	// Delete (or GC, which finds it unlocked and still creating) removes it.
	s.state = &sandboxState{
		ID: cfg.ID, State: StateCreating, Created: time.Now().UTC(),
		Annotations: cfg.Annotations, Containers: map[string]*containerState{},
		NetworkModel: model,
	}
	if err := r.store.Save(cfg.ID, s.state); err != nil {
		return nil, fmt.Errorf("create sandbox %s: %w", cfg.ID, err)
	}
	defer func() {
		if err != nil {
			s.teardown(context.Background())
			r.store.Delete(cfg.ID)
		}
	}()
	if err := os.MkdirAll(filepath.Dir(s.dir), 0o700); err != nil {
		return nil, fmt.Errorf("create sandbox %s: %w", cfg.ID, err)
	}
	if err := os.Mkdir(s.dir, 0o700); err != nil {
		return nil, fmt.Errorf("create sandbox %s: %w", cfg.ID, err)
	}
	if s.shared, err = storage.NewShared(s.sharedDir()); err != nil {
		return nil, fmt.Errorf("create sandbox %s: %w", cfg.ID, err)
	}
	// The guest image's on-demand kernel modules, read-only, for the
	// guest to load when its kernel asks for one.
	if tree := image.ModuleTree(hv.Initrd); tree != "" {
		if err := s.shared.Bind(tree, protocol.ModulesTree, storage.RecursiveReadOnly); err != nil {
			return nil, fmt.Errorf("create sandbox %s: share kernel modules: %w", cfg.ID, err)
		}
	}
	failpoint.Hit(failpoint.CreateBeforeBoot)
	if _, err := storage.StartVirtiofsd(ctx, r.opts.Virtiofsd, s.shared.ExportDir(), s.vfsSocket(), s.vfsPidFile(), filepath.Join(s.dir, "virtiofsd.log")); err != nil {
		return nil, fmt.Errorf("create sandbox %s: %w", cfg.ID, err)
	}
	hv.StateDir = r.vmStateDir()
	hv.SharedFSSocket = s.vfsSocket()
	if cfg.Network != nil {
		if cfg.NetNS, err = s.makeNetwork(ctx, *cfg.Network); err != nil {
			return nil, fmt.Errorf("create sandbox %s: %w", cfg.ID, err)
		}
	}
	var netCfg network.Config
	if danCfg != nil || cfg.NetNS != "" {
		attach := func() ([]hypervisor.NetDevice, network.Config, error) {
			return s.attachNetwork(cfg.NetNS, model, netQueues(hv.VCPUs))
		}
		if danCfg != nil {
			attach = func() ([]hypervisor.NetDevice, network.Config, error) { return s.attachDAN(*danCfg) }
		}
		taps, nc, err := attach()
		if err != nil {
			return nil, fmt.Errorf("create sandbox %s: %w", cfg.ID, err)
		}
		// QEMU holds the taps once started; ours close either way (a tap
		// then lives as long as QEMU's file on it).
		defer closeNetDevices(taps)
		hv.NetDevices, netCfg = taps, nc
	}
	if r.fromTemplate(hv) && !cfg.VM.FixedSize {
		// One template for every size: its VM boots at the base and
		// grows to the pod's size once restored.
		hv.VCPUs, hv.MemoryMiB = sz.Base.VCPUs, sz.Base.MemoryMiB
	}
	sz.Boot = vmSize{hv.VCPUs, hv.MemoryMiB}
	sz.Current = sz.Boot
	s.state.Sizing = &sz
	if s.vm, err = r.vmm.Start(ctx, cfg.ID, hv, cfg.BootTimeout); err != nil {
		return nil, fmt.Errorf("create sandbox %s: %w", cfg.ID, err)
	}
	failpoint.Hit(failpoint.CreateAfterBoot)
	if len(netCfg.Interfaces) > 0 {
		if err := s.vm.Agent().SetupNetwork(ctx, netCfg); err != nil {
			return nil, fmt.Errorf("create sandbox %s: %w", cfg.ID, err)
		}
	}
	s.state.State = StateReady
	if err := r.store.Save(cfg.ID, s.state); err != nil {
		return nil, err
	}
	if err := s.fitLocked(ctx, "", nil, true); err != nil {
		return nil, fmt.Errorf("create sandbox %s: %w", cfg.ID, err)
	}
	for _, c := range cfg.Containers {
		if err := s.createContainerLocked(ctx, c); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// vmOptions are the options of the runtime's VMs.
func (r *Runtime) vmOptions(bootTimeout time.Duration) vm.Options {
	return vm.Options{Log: r.log, CacheDir: layout.CacheDir(r.opts.DataDir), BootTimeout: bootTimeout}
}

// factory is the runtime's VM template factory.
func (r *Runtime) factory(o vm.Options) *factory.Factory {
	return factory.New(factory.Config{
		Dir: filepath.Join(r.opts.StateDir, "factory"), MemoryDir: filepath.Join(r.opts.StateDir, "mem"),
		MemoryMiB: r.opts.TemplateMemoryMiB, TemplateLimit: r.opts.TemplateLimit,
	}, o)
}

// maxSocketPath is the longest path a unix socket can be bound to.
const maxSocketPath = 107

// checkSocketPaths fails with a clear error when the state directory is
// too long for the sockets of sandbox id (its file server's and its VM's
// agent ports), which the daemons would otherwise refuse obscurely.
func (r *Runtime) checkSocketPaths(id string) error {
	for _, p := range []string{filepath.Join(r.sandboxDir(id), "vfs.sock"), filepath.Join(r.vmStateDir(), id, "agent.0.sock")} {
		if len(p) > maxSocketPath {
			return fmt.Errorf("create sandbox %s: %w: socket path %s is %d bytes, over the limit of %d: use a shorter state directory than %s",
				id, ErrInvalidConfig, p, len(p), maxSocketPath, r.opts.StateDir)
		}
	}
	return nil
}

// RunSandbox creates a sandbox and starts its containers.
func (r *Runtime) RunSandbox(ctx context.Context, cfg SandboxConfig) (*Sandbox, error) {
	s, err := r.CreateSandbox(ctx, cfg)
	if err != nil {
		return nil, err
	}
	if err := s.Start(ctx); err != nil {
		s.Delete(context.Background())
		return nil, err
	}
	return s, nil
}

// FetchSandbox returns a handle on an existing sandbox, connecting to its
// VM. A sandbox whose VM died is still returned (so it can be stopped and
// deleted) with its state reported as stopped.
func (r *Runtime) FetchSandbox(ctx context.Context, id string) (*Sandbox, error) {
	if err := validateID("sandbox", id); err != nil {
		return nil, err
	}
	var st sandboxState
	if err := r.store.Load(id, &st); err != nil {
		if errors.Is(err, persist.ErrNotFound) {
			return nil, fmt.Errorf("sandbox %s: %w", id, ErrNotFound)
		}
		return nil, err
	}
	s := &Sandbox{rt: r, id: id, dir: r.sandboxDir(id), state: &st}
	s.shared = &storage.Shared{Dir: s.sharedDir()}
	if st.State == StateStopped || st.State == StateCreating {
		// Nothing to connect to: a stopped sandbox has no VM, and one
		// being created is its creator's until it is ready (or, if its
		// creator died, only fit for Delete).
		return s, nil
	}
	v, err := r.vmm.Open(ctx, id)
	if err != nil && ctx.Err() != nil {
		if v != nil {
			v.Close()
		}
		return nil, fmt.Errorf("fetch sandbox %s: %w", id, err)
	}
	// A sandbox whose guest is dead or does not answer is still returned,
	// so that it can be stopped and deleted; calls that need the agent
	// fail with the reason.
	s.vm = v
	if err != nil {
		r.log.Warn("sandbox agent unreachable", "sandbox", id, "err", err)
		s.agentErr = fmt.Errorf("sandbox %s: %w", id, err)
	}
	return s, nil
}

// ListSandbox reports the status of every sandbox.
func (r *Runtime) ListSandbox(ctx context.Context) ([]SandboxStatus, error) {
	ids, err := r.store.List()
	if err != nil {
		return nil, err
	}
	out := make([]SandboxStatus, 0, len(ids))
	for _, id := range ids {
		st, err := r.StatusSandbox(ctx, id)
		if err != nil {
			if errors.Is(err, ErrNotFound) {
				continue // deleted meanwhile
			}
			// One broken sandbox does not hide the others.
			r.log.Warn("sandbox status", "sandbox", id, "err", err)
			st = SandboxStatus{ID: id, State: StateUnknown}
		}
		out = append(out, st)
	}
	return out, nil
}

// StatusSandbox reports a sandbox's status without keeping a connection.
func (r *Runtime) StatusSandbox(ctx context.Context, id string) (SandboxStatus, error) {
	s, err := r.FetchSandbox(ctx, id)
	if err != nil {
		return SandboxStatus{}, err
	}
	defer s.Release()
	return s.Status(ctx), nil
}

// StartSandbox, StopSandbox, PauseSandbox, ResumeSandbox and DeleteSandbox
// fetch sandbox id and perform the operation of the same name.
func (r *Runtime) StartSandbox(ctx context.Context, id string) error {
	return r.withSandbox(ctx, id, (*Sandbox).Start)
}

// StopSandbox stops a sandbox; see Sandbox.Stop.
func (r *Runtime) StopSandbox(ctx context.Context, id string, force bool) error {
	return r.withSandbox(ctx, id, func(s *Sandbox, ctx context.Context) error { return s.Stop(ctx, force) })
}

// PauseSandbox pauses a sandbox's VM.
func (r *Runtime) PauseSandbox(ctx context.Context, id string) error {
	return r.withSandbox(ctx, id, (*Sandbox).Pause)
}

// ResumeSandbox resumes a paused sandbox.
func (r *Runtime) ResumeSandbox(ctx context.Context, id string) error {
	return r.withSandbox(ctx, id, (*Sandbox).Resume)
}

// DeleteSandbox stops a sandbox if needed and removes it.
func (r *Runtime) DeleteSandbox(ctx context.Context, id string) error {
	return r.withSandbox(ctx, id, (*Sandbox).Delete)
}

func (r *Runtime) withSandbox(ctx context.Context, id string, op func(*Sandbox, context.Context) error) error {
	s, err := r.FetchSandbox(ctx, id)
	if err != nil {
		return err
	}
	defer s.Release()
	return op(s, ctx)
}

// SandboxStatus describes a sandbox.
type SandboxStatus struct {
	ID          string
	State       State
	Created     time.Time
	Annotations map[string]string
	// HypervisorPids are the host processes of the VM.
	HypervisorPids []int
	// VCPUs and MemoryMiB are what the host gave the VM now (it grows
	// and shrinks with its containers' limits); MaxVCPUs and MaxMemoryMiB
	// the most it may grow to.
	VCPUs, MemoryMiB       uint32
	MaxVCPUs, MaxMemoryMiB uint32
	Containers             []ContainerStatus
}

// Status reports the sandbox's state and its containers'.
func (s *Sandbox) Status(ctx context.Context) SandboxStatus {
	s.mu.Lock()
	st := SandboxStatus{ID: s.id, State: s.state.State, Created: s.state.Created, Annotations: maps.Clone(s.state.Annotations)}
	ids := slices.Sorted(maps.Keys(s.state.Containers))
	v := s.vm
	sz := s.state.Sizing
	s.mu.Unlock()
	// Another process may have resized the VM since this handle looked.
	var fresh sandboxState
	if s.rt.store.Load(s.id, &fresh) == nil && fresh.Sizing != nil {
		sz = fresh.Sizing
	}
	if sz != nil {
		st.VCPUs, st.MemoryMiB, st.MaxVCPUs, st.MaxMemoryMiB = sz.Current.VCPUs, sz.Current.MemoryMiB, sz.Max.VCPUs, sz.Max.MemoryMiB
	}
	if v != nil {
		st.HypervisorPids = v.PIDs()
		select {
		case <-v.Exited():
			st.State = StateStopped
		default:
			if v.Agent() == nil {
				st.State = StateUnknown
			}
		}
	} else if st.State != StateStopped && st.State != StateCreating {
		st.State = StateStopped
	}
	for _, id := range ids {
		cs, err := s.StatusContainer(ctx, id)
		if err != nil {
			cs = ContainerStatus{ID: id, State: StateStopped}
		}
		st.Containers = append(st.Containers, cs)
	}
	return st
}

// Start starts every created container of the sandbox.
func (s *Sandbox) Start(ctx context.Context) error {
	s.mu.Lock()
	ids := slices.Sorted(maps.Keys(s.state.Containers))
	state := s.state.State
	s.mu.Unlock()
	if state == StateStopped {
		return fmt.Errorf("start sandbox %s: %w: it is stopped", s.id, ErrState)
	}
	for _, id := range ids {
		cs, err := s.StatusContainer(ctx, id)
		if err != nil {
			return err
		}
		if cs.State != StateReady {
			continue
		}
		if err := s.StartContainer(ctx, id); err != nil {
			return err
		}
	}
	return s.setState(ctx, StateRunning)
}

func (s *Sandbox) setState(ctx context.Context, st State) error {
	return s.update(ctx, func(state *sandboxState) error {
		state.State = st
		return nil
	})
}

// update applies fn to the freshly loaded persisted state under the
// sandbox's lock and saves it.
func (s *Sandbox) update(ctx context.Context, fn func(*sandboxState) error) error {
	unlock, err := s.rt.store.Lock(ctx, s.id)
	if err != nil {
		return err
	}
	defer unlock()
	return s.updateLocked(fn)
}

func (s *Sandbox) updateLocked(fn func(*sandboxState) error) error {
	st, err := s.loadLocked()
	if err != nil {
		return err
	}
	if err := fn(st); err != nil {
		return err
	}
	if err := s.rt.store.Save(s.id, st); err != nil {
		return err
	}
	s.mu.Lock()
	s.state = st
	s.mu.Unlock()
	return nil
}

// loadLocked reads the persisted state afresh (another process may have
// changed it). The caller holds the sandbox's lock.
func (s *Sandbox) loadLocked() (*sandboxState, error) {
	var st sandboxState
	if err := s.rt.store.Load(s.id, &st); err != nil {
		return nil, err
	}
	if st.Containers == nil {
		st.Containers = map[string]*containerState{}
	}
	return &st, nil
}

// agentClient returns the connected agent or an error naming why there is
// none.
func (s *Sandbox) agentClient() (guestAgent, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.agentErr != nil {
		return nil, s.agentErr
	}
	if s.vm == nil || s.vm.Agent() == nil {
		return nil, fmt.Errorf("sandbox %s: %w: its VM is not running", s.id, ErrState)
	}
	return s.vm.Agent(), nil
}

// Pause pauses the sandbox's VM: every container stops running.
func (s *Sandbox) Pause(ctx context.Context) error {
	v, err := s.runningVM()
	if err != nil {
		return fmt.Errorf("pause sandbox %s: %w", s.id, err)
	}
	if err := v.Pause(ctx); err != nil {
		return err
	}
	return s.setState(ctx, StatePaused)
}

// Resume resumes a paused sandbox.
func (s *Sandbox) Resume(ctx context.Context) error {
	v, err := s.runningVM()
	if err != nil {
		return fmt.Errorf("resume sandbox %s: %w", s.id, err)
	}
	if err := v.Resume(ctx); err != nil {
		return err
	}
	return s.setState(ctx, StateRunning)
}

// Stop shuts the sandbox down: its containers are killed, the VM powered
// off and its host resources (file server, mounts) released. The sandbox
// keeps its record, in state stopped, until Delete. Without force, an
// error stopping a container aborts the stop.
func (s *Sandbox) Stop(ctx context.Context, force bool) error {
	unlock, err := s.rt.store.Lock(ctx, s.id)
	if err != nil {
		return err
	}
	defer unlock()
	return s.stopLocked(ctx, force)
}

func (s *Sandbox) stopLocked(ctx context.Context, force bool) error {
	s.mu.Lock()
	ids := slices.Sorted(maps.Keys(s.state.Containers))
	s.mu.Unlock()
	// With its file server gone, the guest cannot finish any file
	// operation on a container's rootfs, so removing containers would hang:
	// they go with the VM instead.
	fsAlive := storage.LoadVirtiofsd(s.vfsPidFile(), s.vfsSocket()) != nil
	if c, err := s.agentClient(); err == nil && fsAlive {
		for _, id := range ids {
			rctx, cancel := context.WithTimeout(ctx, removeTimeout)
			err := c.RemoveContainer(rctx, id, true)
			cancel()
			if err != nil && !force {
				return fmt.Errorf("stop sandbox %s: %w", s.id, err)
			}
		}
	} else if !fsAlive {
		s.rt.log.Warn("sandbox file server is gone; stopping its VM", "sandbox", s.id)
	}
	if err := s.teardown(ctx); err != nil && !force {
		return fmt.Errorf("stop sandbox %s: %w", s.id, err)
	}
	return s.updateLocked(func(st *sandboxState) error {
		st.State = StateStopped
		return nil
	})
}

// removeTimeout bounds the guest's removal of one container when a
// sandbox stops; a guest that takes longer has its VM stopped anyway.
const removeTimeout = 10 * time.Second

// teardown stops the VM and the file server and releases every host
// resource except the state record. It is idempotent, and works from what
// is on disk, however little of it a killed process left. The caller
// holds the sandbox's lock.
func (s *Sandbox) teardown(ctx context.Context) error {
	var errs []error
	s.mu.Lock()
	v := s.vm
	s.vm = nil
	if v != nil {
		s.stopping = v
	}
	s.mu.Unlock()
	if v != nil {
		errs = append(errs, v.Stop(ctx))
	}
	// The VM may have been started by another process, or left half made.
	errs = append(errs, s.rt.vmm.Remove(ctx, s.id))
	errs = append(errs, storage.LoadVirtiofsd(s.vfsPidFile(), s.vfsSocket()).Stop(ctx))
	// With QEMU gone its taps are too; the qdiscs on the veths remain.
	s.mu.Lock()
	netRec, own := s.state.Network, s.state.OwnNetwork
	s.mu.Unlock()
	if netRec != nil {
		errs = append(errs, network.Remove(*netRec))
	}
	if own != nil {
		errs = append(errs, removeNetwork(ctx, *own))
	}
	if err := storage.RemoveUnmounted(s.dir); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// Delete stops the sandbox if it still runs and removes it and its record.
// It holds the sandbox's lock throughout, so no container is created in
// the sandbox meanwhile.
func (s *Sandbox) Delete(ctx context.Context) error {
	unlock, err := s.rt.store.Lock(ctx, s.id)
	if err != nil {
		return err
	}
	defer unlock()
	if err := s.stopLocked(ctx, true); err != nil && !errors.Is(err, persist.ErrNotFound) {
		s.rt.log.Warn("stop before delete", "sandbox", s.id, "err", err)
	}
	failpoint.Hit(failpoint.Delete)
	// A second pass catches what a failed stop left.
	if err := s.teardown(ctx); err != nil {
		return fmt.Errorf("delete sandbox %s: %w", s.id, err)
	}
	return s.rt.store.Delete(s.id)
}

// Monitor returns a channel that receives an error when the sandbox's VM
// exits, whoever stopped it, and is then closed.
func (s *Sandbox) Monitor() <-chan error {
	ch := make(chan error, 1)
	s.mu.Lock()
	v := s.vm
	s.mu.Unlock()
	if v == nil {
		ch <- fmt.Errorf("sandbox %s: vm not running", s.id)
		close(ch)
		return ch
	}
	// Without its file server the guest's file operations on container
	// root filesystems never finish: the sandbox is as good as dead, so
	// its VM is stopped rather than left hanging.
	fsGone := storage.LoadVirtiofsd(s.vfsPidFile(), s.vfsSocket()).Exited()
	go func() {
		err := fmt.Errorf("sandbox %s: vm exited: %w", s.id, ErrGuestDied)
		select {
		case <-v.Exited():
		case <-fsGone:
			s.mu.Lock()
			stopping := s.stopping == v
			s.mu.Unlock()
			// A VM being stopped on purpose takes its file server with it
			// (virtiofsd exits as QEMU closes the socket); the stop ends
			// QEMU itself.
			if !stopping {
				err = fmt.Errorf("sandbox %s: its file server (virtiofsd) exited: %w", s.id, ErrGuestDied)
				s.rt.log.Error("sandbox file server exited; stopping its VM", "sandbox", s.id)
				v.Kill(context.Background())
			}
			<-v.Exited()
		}
		ch <- err
		close(ch)
	}()
	return ch
}

// Release closes this handle's connections; the sandbox keeps running.
func (s *Sandbox) Release() error {
	s.mu.Lock()
	v := s.vm
	s.vm = nil
	s.mu.Unlock()
	if v != nil {
		return v.Close()
	}
	return nil
}

// runningVM returns the sandbox's VM, or an ErrState error when it is not
// running.
func (s *Sandbox) runningVM() (sandboxVM, error) {
	s.mu.Lock()
	v := s.vm
	s.mu.Unlock()
	if v == nil {
		return nil, fmt.Errorf("%w: the VM is not running", ErrState)
	}
	return v, nil
}
