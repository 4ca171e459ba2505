// Package container runs OCI containers inside the Cocoon guest with runc's
// libcontainer.
//
// A Manager turns the OCI runtime spec that the host sends into a
// libcontainer configuration and runs the container's processes: each
// container gets its own PID, mount, IPC and UTS namespaces (a network
// namespace only when the spec asks for one: otherwise it shares the VM's
// network), and a cgroup v2 group, /cocoon/<id> unless the spec sets
// cgroupsPath, that enforces spec.linux.resources.
//
// The spec is adapted to the guest: root.path is the rootfs argument;
// OCI hooks, which name programs of the host, are dropped with a warning,
// and so are AppArmor profiles and SELinux labels when the guest kernel
// does not run those modules. When the agent runs from its initramfs,
// which pivot_root(2) cannot leave, the container's root is moved over /
// and chrooted into instead, as with "runc --no-pivot".
//
// # Wiring into the agent
//
// libcontainer starts container processes by re-executing the running
// binary as "<binary> init", so main must call Init first:
//
//	func main() {
//		if len(os.Args) > 1 && os.Args[1] == "init" {
//			container.Init() // never returns
//		}
//		...
//	}
//
// The agent, as PID 1, reaps every process of the guest. libcontainer waits
// for its own helper processes while it starts a container process, so the
// reaper must not reap while that happens: the Manager holds the reaper's
// lock meanwhile. A *reaper.Reaper is both the Reaper and the lock:
//
//	r := reaper.New()
//	go r.Run(ctx)
//	mgr, err := container.NewManager("/run/cocoon/containers", r, r, log)
//
// The Manager learns how a container's processes exit from the reaper: it
// subscribes while holding the lock, before starting a process, and never
// waits for the process itself. Any other code of the agent that waits for
// its own children must hold the lock too.
//
// # Exec'd processes
//
// libcontainer starts the first process exec'd into a container. The
// Manager then has libcontainer start a zygote in the container for the
// same process spec, which forks the later execs of that spec (any
// arguments, no terminal) in a few milliseconds instead of the 200 ms that
// libcontainer's init helper takes under TCG. The zygote is the agent binary
// again, run by a C constructor before the Go runtime starts; it is not
// listed among the container's processes. See zygote.go.
//
// # Building
//
// libcontainer's nsenter is C code run as a constructor before the Go
// runtime, so the agent must be built with cgo. Linked statically, as the
// guest needs:
//
//	CGO_ENABLED=1 go build -tags 'netgo osusergo seccomp' \
//		-ldflags '-s -w -linkmode external -extldflags "-static"' ./cmd/cocoon-agent
//
// The seccomp tag needs libseccomp's static library (Debian's
// libseccomp-dev). Without the tag, containers whose spec has a seccomp
// profile are refused with ErrSeccompUnsupported rather than run without
// it. Without cgo the package does not compile.
package container

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/moby/sys/mountinfo"
	"github.com/opencontainers/cgroups"
	"github.com/opencontainers/runc/libcontainer"
	"github.com/opencontainers/runc/libcontainer/specconv"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	// Sets up device rules, as eBPF programs on cgroup v2.
	_ "github.com/opencontainers/cgroups/devices"
)

// Errors reported by the Manager. Test for them with errors.Is.
var (
	ErrExists             = errors.New("already exists")
	ErrNotFound           = errors.New("not found")
	ErrInvalidID          = errors.New("invalid ID")
	ErrNotRunning         = errors.New("not running")
	ErrRunning            = errors.New("still running")
	ErrNoTerminal         = errors.New("process has no terminal")
	ErrSeccompUnsupported = errors.New("seccomp support not compiled in (build with cgo and the seccomp tag)")
)

// cgroupRoot is where the guest mounts cgroup v2.
const cgroupRoot = "/sys/fs/cgroup"

// controllers are enabled for the containers' cgroups when available.
func controllers() []string { return []string{"cpu", "cpuset", "io", "memory", "pids"} }

// Manager runs containers. Its methods are safe for concurrent use;
// operations on one container are serialised.
type Manager struct {
	root   string
	reaper Reaper
	lock   sync.Locker
	log    *slog.Logger

	cgroupOnce sync.Once

	sealedExe // for the zygotes

	mu         sync.Mutex
	containers map[string]*ctr
}

