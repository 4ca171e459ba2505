package cocoon

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/cocoon-runtime/cocoon/agent/protocol"
	"github.com/cocoon-runtime/cocoon/internal/agent"
	"github.com/cocoon-runtime/cocoon/internal/failpoint"
	"github.com/cocoon-runtime/cocoon/internal/storage"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// ContainerConfig describes a container to create.
type ContainerConfig struct {
	ID string
	// Bundle is the OCI bundle directory on the host.
	Bundle string
	// Spec is the OCI runtime spec; nil reads Bundle/config.json.
	Spec        *specs.Spec
	Annotations map[string]string
	// RootDisk, if not empty, is the container's root file system in
	// place of the spec's root.path: a file system image or block device
	// (a block snapshot containerd prepared) that the VM gets as a disk
	// of its own and mounts itself.
	RootDisk string
	// RootDiskReadOnly attaches RootDisk read-only (a snapshot view). A
	// read-only root in the spec does not need it: the guest makes the
	// container's root read-only once the mountpoints the spec needs are
	// made.
	RootDiskReadOnly bool
}

// ContainerStatus describes a container.
type ContainerStatus struct {
	ID    string
	State State
	// PID is the container's init process inside the guest.
	PID         int
	Created     time.Time
	Bundle      string
	Rootfs      string
	Annotations map[string]string
}

// LoadBundle reads and checks the OCI bundle in dir, as CreateContainer
// would, before any VM is booted for it: it returns the bundle's absolute
// path and its spec. A missing config.json is an error wrapping
// fs.ErrNotExist; every other defect is ErrInvalidConfig.
func LoadBundle(dir string) (string, *specs.Spec, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return "", nil, fmt.Errorf("bundle %s: %w", dir, err)
	}
	if st, err := os.Stat(abs); err != nil {
		return "", nil, fmt.Errorf("bundle %s: %w", abs, err)
	} else if !st.IsDir() {
		return "", nil, fmt.Errorf("bundle %s: %w: not a directory", abs, ErrInvalidConfig)
	}
	spec, err := LoadSpec(abs)
	if err != nil {
		return "", nil, fmt.Errorf("bundle %s: %w", abs, err)
	}
	if err := checkBundle(abs, spec); err != nil {
		return "", nil, fmt.Errorf("bundle %s: %w", abs, err)
	}
	return abs, spec, nil
}

// checkBundle checks spec, the spec of the bundle in dir, and that its
// rootfs is a directory.
func checkBundle(dir string, spec *specs.Spec) error {
	if err := checkSpec(spec); err != nil {
		return err
	}
	_, err := rootfsImage(bundleRootfs(dir, spec))
	return err
}

// bundleRootfs is the host path of the rootfs of spec, the spec of the
// bundle in dir.
func bundleRootfs(dir string, spec *specs.Spec) string {
	if filepath.IsAbs(spec.Root.Path) {
		return spec.Root.Path
	}
	return filepath.Join(dir, spec.Root.Path)
}

// LoadSpec reads the OCI runtime spec of a bundle.
func LoadSpec(bundle string) (*specs.Spec, error) {
	b, err := os.ReadFile(filepath.Join(bundle, "config.json"))
	if err != nil {
		return nil, fmt.Errorf("load spec: %w: %w", ErrInvalidConfig, err)
	}
	var spec specs.Spec
	if err := json.Unmarshal(b, &spec); err != nil {
		return nil, fmt.Errorf("load spec %s: %w: %w", filepath.Join(bundle, "config.json"), ErrInvalidConfig, err)
	}
	return &spec, nil
}

func checkSpec(spec *specs.Spec) error {
	switch {
	case spec.Process == nil:
		return fmt.Errorf("%w: spec has no process", ErrInvalidConfig)
	case len(spec.Process.Args) == 0:
		return fmt.Errorf("%w: spec process has no args", ErrInvalidConfig)
	case spec.Root == nil || spec.Root.Path == "":
		return fmt.Errorf("%w: spec has no root path", ErrInvalidConfig)
	case spec.Process.Cwd == "" || !filepath.IsAbs(spec.Process.Cwd):
		return fmt.Errorf("%w: spec process cwd %q is not absolute", ErrInvalidConfig, spec.Process.Cwd)
	}
	// Paths in the container are resolved inside its rootfs (symlinks
	// too), in the guest and on the host; one that climbs with ".." is
	// refused outright rather than clamped at the root.
	for _, m := range spec.Mounts {
		if err := checkContainerPath("mount destination", m.Destination); err != nil {
			return err
		}
	}
	if spec.Linux != nil {
		for _, d := range spec.Linux.Devices {
			if err := checkContainerPath("device path", d.Path); err != nil {
				return err
			}
		}
	}
	return nil
}