// ctr is one container.
type ctr struct {
	id     string
	rootfs string
	bundle string

	mu        sync.Mutex // serialises the operations on the container
	gone      bool       // deleted, or never created
	lc        *libcontainer.Container
	cgroupDir string              // cgroup v2 directory, "" on cgroup v1
	mounts    map[string]struct{} // mount points under rootfs before Create
	init      *Process
	execs     map[string]*Process
	zygote    *zygoteSlot // forks exec'd processes; see zygote.go
	zygotes   int         // zygotes started
	forked    int         // exec'd processes the zygotes started
	noZygote  atomic.Bool // a zygote failed to start
	paused    bool        // frozen by Pause
	started   time.Time   // when Start ran its program (see signal.go)
	oom       *memoryEvents
}

// State describes a container.
type State struct {
	ID     string
	Status libcontainer.Status
	// Pid is the init process's pid, or 0 once it has stopped.
	Pid         int
	Created     time.Time
	Bundle      string // the directory holding Rootfs
	Rootfs      string
	Annotations map[string]string
}

// NewManager returns a Manager keeping libcontainer's state under root, for
// example /run/cocoon/containers. It learns the exits of the containers'
// processes from r and holds lock, which the reaping loop must also hold
// while it reaps, while it starts a process. See the package documentation.
func NewManager(root string, r Reaper, lock sync.Locker, log *slog.Logger) (*Manager, error) {
	if r == nil || lock == nil {
		return nil, errors.New("new container manager: reaper and lock are required")
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if !filepath.IsAbs(root) {
		return nil, fmt.Errorf("new container manager: state directory %q is not an absolute path", root)
	}
	if err := os.MkdirAll(root, 0o700); err != nil {
		return nil, fmt.Errorf("new container manager: create state directory: %w", err)
	}
	return &Manager{
		root:       filepath.Clean(root),
		reaper:     r,
		lock:       lock,
		log:        log,
		containers: make(map[string]*ctr),
	}, nil
}

// Create creates container id from spec, like "runc create": its
// namespaces and cgroup are set up and its init process waits to execute
// the spec's program until Start. rootfs, an absolute path already mounted
// in the guest, replaces spec.root.path. A program that is not found in the
// container fails Create.
func (m *Manager) Create(ctx context.Context, id string, spec *specs.Spec, rootfs string, pio ProcessIO) (_ *Process, retErr error) {
	if err := validateID(id); err != nil {
		return nil, fmt.Errorf("create container: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("create container %s: %w", id, err)
	}
	s, err := prepareSpec(id, spec, rootfs, pio.Terminal, m.log)
	if err != nil {
		return nil, fmt.Errorf("create container %s: %w", id, err)
	}
	if err := applySysctls(vmSysctls(s.Linux)); err != nil {
		return nil, fmt.Errorf("create container %s: %w", id, err)
	}
	cfg, err := newConfig(id, s, m.log)
	if err != nil {
		return nil, fmt.Errorf("create container %s: %w", id, err)
	}
	lp, err := libcontainerProcess(s.Process, true)
	if err != nil {
		return nil, fmt.Errorf("create container %s: %w", id, err)
	}
	pio = consoleSize(pio, s.Process)

	c := &ctr{id: id, rootfs: s.Root.Path, bundle: filepath.Dir(s.Root.Path), execs: make(map[string]*Process)}
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := m.reserve(c); err != nil {
		return nil, fmt.Errorf("create container %s: %w", id, err)
	}
	defer func() {
		if retErr != nil {
			c.gone = true
			m.remove(id)
		}
	}()

	c.mounts, err = mountsUnder(c.rootfs)
	if err != nil {
		return nil, fmt.Errorf("create container %s: %w", id, err)
	}
	m.setupCgroups()
	lc, err := libcontainer.Create(m.root, id, cfg)
	if err != nil {
		return nil, fmt.Errorf("create container %s: %w", id, err)
	}
	c.lc = lc
	if st, err := lc.State(); err == nil {
		c.cgroupDir = st.CgroupPaths[""]
	}

	p := newProcess(id, "", pio.Terminal)
	c.init = p
	pend, err := p.prepareIO(pio, lp)
	if err != nil {
		m.destroyAfterFailure(c)
		return nil, fmt.Errorf("create container %s: %w", id, err)
	}
	defer pend.close()
	if err := m.start(c, lp, p, pend); err != nil {
		m.destroyAfterFailure(c)
		p.closeIO()
		return nil, fmt.Errorf("create container %s: %w", id, err)
	}
	m.log.Debug("container created", "container", id, "pid", p.Pid())
	return p, nil
}

// consoleSize fills in the terminal size from the spec when pio has none.
func consoleSize(pio ProcessIO, p *specs.Process) ProcessIO {
	if pio.Terminal && pio.Width == 0 && pio.Height == 0 && p.ConsoleSize != nil {
		pio.Width, pio.Height = uint16(p.ConsoleSize.Width), uint16(p.ConsoleSize.Height)
	}
	return pio
}

// reserve adds c to the containers unless its ID is taken.
func (m *Manager) reserve(c *ctr) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.containers[c.id]; ok {
		return fmt.Errorf("container %s: %w", c.id, ErrExists)
	}
	if _, err := os.Lstat(filepath.Join(m.root, c.id)); err == nil {
		return fmt.Errorf("container %s state directory: %w", c.id, ErrExists)
	}
	m.containers[c.id] = c
	return nil
}

// remove forgets container id.
func (m *Manager) remove(id string) {
	m.mu.Lock()
	delete(m.containers, id)
	m.mu.Unlock()
}

// start starts lp in c and records it in p; the caller holds c.mu. It
// holds the reaper's lock meanwhile, so that libcontainer can wait for its
// helper processes and p learns the exit of its process from the reaper.
func (m *Manager) start(c *ctr, lp *libcontainer.Process, p *Process, pend *pendingIO) error {
	m.lock.Lock()
	ch := m.reaper.Subscribe()
	if err := c.lc.Start(lp); err != nil {
		m.lock.Unlock()
		m.reaper.Unsubscribe(ch)
		return err
	}
	pid, err := lp.Pid()
	if err != nil { // cannot happen after a successful Start
		m.lock.Unlock()
		m.reaper.Unsubscribe(ch)
		return fmt.Errorf("pid of started process: %w", err)
	}
	if c.oom == nil {
		// The cgroup exists once the init process started.
		c.oom = openMemoryEvents(c.cgroupDir)
	}
	p.setStarted(pid, c.oom)
	m.lock.Unlock()
	go p.watch(m.reaper, ch, m.log)

	if err := p.started(pend); err != nil {
		_ = p.Signal(unix.SIGKILL)
		return err
	}
	return nil
}

// setupCgroups enables controllers for the containers' cgroups, once and
// best-effort: a missing controller only means its limits cannot be set.
func (m *Manager) setupCgroups() {
	m.cgroupOnce.Do(func() {
		if !cgroups.IsCgroup2UnifiedMode() {
			m.log.Warn("cgroup v2 is not mounted at " + cgroupRoot + "; containers use cgroup v1")
			return
		}
		m.enableControllers(cgroupRoot)
		parent := filepath.Join(cgroupRoot, cgroupParent)
		if err := os.Mkdir(parent, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
			m.log.Warn("cannot create the containers' parent cgroup", "err", err)
			return
		}
		m.enableControllers(parent)
	})
}

// enableControllers enables each available controller for the children of
// the cgroup directory dir.
func (m *Manager) enableControllers(dir string) {
	data, err := os.ReadFile(filepath.Join(dir, "cgroup.controllers"))
	if err != nil {
		m.log.Warn("cannot read available cgroup controllers", "cgroup", dir, "err", err)
		return
	}
	avail := strings.Fields(string(data))
	for _, ctl := range controllers() {
		if !slices.Contains(avail, ctl) {
			m.log.Debug("cgroup controller not available", "cgroup", dir, "controller", ctl)
			continue
		}
		if err := os.WriteFile(filepath.Join(dir, "cgroup.subtree_control"), []byte("+"+ctl), 0); err != nil {
			m.log.Warn("cannot enable cgroup controller", "cgroup", dir, "controller", ctl, "err", err)
		}
	}
}

// lookup returns container id, locked, or an error wrapping ErrNotFound.
func (m *Manager) lookup(id string) (*ctr, error) {
	if err := validateID(id); err != nil {
		return nil, err
	}
	m.mu.Lock()
	c := m.containers[id]
	m.mu.Unlock()
	if c == nil {
		return nil, fmt.Errorf("container %s: %w", id, ErrNotFound)
	}
	c.mu.Lock()
	if c.gone {
		c.mu.Unlock()
		return nil, fmt.Errorf("container %s: %w", id, ErrNotFound)
	}
	return c, nil
}

// execFifo is the file in a container's libcontainer state directory that
// exists from Create until Start.
const execFifo = "exec.fifo"

// status returns the status of c.
//
// libcontainer tells whether the init process runs through /proc, with
// openat2(2), which fails with EAGAIN while mounts change anywhere in the
// system; libcontainer gives up after 2ms and then reports a running
// container as stopped, as seen under load. The init process's pidfd
// settles whether it runs, and then the container's files tell the rest.
func (m *Manager) status(c *ctr) libcontainer.Status {
	if c.init == nil || !c.init.running() {
		return libcontainer.Stopped
	}
	if st, err := c.lc.Status(); err == nil && st != libcontainer.Stopped {
		return st
	}
	if c.cgroupDir != "" {
		if b, err := os.ReadFile(filepath.Join(c.cgroupDir, "cgroup.freeze")); err == nil && strings.TrimSpace(string(b)) == "1" {
			return libcontainer.Paused
		}
	}
	if _, err := os.Lstat(filepath.Join(m.root, c.id, execFifo)); err == nil {
		return libcontainer.Created
	}
	return libcontainer.Running
}

// retry runs op, a libcontainer operation that checks the container's
// status first, again while it fails because libcontainer took the running
// container for stopped (see status).
func (c *ctr) retry(op func() error) error {
	for i := 0; ; i++ {
		err := op()
		transient := errors.Is(err, libcontainer.ErrNotRunning) || errors.Is(err, libcontainer.ErrNotPaused)
		if err == nil || !transient || i == 50 || !c.init.running() {
			return err
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Start starts the program of a created container, like "runc start".
func (m *Manager) Start(ctx context.Context, id string) error {
	c, err := m.lookup(id)
	if err != nil {
		return fmt.Errorf("start container: %w", err)
	}
	defer c.mu.Unlock()
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("start container %s: %w", id, err)
	}
	if st := m.status(c); st != libcontainer.Created {
		return fmt.Errorf("start container %s: container is %s, not created", id, st)
	}
	if err := c.lc.Exec(); err != nil {
		return fmt.Errorf("start container %s: %w", id, err)
	}
	c.started = time.Now()
	return nil
}

// Exec starts proc in container id, in its namespaces and cgroup, as
// execID. The container must be created or running. A program that is not
// found in the container fails Exec.
func (m *Manager) Exec(ctx context.Context, id, execID string, proc *specs.Process, pio ProcessIO) (*Process, error) {
	if err := validateID(execID); err != nil {
		return nil, fmt.Errorf("exec in container %s: exec %w", id, err)
	}
	if proc == nil {
		return nil, fmt.Errorf("exec %s in container %s: process is nil", execID, id)
	}
	c, err := m.lookup(id)
	if err != nil {
		return nil, fmt.Errorf("exec %s: %w", execID, err)
	}
	defer c.mu.Unlock()
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("exec %s in container %s: %w", execID, id, err)
	}
	if _, ok := c.execs[execID]; ok {
		return nil, fmt.Errorf("exec %s in container %s: %w", execID, id, ErrExists)
	}
	// Not m.status, which reads libcontainer's state from procfs: ~3 ms
	// of every exec under TCG.
	if !c.init.running() || c.paused {
		st := m.status(c)
		return nil, fmt.Errorf("exec %s in container %s: container is %s: %w", execID, id, st, ErrNotRunning)
	}

	pr := *proc
	pr.Terminal = pio.Terminal
	if err := checkProcess(&pr); err != nil {
		return nil, fmt.Errorf("exec %s in container %s: %w", execID, id, err)
	}
	lp, err := libcontainerProcess(&pr, false)
	if err != nil {
		return nil, fmt.Errorf("exec %s in container %s: %w", execID, id, err)
	}
	key, keyed := zygoteKey(&pr)
	if keyed {
		if p, ok := m.execZygote(c, execID, key, &pr, pio); ok {
			c.execs[execID] = p
			c.forked++
			return p, nil
		}
	}
	pio = consoleSize(pio, &pr)
	p := newProcess(id, execID, pio.Terminal)
	pend, err := p.prepareIO(pio, lp)
	if err != nil {
		return nil, fmt.Errorf("exec %s in container %s: %w", execID, id, err)
	}
	defer pend.close()
	if err := m.start(c, lp, p, pend); err != nil {
		p.closeIO()
		return nil, fmt.Errorf("exec %s in container %s: %w", execID, id, err)
	}
	c.execs[execID] = p
	if keyed {
		m.prepareZygote(c, key, &pr, p)
	}
	return p, nil
}

// InitPid returns the pid of container id's init process while it runs,
// for another container to join its namespaces; else an error wrapping
// ErrNotRunning.
func (m *Manager) InitPid(id string) (int, error) {
	c, err := m.lookup(id)
	if err != nil {
		return 0, err
	}
	defer c.mu.Unlock()
	if c.init == nil || !c.init.running() {
		return 0, fmt.Errorf("container %s: %w", id, ErrNotRunning)
	}
	return c.init.Pid(), nil
}

// Process returns a process of container id: its init process when execID
// is "", else the exec'd process execID.
func (m *Manager) Process(id, execID string) (*Process, error) {
	c, err := m.lookup(id)
	if err != nil {
		return nil, fmt.Errorf("process: %w", err)
	}
	defer c.mu.Unlock()
	if execID == "" {
		return c.init, nil
	}
	p := c.execs[execID]
	if p == nil {
		return nil, fmt.Errorf("exec %s in container %s: %w", execID, id, ErrNotFound)
	}
	return p, nil
}

// DeleteProcess forgets the exited exec'd process execID of container id
// and closes its streams. It fails with ErrRunning while the process runs.
func (m *Manager) DeleteProcess(ctx context.Context, id, execID string) error {
	c, err := m.lookup(id)
	if err != nil {
		return fmt.Errorf("delete exec %s: %w", execID, err)
	}
	defer c.mu.Unlock()
	p := c.execs[execID]
	if p == nil {
		return fmt.Errorf("delete exec %s in container %s: %w", execID, id, ErrNotFound)
	}
	if !p.exited() {
		return fmt.Errorf("delete exec %s in container %s: %w", execID, id, ErrRunning)
	}
	p.closeIO()
	delete(c.execs, execID)
	return nil
}

// Kill sends sig to the init process of container id or, when all is set,
// to every process in its cgroup. As with runc, the init process of a PID
// namespace only receives the signals it handles, and SIGKILL; a signal
// its program does not handle yet right after Start is held back until
// it does (see signal.go). It fails with ErrNotRunning when there is no
// process to signal.
func (m *Manager) Kill(ctx context.Context, id string, sig syscall.Signal, all bool) error {
	c, err := m.lookup(id)
	if err != nil {
		return fmt.Errorf("kill container: %w", err)
	}
	defer c.mu.Unlock()
	if all {
		if err := c.signalAll(sig); err != nil {
			return fmt.Errorf("kill all processes of container %s with %v: %w", id, sig, err)
		}
		return nil
	}
	signal := c.init.Signal
	if !c.started.IsZero() {
		signal = func(sig syscall.Signal) error { return signalInit(c.init, sig, c.started, m.log) }
	}
	if err := signal(sig); err != nil {
		return fmt.Errorf("kill container %s: %w", id, err)
	}
	return nil
}

// signalAll sends sig to every process in the container's cgroup. It
// fails with ErrNotRunning when the cgroup is empty.
func (c *ctr) signalAll(sig syscall.Signal) error {
	pids, err := c.lc.Processes()
	if err != nil {
		return err
	}
	if len(pids) == 0 {
		return ErrNotRunning
	}
	if sig == unix.SIGKILL && c.cgroupDir != "" {
		// cgroup.kill (Linux 5.14) also catches processes forked meanwhile.
		err := os.WriteFile(filepath.Join(c.cgroupDir, "cgroup.kill"), []byte("1"), 0)
		if err == nil || !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	for _, pid := range pids {
		if err := unix.Kill(pid, sig); err != nil && err != unix.ESRCH {
			return fmt.Errorf("signal pid %d: %w", pid, err)
		}
	}
	return nil
}

// Pause freezes every process of container id.
func (m *Manager) Pause(ctx context.Context, id string) error {
	c, err := m.lookup(id)
	if err != nil {
		return fmt.Errorf("pause container: %w", err)
	}
	defer c.mu.Unlock()
	switch m.status(c) {
	case libcontainer.Stopped:
		return fmt.Errorf("pause container %s: %w", id, ErrNotRunning)
	case libcontainer.Paused:
		return nil
	}
	// A zygote being started would freeze halfway, with libcontainer
	// waiting for it; the next exec after Resume starts a new one.
	c.stopZygote()
	if err := c.retry(c.lc.Pause); err != nil {
		return fmt.Errorf("pause container %s: %w", id, err)
	}
	c.paused = true
	return nil
}

// Resume thaws the processes of paused container id.
func (m *Manager) Resume(ctx context.Context, id string) error {
	c, err := m.lookup(id)
	if err != nil {
		return fmt.Errorf("resume container: %w", err)
	}
	defer c.mu.Unlock()
	if st := m.status(c); st != libcontainer.Paused {
		return fmt.Errorf("resume container %s: container is %s, not paused", id, st)
	}
	if err := c.retry(c.lc.Resume); err != nil {
		return fmt.Errorf("resume container %s: %w", id, err)
	}
	c.paused = false
	return nil
}

// Update sets the cgroup limits of container id to r. Limits that r leaves
// unset keep their values; device rules are not changed.
func (m *Manager) Update(ctx context.Context, id string, r *specs.LinuxResources) error {
	if r == nil {
		return fmt.Errorf("update container %s: resources are nil", id)
	}
	c, err := m.lookup(id)
	if err != nil {
		return fmt.Errorf("update container: %w", err)
	}
	defer c.mu.Unlock()
	res := *r
	res.Devices = nil
	cg, err := specconv.CreateCgroupConfig(&specconv.CreateOpts{
		CgroupName: id,
		Spec:       &specs.Spec{Linux: &specs.Linux{Resources: &res}},
	}, nil)
	if err != nil {
		return fmt.Errorf("update container %s: convert resources: %w", id, err)
	}
	cfg := c.lc.Config()
	newCg := *cfg.Cgroups
	newRes := *cg.Resources
	old := cfg.Cgroups.Resources
	newRes.Devices = old.Devices
	newRes.SkipDevices = old.SkipDevices
	newCg.Resources = &newRes
	cfg.Cgroups = &newCg
	if m.status(c) == libcontainer.Stopped {
		return fmt.Errorf("update container %s: %w", id, ErrNotRunning)
	}
	if err := c.retry(func() error { return c.lc.Set(cfg) }); err != nil {
		return fmt.Errorf("update container %s: %w", id, err)
	}
	return nil
}

// Processes returns the pids of the processes in container id's cgroup.
func (m *Manager) Processes(ctx context.Context, id string) ([]int, error) {
	c, err := m.lookup(id)
	if err != nil {
		return nil, fmt.Errorf("list processes: %w", err)
	}
	defer c.mu.Unlock()
	pids, err := c.lc.Processes()
	if err != nil {
		return nil, fmt.Errorf("list processes of container %s: %w", id, err)
	}
	if z := c.zygotePid(); z != 0 {
		pids = slices.DeleteFunc(pids, func(pid int) bool { return pid == z })
	}
	return pids, nil
}

// State returns the state of container id.
func (m *Manager) State(ctx context.Context, id string) (State, error) {
	c, err := m.lookup(id)
	if err != nil {
		return State{}, fmt.Errorf("container state: %w", err)
	}
	defer c.mu.Unlock()
	st := m.status(c)
	ls, err := c.lc.State()
	if err != nil {
		return State{}, fmt.Errorf("state of container %s: %w", id, err)
	}
	s := State{
		ID:      id,
		Status:  st,
		Created: ls.Created,
		Bundle:  c.bundle,
		Rootfs:  c.rootfs,
	}
	if st != libcontainer.Stopped {
		s.Pid = c.init.Pid()
	}
	cfg := c.lc.Config()
	_, s.Annotations = annotations(cfg.Labels)
	return s, nil
}

// annotations splits libcontainer labels into the bundle and annotations.
func annotations(labels []string) (bundle string, ann map[string]string) {
	for _, l := range labels {
		k, v, ok := strings.Cut(l, "=")
		if !ok {
			continue
		}
		if k == "bundle" {
			bundle = v
			continue
		}
		if ann == nil {
			ann = make(map[string]string)
		}
		ann[k] = v
	}
	return bundle, ann
}

// Delete deletes container id: it kills its processes, waits until the
// reaper reaped them, removes its cgroup and state, unmounts what the
// container left mounted under its rootfs in the guest, and closes the
// streams of its processes, so read them to the end first. Without force,
// a running or paused container is not deleted: the error wraps
// ErrRunning. ctx bounds the wait for the processes to exit.
func (m *Manager) Delete(ctx context.Context, id string, force bool) error {
	c, err := m.lookup(id)
	if err != nil {
		return fmt.Errorf("delete container: %w", err)
	}
	defer c.mu.Unlock()
	if st := m.status(c); !force && (st == libcontainer.Running || st == libcontainer.Paused) {
		return fmt.Errorf("delete container %s: container is %s: %w", id, st, ErrRunning)
	}
	if err := m.teardown(ctx, c); err != nil {
		return fmt.Errorf("delete container %s: %w", id, err)
	}
	c.gone = true
	m.remove(id)
	m.log.Debug("container deleted", "container", id)
	return nil
}

// destroyAfterFailure tears down a container whose creation failed.
func (m *Manager) destroyAfterFailure(c *ctr) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := m.teardown(ctx, c); err != nil {
		m.log.Warn("cleaning up after failed create", "container", c.id, "err", err)
	}
}

// teardown kills every process of c, waits for them, and removes the
// container's cgroup, state and leftover mounts.
func (m *Manager) teardown(ctx context.Context, c *ctr) error {
	paused := m.status(c) == libcontainer.Paused
	c.stopZygote()
	procs := []*Process{}
	if c.init != nil && c.init.Pid() > 0 {
		procs = append(procs, c.init)
	}
	for _, p := range c.execs {
		procs = append(procs, p)
	}
	for _, p := range procs {
		_ = p.Signal(unix.SIGKILL)
	}
	_ = c.signalAll(unix.SIGKILL)
	if paused {
		// cgroup v2 lets frozen processes die; thawing also updates
		// libcontainer's idea of the state so that it destroys.
		_ = c.lc.Resume()
	}
	for _, p := range procs {
		if _, err := p.Wait(ctx); err != nil {
			return err
		}
	}
	if err := c.waitEmpty(ctx); err != nil {
		return err
	}
	c.oom.close() // every process has exited
	c.oom = nil
	if err := c.lc.Destroy(); err != nil {
		return err
	}
	if err := unmountNew(c.rootfs, c.mounts); err != nil {
		return err
	}
	for _, p := range procs {
		p.closeIO()
	}
	return nil
}

// waitEmpty waits until the container's cgroup has no process left,
// killing any that appear.
func (c *ctr) waitEmpty(ctx context.Context) error {
	for {
		pids, err := c.lc.Processes()
		if err != nil || len(pids) == 0 {
			return nil // no cgroup, or empty
		}
		_ = c.signalAll(unix.SIGKILL)
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for processes %v to exit: %w", pids, ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// mountsUnder returns the mount points strictly under dir.
func mountsUnder(dir string) (map[string]struct{}, error) {
	infos, err := mountinfo.GetMounts(mountinfo.PrefixFilter(dir))
	if err != nil {
		return nil, fmt.Errorf("list mounts under %s: %w", dir, err)
	}
	set := make(map[string]struct{})
	for _, mi := range infos {
		if mi.Mountpoint != dir {
			set[mi.Mountpoint] = struct{}{}
		}
	}
	return set, nil
}

// unmountNew unmounts the mount points under dir that are not in before,
// which propagated from the container's mount namespace.
func unmountNew(dir string, before map[string]struct{}) error {
	now, err := mountsUnder(dir)
	if err != nil {
		return err
	}
	var points []string
	for p := range now {
		if _, ok := before[p]; !ok {
			points = append(points, p)
		}
	}
	// Deepest first.
	slices.SortFunc(points, func(a, b string) int { return strings.Count(b, "/") - strings.Count(a, "/") })
	for _, p := range points {
		if err := unix.Unmount(p, unix.MNT_DETACH); err != nil && err != unix.EINVAL && err != unix.ENOENT {
			return fmt.Errorf("unmount %s: %w", p, err)
		}
	}
	return nil
}