// checkContainerPath checks p, a path inside the container: absolute,
// without "..".
func checkContainerPath(what, p string) error {
	if !filepath.IsAbs(p) {
		return fmt.Errorf("%w: %s %q is not absolute", ErrInvalidConfig, what, p)
	}
	if slices.Contains(strings.Split(p, "/"), "..") {
		return fmt.Errorf("%w: %s %q climbs out with \"..\"", ErrInvalidConfig, what, p)
	}
	return nil
}

// CreateContainer creates a container in the sandbox from an OCI bundle:
// its root filesystem and bind mounts are shared with the guest, and the
// guest creates the container (its program does not start yet).
func (s *Sandbox) CreateContainer(ctx context.Context, cfg ContainerConfig) error {
	unlock, err := s.rt.store.Lock(ctx, s.id)
	if err != nil {
		return err
	}
	defer unlock()
	return s.createContainerLocked(ctx, cfg)
}

// prepareContainer checks cfg and loads its spec into cfg.Spec.
func prepareContainer(cfg *ContainerConfig) error {
	if err := validateID("container", cfg.ID); err != nil {
		return err
	}
	if !filepath.IsAbs(cfg.Bundle) {
		return fmt.Errorf("create container %s: %w: bundle %q is not an absolute path", cfg.ID, ErrInvalidConfig, cfg.Bundle)
	}
	if cfg.Spec == nil {
		spec, err := LoadSpec(cfg.Bundle)
		if err != nil {
			return fmt.Errorf("create container %s: %w", cfg.ID, err)
		}
		cfg.Spec = spec
	}
	if err := checkBundle(cfg.Bundle, cfg.Spec); err != nil {
		return fmt.Errorf("create container %s: %w", cfg.ID, err)
	}
	if cfg.RootDisk != "" {
		if image, err := rootfsImage(cfg.RootDisk); err != nil || !image {
			return fmt.Errorf("create container %s: %w: root disk %s is not an image or a block device", cfg.ID, ErrInvalidConfig, cfg.RootDisk)
		}
	}
	return nil
}

// containerRootfs is the host path of a prepared container's rootfs.
func containerRootfs(cfg *ContainerConfig) string {
	if cfg.RootDisk != "" {
		return cfg.RootDisk
	}
	return bundleRootfs(cfg.Bundle, cfg.Spec)
}

// rootDiskReadOnly says whether an image rootfs is attached read-only:
// a read-only RootDisk, or, for an image in the spec's root.path, a
// read-only root (the image must then hold the spec's mountpoints).
func rootDiskReadOnly(cfg *ContainerConfig) bool {
	if cfg.RootDisk != "" {
		return cfg.RootDiskReadOnly
	}
	return cfg.Spec.Root.Readonly
}

func (s *Sandbox) createContainerLocked(ctx context.Context, cfg ContainerConfig) (err error) {
	if err := prepareContainer(&cfg); err != nil {
		return err
	}
	c, err := s.agentClient()
	if err != nil {
		return err
	}
	s.mu.Lock()
	_, exists := s.state.Containers[cfg.ID]
	s.mu.Unlock()
	if exists {
		return fmt.Errorf("create container %s: %w", cfg.ID, ErrExists)
	}
	spec, rootfs := cfg.Spec, containerRootfs(&cfg)
	s.mu.Lock()
	pod := s.state.PodContainer
	s.mu.Unlock()
	if pod == "" {
		pod = cfg.ID // the sandbox's first container is the pod's
	}
	join, err := s.podNamespaces(cfg.ID, spec, pod)
	if err != nil {
		return fmt.Errorf("create container %s: %w", cfg.ID, err)
	}
	image, err := rootfsImage(rootfs)
	if err != nil {
		return fmt.Errorf("create container %s: %w", cfg.ID, err)
	}
	sc, err := s.shareContainer(cfg.ID, spec, rootfs, image)
	if err != nil {
		return fmt.Errorf("create container %s: %w", cfg.ID, err)
	}
	defer func() {
		if err != nil {
			s.unshare(cfg.ID, sc.newVolumes)
		}
	}()
	guestRootfs, rootDevice := cfg.ID+"/rootfs", ""
	if image {
		st, dev, err := s.attachRootfs(ctx, cfg.ID, rootfs, rootDiskReadOnly(&cfg))
		if err != nil {
			return fmt.Errorf("create container %s: %w", cfg.ID, err)
		}
		defer func() {
			if err != nil {
				s.detachDevices(context.WithoutCancel(ctx), []string{dev.ID})
			}
		}()
		sc.storages = append(sc.storages, st)
		guestRootfs, rootDevice = "", dev.ID
	}
	devMaps, devIDs, err := s.attachDevices(ctx, cfg.ID, spec)
	if err != nil {
		return fmt.Errorf("create container %s: %w", cfg.ID, err)
	}
	defer func() {
		if err != nil {
			s.detachDevices(context.WithoutCancel(ctx), devIDs)
		}
	}()
	volSts, volIDs, err := s.attachVolumes(ctx, cfg.ID, sc.spec)
	if err != nil {
		return fmt.Errorf("create container %s: %w", cfg.ID, err)
	}
	defer func() {
		if err != nil {
			s.detachDevices(context.WithoutCancel(ctx), volIDs)
		}
	}()
	sc.storages = append(sc.storages, volSts...)
	// The VM grows first when the container needs more than it has.
	res := ResourcesOf(spec)
	if err := s.fitLocked(ctx, cfg.ID, &res, true); err != nil {
		return fmt.Errorf("create container %s: %w", cfg.ID, err)
	}
	defer func() {
		if err != nil {
			s.shrink(ctx)
		}
	}()
	if err := c.CreateContainer(ctx, cfg.ID, sc.spec, guestRootfs, join, sc.storages, devMaps); err != nil {
		return fmt.Errorf("create container %s: %w", cfg.ID, err)
	}
	failpoint.Hit(failpoint.ContainerCreate)
	err = s.updateLocked(func(st *sandboxState) error {
		st.PodContainer = pod
		st.Containers[cfg.ID] = &containerState{
			ID: cfg.ID, Bundle: cfg.Bundle, Rootfs: rootfs, Created: time.Now().UTC(),
			Annotations: cfg.Annotations, Terminal: spec.Process.Terminal, Env: spec.Process.Env,
			Volumes: sc.volumes, RootDevice: rootDevice, PassedDevices: devIDs, VolumeDisks: volIDs,
			Resources: res,
		}
		return nil
	})
	if err != nil {
		c.RemoveContainer(context.Background(), cfg.ID, true)
	}
	return err
}

// sharedContainer is what shareContainer made of a container.
type sharedContainer struct {
	// spec is the spec the guest runs: bind sources rewritten to shared
	// paths, host-only settings dropped.
	spec *specs.Spec
	// storages are where the guest finds the bind sources, with the
	// host's mounts below each (see storage.Submounts), which the guest
	// mounts before the container's.
	storages []agent.Storage
	// volumes are the pod-wide binds the container uses (see volumeRel),
	// newVolumes those of them it bound first.
	volumes, newVolumes []string
}

// shareContainer bind-mounts the container's rootfs and bind-mount sources
// into the sandbox's shared directory.
func (s *Sandbox) shareContainer(id string, spec *specs.Spec, rootfs string, image bool) (sc sharedContainer, err error) {
	defer func() {
		if err != nil {
			s.unshare(id, sc.newVolumes)
		}
	}()
	inUse := map[string]bool{}
	s.mu.Lock()
	if s.state != nil {
		for _, c := range s.state.Containers {
			for _, v := range c.Volumes {
				inUse[v] = true
			}
		}
	}
	s.mu.Unlock()
	// An image rootfs is the guest's to mount (see attachRootfs).
	if !image {
		rootAccess := storage.ReadWrite
		if spec.Root.Readonly {
			rootAccess = storage.ReadOnly
			dests, files := mountpoints(spec.Mounts)
			if err := storage.MakeMountpoints(rootfs, dests, files); err != nil {
				return sc, err
			}
		}
		if err := s.shared.Bind(rootfs, id+"/rootfs", rootAccess); err != nil {
			return sc, err
		}
	}
	g := *spec
	g.Hooks = nil // host hooks cannot run in the guest
	g.Mounts = slices.Clone(spec.Mounts)
	for i := range g.Mounts {
		m := &g.Mounts[i]
		if !isBind(*m) {
			continue
		}
		if !filepath.IsAbs(m.Source) {
			return sc, fmt.Errorf("%w: bind mount source %q is not absolute", ErrInvalidConfig, m.Source)
		}
		if name, size, ok := storage.MemoryEmptyDir(m.Source); ok {
			// A tmpfs of the guest's, not the host's memory shared back.
			m.Source = ""
			sc.storages = append(sc.storages, agent.Storage{Mount: i, Kind: agent.StorageEphemeral, Path: name, SizeBytes: size})
			continue
		}
		access := mountAccess(m.Options)
		rel := fmt.Sprintf("%s/mounts/%d", id, i)
		if propagates(m.Options) {
			rel = volumeRel(m.Source, access)
			if !slices.Contains(sc.volumes, rel) {
				sc.volumes = append(sc.volumes, rel)
			}
		}
		if !inUse[rel] {
			private := slices.Contains(m.Options, "private") || slices.Contains(m.Options, "rprivate")
			if err := s.shared.BindWith(m.Source, rel, access, private); err != nil {
				return sc, err
			}
			if rel != fmt.Sprintf("%s/mounts/%d", id, i) {
				inUse[rel] = true
				sc.newVolumes = append(sc.newVolumes, rel)
			}
		}
		// The host's path means nothing in the guest and is not its to know.
		m.Source = ""
		subs, err := storage.Submounts(spec.Mounts[i].Source)
		if err != nil {
			return sc, err
		}
		sc.storages = append(sc.storages, agent.Storage{Mount: i, Path: rel, Submounts: subs})
	}
	if spec.Linux != nil {
		l := *spec.Linux
		// The guest creates the namespaces without a path; those with one
		// are the pod's, which it joins (see podNamespaces).
		l.Namespaces = slices.DeleteFunc(slices.Clone(l.Namespaces), func(ns specs.LinuxNamespace) bool {
			return ns.Type == specs.NetworkNamespace || ns.Path != ""
		})
		// The guest's cgroup layout is the agent's (/cocoon/<id>).
		l.CgroupsPath = ""
		g.Linux = &l
	}
	sc.spec = &g
	return sc, nil
}

// propagates reports whether a bind mount with options opts receives
// mounts from its source's peers (rshared, rslave and their non-recursive
// forms, as the CRI's Bidirectional and HostToContainer give).
func propagates(opts []string) bool {
	return slices.ContainsFunc(opts, func(o string) bool {
		switch o {
		case "shared", "rshared", "slave", "rslave":
			return true
		}
		return false
	})
}

// volumeRel is where, below the shared tree, a propagating bind of src with
// access is made, once for the whole pod: the containers that bind the
// same host directory so bind one mount in the guest, and a mount one of
// them makes below it reaches the others as mount propagation says.
func volumeRel(src string, access storage.Access) string {
	h := sha256.Sum256([]byte(fmt.Sprintf("%d\x00%s", access, filepath.Clean(src))))
	return volumesDir + "/" + hex.EncodeToString(h[:12])
}

// volumesDir holds the pod-wide binds below the shared tree; it cannot be
// a container ID (those begin with a letter or digit).
const volumesDir = "_volumes"

// unshare releases the container's own shared binds and those of vols
// that no other container uses.
func (s *Sandbox) unshare(id string, vols []string) error {
	err := s.shared.Release(id)
	used := map[string]bool{}
	s.mu.Lock()
	if s.state != nil {
		for cid, c := range s.state.Containers {
			if cid == id {
				continue
			}
			for _, v := range c.Volumes {
				used[v] = true
			}
		}
	}
	s.mu.Unlock()
	for _, v := range vols {
		if !used[v] {
			if rerr := s.shared.Release(v); rerr != nil && err == nil {
				err = rerr
			}
		}
	}
	return err
}

// mountpoints are the destinations of mounts that need a mount point in
// the root filesystem (not those inside an earlier mount, such as /dev/pts
// in /dev's tmpfs), and which of them are bind mounts of files.
func mountpoints(mounts []specs.Mount) (dests []string, files map[string]bool) {
	files = map[string]bool{}
	for i, m := range mounts {
		d := filepath.Clean(m.Destination)
		inner := slices.ContainsFunc(mounts[:i], func(o specs.Mount) bool {
			od := filepath.Clean(o.Destination)
			return od == "/" || strings.HasPrefix(d, od+"/")
		})
		if inner || !filepath.IsAbs(d) || d == "/" {
			continue
		}
		dests = append(dests, d)
		if isBind(m) {
			if st, err := os.Stat(m.Source); err == nil && !st.IsDir() {
				files[d] = true
			}
		}
	}
	return dests, files
}

// isBind reports whether m is a bind mount.
func isBind(m specs.Mount) bool {
	return m.Type == "bind" || slices.Contains(m.Options, "bind") || slices.Contains(m.Options, "rbind")
}

// mountAccess is the host-side access of a bind mount with options opts,
// the guest's ceiling whatever it does: the last of "ro"/"rw" decides, as
// in runc, and "rro" makes the whole tree read-only.
func mountAccess(opts []string) storage.Access {
	a := storage.ReadWrite
	recursive := false
	for _, o := range opts {
		switch o {
		case "ro":
			a = storage.ReadOnly
		case "rw":
			a = storage.ReadWrite
		case "rro":
			recursive = true
		}
	}
	if recursive {
		return storage.RecursiveReadOnly
	}
	return a
}

// StartContainer starts a created container's program.
func (s *Sandbox) StartContainer(ctx context.Context, id string) error {
	c, err := s.containerClient(id)
	if err != nil {
		return err
	}
	if err := c.StartContainer(ctx, id); err != nil {
		return fmt.Errorf("start container %s: %w", id, err)
	}
	return nil
}

// containerClient checks that the sandbox has container id and returns
// the agent client.
func (s *Sandbox) containerClient(id string) (guestAgent, error) {
	s.mu.Lock()
	_, ok := s.state.Containers[id]
	s.mu.Unlock()
	if !ok {
		return nil, fmt.Errorf("container %s in sandbox %s: %w", id, s.id, ErrNotFound)
	}
	return s.agentClient()
}

// StopContainer stops a container: SIGTERM, then SIGKILL after timeout,
// and waits for its init process to exit.
func (s *Sandbox) StopContainer(ctx context.Context, id string, timeout time.Duration) error {
	c, err := s.containerClient(id)
	if err != nil {
		return err
	}
	st, err := c.StateContainer(ctx, id)
	if err != nil {
		return err
	}
	if st.Status == agent.ContainerStopped || st.Status == agent.ContainerCreated {
		if st.Status == agent.ContainerCreated {
			return c.SignalProcess(ctx, id, "", uint32(syscall.SIGKILL), true)
		}
		return nil
	}
	if err := c.SignalProcess(ctx, id, "", uint32(syscall.SIGTERM), false); err != nil {
		return fmt.Errorf("stop container %s: %w", id, err)
	}
	wctx, cancel := context.WithTimeout(ctx, timeout)
	_, err = c.WaitProcess(wctx, id, "")
	cancel()
	if err == nil {
		return nil
	}
	if err := c.SignalProcess(ctx, id, "", uint32(syscall.SIGKILL), true); err != nil {
		return fmt.Errorf("stop container %s: %w", id, err)
	}
	_, err = c.WaitProcess(ctx, id, "")
	return err
}

// DeleteContainer removes a container from the sandbox: in the guest (its
// processes are killed) and on the host (its shared mounts and record).
func (s *Sandbox) DeleteContainer(ctx context.Context, id string) error {
	unlock, err := s.rt.store.Lock(ctx, s.id)
	if err != nil {
		return err
	}
	defer unlock()
	s.mu.Lock()
	_, ok := s.state.Containers[id]
	s.mu.Unlock()
	if !ok {
		return fmt.Errorf("delete container %s: %w", id, ErrNotFound)
	}
	if c, err := s.agentClient(); err == nil {
		if err := c.RemoveContainer(ctx, id, true); err != nil {
			return fmt.Errorf("delete container %s: %w", id, err)
		}
	}
	s.mu.Lock()
	cs := *s.state.Containers[id]
	s.mu.Unlock()
	if err := s.detachDevices(ctx, containerDisks(&cs)); err != nil {
		return fmt.Errorf("delete container %s: %w", id, err)
	}
	if err := s.unshare(id, cs.Volumes); err != nil {
		return fmt.Errorf("delete container %s: %w", id, err)
	}
	if err := s.updateLocked(func(st *sandboxState) error {
		delete(st.Containers, id)
		return nil
	}); err != nil {
		return err
	}
	s.shrink(ctx)
	return nil
}

// KillContainer sends sig to the container's init process, or with all
// to every process in it.
func (s *Sandbox) KillContainer(ctx context.Context, id string, sig syscall.Signal, all bool) error {
	return s.SignalProcess(ctx, id, "", sig, all)
}

// EnterContainer starts process p in running container id and returns its
// exec ID (execID, or a generated one when empty). A process without an
// environment gets the container's; without a cwd, "/".
func (s *Sandbox) EnterContainer(ctx context.Context, id, execID string, p specs.Process) (string, error) {
	c, err := s.containerClient(id)
	if err != nil {
		return "", err
	}
	if execID == "" {
		b := make([]byte, 6)
		rand.Read(b)
		execID = "exec-" + hex.EncodeToString(b)
	}
	if err := validateID("exec", execID); err != nil {
		return "", err
	}
	if len(p.Args) == 0 {
		return "", fmt.Errorf("enter container %s: %w: no command", id, ErrInvalidConfig)
	}
	if p.Cwd == "" {
		p.Cwd = "/"
	}
	if p.Env == nil {
		s.mu.Lock()
		p.Env = slices.Clone(s.state.Containers[id].Env)
		s.mu.Unlock()
	}
	if err := c.ExecProcess(ctx, id, execID, &p); err != nil {
		return "", fmt.Errorf("enter container %s: %w", id, err)
	}
	failpoint.Hit(failpoint.Exec)
	return execID, nil
}

// StatusContainer reports a container's state.
func (s *Sandbox) StatusContainer(ctx context.Context, id string) (ContainerStatus, error) {
	s.mu.Lock()
	cs, ok := s.state.Containers[id]
	s.mu.Unlock()
	if !ok {
		return ContainerStatus{}, fmt.Errorf("container %s: %w", id, ErrNotFound)
	}
	out := ContainerStatus{ID: id, State: StateStopped, Created: cs.Created, Bundle: cs.Bundle, Rootfs: cs.Rootfs, Annotations: cs.Annotations}
	c, err := s.agentClient()
	if err != nil {
		return out, nil // no VM: stopped
	}
	st, err := c.StateContainer(ctx, id)
	if err != nil {
		return out, fmt.Errorf("status of container %s: %w", id, err)
	}
	out.PID = st.Pid
	switch st.Status {
	case agent.ContainerCreated:
		out.State = StateReady
	case agent.ContainerRunning:
		out.State = StateRunning
	case agent.ContainerPaused:
		out.State = StatePaused
	}
	return out, nil
}

// ContainerStats are a container's resource usage, from its cgroup (v2)
// in the guest.
type ContainerStats struct {
	CPU struct {
		UsageNs          uint64 `json:"usage_ns"`
		UserNs           uint64 `json:"user_ns"`
		SystemNs         uint64 `json:"system_ns"`
		ThrottledPeriods uint64 `json:"throttled_periods"`
		ThrottledNs      uint64 `json:"throttled_ns"`
	} `json:"cpu"`
	Memory struct {
		UsageBytes    uint64 `json:"usage_bytes"`
		LimitBytes    uint64 `json:"limit_bytes"`
		MaxUsageBytes uint64 `json:"max_usage_bytes"`
		AnonBytes     uint64 `json:"anon_bytes"`
		FileBytes     uint64 `json:"file_bytes"`
		OOMEvents     uint64 `json:"oom_events"`
		OOMKillEvents uint64 `json:"oom_kill_events"`
	} `json:"memory"`
	Pids struct {
		Current uint64 `json:"current"`
		Limit   uint64 `json:"limit"` // 0: no limit
	} `json:"pids"`
	// IO is the block IO over all devices.
	IO struct {
		ReadBytes  uint64 `json:"read_bytes"`
		WriteBytes uint64 `json:"write_bytes"`
		ReadOps    uint64 `json:"read_ops"`
		WriteOps   uint64 `json:"write_ops"`
	} `json:"io"`
	// Network has the counters of the pod's interfaces in the guest
	// (every container of the pod shares them), when the sandbox has a
	// network namespace.
	Network []InterfaceStats `json:"network,omitempty"`
}

// InterfaceStats are one network interface's counters.
type InterfaceStats struct {
	Name string `json:"name"`
	NetStats
}

// StatsContainer reports a container's resource usage.
func (s *Sandbox) StatsContainer(ctx context.Context, id string) (*ContainerStats, error) {
	c, err := s.containerClient(id)
	if err != nil {
		return nil, err
	}
	st, err := c.StatsContainer(ctx, id)
	if err != nil {
		return nil, err
	}
	var o ContainerStats
	o.CPU.UsageNs, o.CPU.UserNs, o.CPU.SystemNs = st.CpuUsageNs, st.CpuUserNs, st.CpuSystemNs
	o.CPU.ThrottledPeriods, o.CPU.ThrottledNs = st.CpuThrottledPeriods, st.CpuThrottledNs
	o.Memory.UsageBytes, o.Memory.LimitBytes, o.Memory.MaxUsageBytes = st.MemoryUsageBytes, st.MemoryLimitBytes, st.MemoryMaxUsageBytes
	o.Memory.AnonBytes, o.Memory.FileBytes = st.MemoryAnonBytes, st.MemoryFileBytes
	o.Memory.OOMEvents, o.Memory.OOMKillEvents = st.MemoryOomEvents, st.MemoryOomKillEvents
	o.Pids.Current, o.Pids.Limit = st.PidsCurrent, st.PidsLimit
	o.IO.ReadBytes, o.IO.WriteBytes, o.IO.ReadOps, o.IO.WriteOps = st.IoReadBytes, st.IoWriteBytes, st.IoReadOps, st.IoWriteOps
	s.mu.Lock()
	hasNet := s.state.Network != nil
	s.mu.Unlock()
	if hasNet {
		ifcs, err := c.ListInterfaces(ctx)
		if err != nil {
			return nil, fmt.Errorf("stats of %s: %w", id, err)
		}
		for _, i := range ifcs {
			if i.Stats != nil {
				o.Network = append(o.Network, InterfaceStats{Name: i.Name, NetStats: *i.Stats})
			}
		}
	}
	return &o, nil
}

// ProcessInfo is one process in a container.
type ProcessInfo struct {
	// Pid and PPid are the process's and its parent's pid in the guest.
	Pid, PPid int
	Command   string
	// State is the process state the guest kernel reports ("R", "S", ...).
	State string
}

// ProcessListContainer lists the processes in a container.
func (s *Sandbox) ProcessListContainer(ctx context.Context, id string) ([]ProcessInfo, error) {
	c, err := s.containerClient(id)
	if err != nil {
		return nil, err
	}
	ps, err := c.ListProcesses(ctx, id)
	if err != nil {
		return nil, err
	}
	out := make([]ProcessInfo, len(ps))
	for i, p := range ps {
		out[i] = ProcessInfo{Pid: p.Pid, PPid: p.PPid, Command: p.Command, State: p.State}
	}
	return out, nil
}

// UpdateContainer changes a container's resource limits. The VM grows
// first when the new CPU or memory limit needs more than it has, and
// shrinks afterwards when the limits fell.
func (s *Sandbox) UpdateContainer(ctx context.Context, id string, r *specs.LinuxResources) error {
	unlock, err := s.rt.store.Lock(ctx, s.id)
	if err != nil {
		return err
	}
	defer unlock()
	st, err := s.loadLocked() // another process may have made it
	if err != nil {
		return err
	}
	cs := st.Containers[id]
	if cs == nil {
		return fmt.Errorf("container %s in sandbox %s: %w", id, s.id, ErrNotFound)
	}
	c, err := s.agentClient()
	if err != nil {
		return err
	}
	res := cs.Resources.withUpdate(r)
	if err := s.fitLocked(ctx, id, &res, true); err != nil {
		return fmt.Errorf("update container %s: %w", id, err)
	}
	if err := c.UpdateContainer(ctx, id, r); err != nil {
		s.shrink(ctx)
		return err
	}
	if err := s.updateLocked(func(st *sandboxState) error {
		if cs := st.Containers[id]; cs != nil {
			cs.Resources = res
		}
		return nil
	}); err != nil {
		return err
	}
	s.shrink(ctx)
	return nil
}

// PauseContainer freezes a container's processes.
func (s *Sandbox) PauseContainer(ctx context.Context, id string) error {
	c, err := s.containerClient(id)
	if err != nil {
		return err
	}
	return c.PauseContainer(ctx, id)
}

// ResumeContainer thaws a paused container.
func (s *Sandbox) ResumeContainer(ctx context.Context, id string) error {
	c, err := s.containerClient(id)
	if err != nil {
		return err
	}
	return c.ResumeContainer(ctx, id)
}

// WaitProcess waits for a process to exit: the container's init process
// when execID is empty. If the VM dies meanwhile it fails with an error
// wrapping ErrGuestDied.
func (s *Sandbox) WaitProcess(ctx context.Context, id, execID string) (ExitStatus, error) {
	c, err := s.containerClient(id)
	if err != nil {
		return ExitStatus{}, err
	}
	e, err := c.WaitProcess(ctx, id, execID)
	if err != nil {
		return ExitStatus{}, err
	}
	return ExitStatus(e), nil
}

// DeleteProcess forgets an exec'd process that exited: its streams are
// closed and WaitProcess no longer knows it. Call it once its exit status
// was collected, or the guest keeps its record until the container goes.
func (s *Sandbox) DeleteProcess(ctx context.Context, id, execID string) error {
	if execID == "" {
		return fmt.Errorf("delete process of %s: %w: the init process goes with its container", id, ErrInvalidConfig)
	}
	c, err := s.containerClient(id)
	if err != nil {
		return err
	}
	return c.DeleteProcess(ctx, id, execID)
}

// SignalProcess sends sig to a process, or with all (init process only)
// to every process of the container.
func (s *Sandbox) SignalProcess(ctx context.Context, id, execID string, sig syscall.Signal, all bool) error {
	c, err := s.containerClient(id)
	if err != nil {
		return err
	}
	if err := c.SignalProcess(ctx, id, execID, uint32(sig), all); err != nil {
		return fmt.Errorf("signal %v to %s: %w", sig, id, err)
	}
	return nil
}

// WinsizeProcess resizes a process's terminal.
func (s *Sandbox) WinsizeProcess(ctx context.Context, id, execID string, height, width uint32) error {
	c, err := s.containerClient(id)
	if err != nil {
		return err
	}
	return c.ResizeTTY(ctx, id, execID, width, height)
}

// CloseStdin closes a process's stdin.
func (s *Sandbox) CloseStdin(ctx context.Context, id, execID string) error {
	c, err := s.containerClient(id)
	if err != nil {
		return err
	}
	return c.CloseStdin(ctx, id, execID)
}

// IOStream attaches to a process's stdio. Write to stdin and close it to
// close the process's stdin; read stdout and stderr until EOF, which comes
// once the process closed them and everything it wrote was delivered.
// stderr is nil for a process with a terminal. Attach before starting the
// process to be sure to see all its output; output written before anyone
// attached waits in the guest.
func (s *Sandbox) IOStream(ctx context.Context, id, execID string) (stdin io.WriteCloser, stdout, stderr io.ReadCloser, err error) {
	c, err := s.containerClient(id)
	if err != nil {
		return nil, nil, nil, err
	}
	s.mu.Lock()
	terminal := s.state.Containers[id].Terminal
	s.mu.Unlock()
	open := func(kind string) (io.ReadWriteCloser, error) {
		return c.OpenStream(ctx, protocol.StreamHeader{ContainerID: id, ExecID: execID, Stream: kind})
	}
	var closers []io.Closer
	defer func() {
		if err != nil {
			for _, c := range closers {
				c.Close()
			}
		}
	}()
	in, err := open(protocol.StreamStdin)
	if err != nil {
		return nil, nil, nil, err
	}
	closers = append(closers, in)
	out, err := open(protocol.StreamStdout)
	if err != nil {
		return nil, nil, nil, err
	}
	closers = append(closers, out)
	// An exec'd process may have a terminal while the init does not; the
	// guest closes stderr at once for a process with a terminal.
	if !terminal || execID != "" {
		e, err := open(protocol.StreamStderr)
		if err != nil {
			return nil, nil, nil, err
		}
		stderr = e
	}
	return halfCloser{in}, out, stderr, nil
}

// halfCloser closes only the write side of a stream, so the guest sees
// end of file on stdin.
type halfCloser struct{ io.ReadWriteCloser }

func (h halfCloser) Close() error {
	if cw, ok := h.ReadWriteCloser.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return h.ReadWriteCloser.Close()
}

// IsGuestDied reports whether err means the sandbox's VM died: whether
// it wraps ErrGuestDied.
func IsGuestDied(err error) bool { return errors.Is(err, ErrGuestDied) }
