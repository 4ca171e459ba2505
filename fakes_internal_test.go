package cocoon

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cocoon-runtime/cocoon/agent/protocol"
	"github.com/cocoon-runtime/cocoon/hypervisor"
	"github.com/cocoon-runtime/cocoon/internal/agent"
	"github.com/cocoon-runtime/cocoon/internal/network"
	"github.com/cocoon-runtime/cocoon/internal/specutil"
	"github.com/cocoon-runtime/cocoon/internal/storage"
	"github.com/cocoon-runtime/cocoon/internal/testutil"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// Fakes at the boundaries of vmm.go, for the unit tests: VMs that live as
// long as the test (so that a second Runtime, standing for another
// process, finds them) and agents that keep the containers' states.

// fakeVMM is a vmm whose VMs are fakeVMs.
type fakeVMM struct {
	mu      sync.Mutex
	vms     map[string]*fakeVM
	started []string
	removed []string
	// startErr fails Start; openErr, when it returns an error, makes Open
	// return the VM with that error (its agent unreachable).
	startErr error
	openErr  func(id string) error
	// agentFails is a method the agents of VMs started from now fail.
	agentFails string
}

func newFakeVMM() *fakeVMM { return &fakeVMM{vms: map[string]*fakeVM{}} }

func (m *fakeVMM) Start(ctx context.Context, id string, cfg hypervisor.Config, _ time.Duration) (sandboxVM, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.started = append(m.started, id)
	if m.startErr != nil {
		return nil, m.startErr
	}
	if cfg.StateDir == "" || cfg.SharedFSSocket == "" {
		return nil, fmt.Errorf("fake vm %s: config without state dir or file server socket: %+v", id, cfg)
	}
	if _, ok := m.vms[id]; ok {
		return nil, fmt.Errorf("fake vm %s: already running", id)
	}
	v := &fakeVM{id: id, agent: newFakeAgent(), exited: make(chan struct{}),
		boot: vmSize{cfg.VCPUs, cfg.MemoryMiB}, max: vmSize{cfg.MaxVCPUs, cfg.MaxMemoryMiB}}
	v.size = v.boot
	v.agent.vm = v
	if m.agentFails != "" {
		v.agent.failOn(m.agentFails)
	}
	m.vms[id] = v
	return &fakeHandle{vm: v}, nil
}

func (m *fakeVMM) Open(ctx context.Context, id string) (sandboxVM, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	v, ok := m.vms[id]
	if !ok {
		return nil, fmt.Errorf("open fake vm %s: %w", id, os.ErrNotExist)
	}
	if m.openErr != nil {
		if err := m.openErr(id); err != nil {
			return &fakeHandle{vm: v, noAgent: true}, err
		}
	}
	return &fakeHandle{vm: v}, nil
}

func (m *fakeVMM) Remove(ctx context.Context, id string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if v, ok := m.vms[id]; ok {
		v.exit()
		delete(m.vms, id)
		m.removed = append(m.removed, id)
	}
	return nil
}

// vm returns the running VM id, or nil.
func (m *fakeVMM) vm(id string) *fakeVM {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.vms[id]
}

func (m *fakeVMM) starts() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.started)
}

// fakeVM is one VM, shared by every handle on it.
type fakeVM struct {
	id       string
	agent    *fakeAgent
	exited   chan struct{}
	once     sync.Once
	mu       sync.Mutex
	paused   bool
	stopped  bool // powered off through Stop
	killed   bool // stopped through Kill
	closeCnt int
	// boot, max and size are its vCPUs and memory as booted, at most,
	// and now; resizes counts the calls that changed them.
	boot, max, size vmSize
	resizes         int
}

func (v *fakeVM) exit() { v.once.Do(func() { close(v.exited) }) }

func (v *fakeVM) isRunning() bool {
	select {
	case <-v.exited:
		return false
	default:
		return true
	}
}

// fakeHandle is one process's handle on a fakeVM.
type fakeHandle struct {
	vm      *fakeVM
	noAgent bool
	gone    bool // stopped through this handle: no agent any more
}

const fakeVMPid = 424242

func (h *fakeHandle) Agent() guestAgent {
	if h.noAgent || h.gone || !h.vm.isRunning() {
		return nil
	}
	return h.vm.agent
}
func (h *fakeHandle) PIDs() []int             { return []int{fakeVMPid} }
func (h *fakeHandle) Exited() <-chan struct{} { return h.vm.exited }
func (h *fakeHandle) Kill(ctx context.Context) error {
	h.vm.mu.Lock()
	h.vm.killed = true
	h.vm.mu.Unlock()
	h.vm.exit()
	return nil
}
func (h *fakeHandle) Pause(ctx context.Context) error  { return h.setPaused(true) }
func (h *fakeHandle) Resume(ctx context.Context) error { return h.setPaused(false) }
func (h *fakeHandle) setPaused(p bool) error {
	if !h.vm.isRunning() {
		return fmt.Errorf("fake vm %s: not running", h.vm.id)
	}
	h.vm.mu.Lock()
	h.vm.paused = p
	h.vm.mu.Unlock()
	return nil
}
func (h *fakeHandle) Stop(ctx context.Context) error {
	h.vm.mu.Lock()
	h.vm.stopped = true
	h.vm.mu.Unlock()
	h.gone = true
	h.vm.exit()
	return nil
}
func (h *fakeHandle) Close() error {
	h.vm.mu.Lock()
	h.vm.closeCnt++
	h.vm.mu.Unlock()
	return nil
}

// The fake VM has no hotplug slots.
func (h *fakeHandle) AddDevice(ctx context.Context, dev hypervisor.Device) error {
	return fmt.Errorf("fake vm %s: add device %s: %w", h.vm.id, dev.ID, hypervisor.ErrNotSupported)
}
func (h *fakeHandle) RemoveDevice(ctx context.Context, dev hypervisor.Device) error {
	return fmt.Errorf("fake vm %s: remove device %s: %w", h.vm.id, dev.ID, hypervisor.ErrNotSupported)
}

func (h *fakeHandle) ResizeVCPUs(ctx context.Context, n uint32) (uint32, error) {
	h.vm.mu.Lock()
	defer h.vm.mu.Unlock()
	if n < h.vm.boot.VCPUs || n > h.vm.max.VCPUs {
		return 0, fmt.Errorf("fake vm %s: %d vCPUs out of range", h.vm.id, n)
	}
	h.vm.size.VCPUs = n
	h.vm.resizes++
	return n, nil
}
func (h *fakeHandle) ResizeMemory(ctx context.Context, m uint32) (uint32, error) {
	h.vm.mu.Lock()
	defer h.vm.mu.Unlock()
	if m < h.vm.boot.MemoryMiB || m > h.vm.max.MemoryMiB {
		return 0, fmt.Errorf("fake vm %s: %d MiB out of range", h.vm.id, m)
	}
	h.vm.size.MemoryMiB = m
	h.vm.resizes++
	return m, nil
}

func (v *fakeVM) sized() (vmSize, int) {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.size, v.resizes
}

// fakeAgent keeps the state of the containers and processes in a fake
// guest and records every call.
type fakeAgent struct {
	testutil.Calls
	mu         sync.Mutex
	containers map[string]*agent.ContainerState
	procs      map[string]chan agent.Exit // by container/exec, closed-over exit
	// ignoreTerm makes processes survive SIGTERM.
	ignoreTerm bool
	// created remembers what CreateContainer received, by container.
	created map[string]createCall
	// vm is the VM the agent runs in.
	vm *fakeVM
}

type createCall struct {
	spec   *specs.Spec
	rootfs string
	join   map[specs.LinuxNamespaceType]string
}

func newFakeAgent() *fakeAgent {
	return &fakeAgent{containers: map[string]*agent.ContainerState{}, procs: map[string]chan agent.Exit{},
		created: map[string]createCall{}}
}

// errAgent is what a failing fake agent returns.
var errAgent = errors.New("fake agent failure")

// failOn makes method fail with errAgent.
func (a *fakeAgent) failOn(method string) { a.FailOn(method, errAgent) }

func (a *fakeAgent) status(id string) agent.ContainerStatus {
	a.mu.Lock()
	defer a.mu.Unlock()
	if c, ok := a.containers[id]; ok {
		return c.Status
	}
	return protocol.ContainerState_UNKNOWN
}

// require records a call of method on container id and returns the
// container if it is in state want (any state for UNKNOWN); the caller holds
// a.mu.
func (a *fakeAgent) require(want agent.ContainerStatus, method, id string, args ...any) (*agent.ContainerState, error) {
	if err := a.Record(method, append([]any{id}, args...)...); err != nil {
		return nil, err
	}
	c, ok := a.containers[id]
	if !ok {
		return nil, fmt.Errorf("fake agent: no container %s", id)
	}
	if want != protocol.ContainerState_UNKNOWN && c.Status != want {
		return nil, fmt.Errorf("fake agent: %s %s: it is %s", method, id, c.Status)
	}
	return c, nil
}

func procKey(id, execID string) string { return id + "/" + execID }

// end makes process id/execID exit with st, once.
func (a *fakeAgent) end(id, execID string, st agent.Exit) {
	ch, ok := a.procs[procKey(id, execID)]
	if !ok {
		return
	}
	select {
	case ch <- st:
	default:
	}
	if execID == "" {
		if c, ok := a.containers[id]; ok {
			c.Status = agent.ContainerStopped
		}
	}
}

func (a *fakeAgent) CreateContainer(ctx context.Context, id string, spec *specs.Spec, rootfs string, join map[specs.LinuxNamespaceType]string, storages []agent.Storage, devices []agent.DeviceMapping) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if err := a.Record("CreateContainer", id, rootfs); err != nil {
		return err
	}
	if _, ok := a.containers[id]; ok {
		return fmt.Errorf("fake agent: container %s exists", id)
	}
	a.containers[id] = &agent.ContainerState{Status: agent.ContainerCreated, Pid: 1, Created: time.Now()}
	a.procs[procKey(id, "")] = make(chan agent.Exit, 1)
	a.created[id] = createCall{spec: spec, rootfs: rootfs, join: join}
	return nil
}

func (a *fakeAgent) StartContainer(ctx context.Context, id string) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	c, err := a.require(agent.ContainerCreated, "StartContainer", id)
	if err != nil {
		return err
	}
	c.Status = agent.ContainerRunning
	return nil
}

func (a *fakeAgent) StateContainer(ctx context.Context, id string) (agent.ContainerState, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	c, err := a.require(protocol.ContainerState_UNKNOWN, "StateContainer", id)
	if err != nil {
		return agent.ContainerState{}, err
	}
	return *c, nil
}

func (a *fakeAgent) setStatus(method, id string, from, to agent.ContainerStatus) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	c, err := a.require(from, method, id)
	if err != nil {
		return err
	}
	c.Status = to
	return nil
}

func (a *fakeAgent) PauseContainer(ctx context.Context, id string) error {
	return a.setStatus("PauseContainer", id, agent.ContainerRunning, agent.ContainerPaused)
}

func (a *fakeAgent) ResumeContainer(ctx context.Context, id string) error {
	return a.setStatus("ResumeContainer", id, agent.ContainerPaused, agent.ContainerRunning)
}

func (a *fakeAgent) UpdateContainer(ctx context.Context, id string, r *specs.LinuxResources) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.Record("UpdateContainer", id)
}

func (a *fakeAgent) StatsContainer(ctx context.Context, id string) (*agent.Stats, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if err := a.Record("StatsContainer", id); err != nil {
		return nil, err
	}
	return &agent.Stats{}, nil
}

func (a *fakeAgent) ListProcesses(ctx context.Context, id string) ([]agent.ProcessInfo, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if err := a.Record("ListProcesses", id); err != nil {
		return nil, err
	}
	return []agent.ProcessInfo{{Pid: 1}}, nil
}

func (a *fakeAgent) RemoveContainer(ctx context.Context, id string, force bool) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if err := a.Record("RemoveContainer", id, force); err != nil {
		return err
	}
	a.end(id, "", agent.Exit{Code: 137, Signal: 9})
	delete(a.containers, id)
	return nil
}

func (a *fakeAgent) ExecProcess(ctx context.Context, id, execID string, p *specs.Process) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if _, err := a.require(agent.ContainerRunning, "ExecProcess", id, execID, p.Args, p.Env, p.Cwd); err != nil {
		return err
	}
	a.procs[procKey(id, execID)] = make(chan agent.Exit, 1)
	return nil
}

func (a *fakeAgent) SignalProcess(ctx context.Context, id, execID string, sig uint32, all bool) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if err := a.Record("SignalProcess", id, execID, syscall.Signal(sig), all); err != nil {
		return err
	}
	if _, ok := a.procs[procKey(id, execID)]; !ok {
		return fmt.Errorf("fake agent: no process %s", procKey(id, execID))
	}
	if syscall.Signal(sig) == syscall.SIGTERM && a.ignoreTerm {
		return nil
	}
	a.end(id, execID, agent.Exit{Code: 128 + int(sig), Signal: int(sig), ExitedAt: time.Now()})
	return nil
}

func (a *fakeAgent) WaitProcess(ctx context.Context, id, execID string) (agent.Exit, error) {
	a.mu.Lock()
	err := a.Record("WaitProcess", id, execID)
	ch, ok := a.procs[procKey(id, execID)]
	a.mu.Unlock()
	if err != nil {
		return agent.Exit{}, err
	}
	if !ok {
		return agent.Exit{}, fmt.Errorf("fake agent: no process %s", procKey(id, execID))
	}
	select {
	case st := <-ch:
		ch <- st // later waits see it too
		return st, nil
	case <-ctx.Done():
		return agent.Exit{}, ctx.Err()
	}
}

func (a *fakeAgent) DeleteProcess(ctx context.Context, id, execID string) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if err := a.Record("DeleteProcess", id, execID); err != nil {
		return err
	}
	delete(a.procs, procKey(id, execID))
	return nil
}

func (a *fakeAgent) ResizeTTY(ctx context.Context, id, execID string, width, height uint32) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.Record("ResizeTTY", id, execID, width, height)
}

func (a *fakeAgent) CloseStdin(ctx context.Context, id, execID string) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.Record("CloseStdin", id, execID)
}

func (a *fakeAgent) SetupNetwork(ctx context.Context, cfg network.Config) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.Record("SetupNetwork", len(cfg.Interfaces), len(cfg.Routes))
}

// The fake guest has no network beyond its loopback: it lists nothing
// and refuses changes.
func (a *fakeAgent) UpdateInterface(ctx context.Context, ifc network.Interface, _ []network.Route, _ []network.Neighbor, _ time.Duration) (network.Interface, error) {
	return network.Interface{}, fmt.Errorf("fake agent: no interface %s", ifc.Name)
}
func (a *fakeAgent) ListInterfaces(ctx context.Context) ([]network.Interface, error) { return nil, nil }
func (a *fakeAgent) UpdateRoutes(ctx context.Context, rs []network.Route) ([]network.Route, error) {
	return nil, fmt.Errorf("fake agent: no interfaces for %d routes", len(rs))
}
func (a *fakeAgent) ListRoutes(ctx context.Context) ([]network.Route, error) { return nil, nil }

// OnlineResources reports what the fake VM has.
func (a *fakeAgent) OnlineResources(ctx context.Context, vcpus uint32, memBytes uint64, wait time.Duration) (agent.GuestResources, error) {
	if err := a.Record("OnlineResources", vcpus); err != nil {
		return agent.GuestResources{}, err
	}
	sz, _ := a.vm.sized()
	return agent.GuestResources{OnlineCPUs: sz.VCPUs, MemoryBytes: uint64(sz.MemoryMiB) << 20}, nil
}

// OpenStream returns the host's end of a stream whose guest end closes at
// once: output streams read end of file.
func (a *fakeAgent) OpenStream(ctx context.Context, h protocol.StreamHeader) (net.Conn, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if err := a.Record("OpenStream", h.ContainerID, h.ExecID, h.Stream); err != nil {
		return nil, err
	}
	host, guest := net.Pipe()
	guest.Close()
	return host, nil
}

// DialPort answers as a guest where nothing listens.
func (a *fakeAgent) DialPort(ctx context.Context, family byte, port uint16) (*protocol.PortStream, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if err := a.Record("DialPort", family, port); err != nil {
		return nil, err
	}
	return nil, fmt.Errorf("fake agent: port %d: %w", port, syscall.ECONNREFUSED)
}

// fakeVirtiofsd writes a stand-in for virtiofsd: a shell that creates the
// socket file virtiofsd would, keeps its command line (which names the
// socket, as LoadVirtiofsd checks) and blocks without a child process
// until it is killed.
func fakeVirtiofsd(t *testing.T) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "virtiofsd")
	script := `#!/bin/sh
for a; do
	case $a in --socket-path=*) sock=${a#--socket-path=} ;; esac
done
mkfifo "$sock.wait" && : >"$sock" || exit 1
exec 3<>"$sock.wait"
read -r _ <&3
`
	if err := os.WriteFile(p, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

// unitRuntime is a Runtime with a private state directory whose VMs are
// fakes; again returns another Runtime on the same directory and VMs, as
// another process would have.
type unitRuntime struct {
	*Runtime
	vms  *fakeVMM
	opts Options
}

func newUnitRuntime(t *testing.T) *unitRuntime {
	t.Helper()
	needRoot(t) // the shared tree is a mount
	dir := t.TempDir()
	t.Cleanup(func() { storage.RemoveUnmounted(dir) })
	u := &unitRuntime{vms: newFakeVMM(), opts: Options{StateDir: dir, DataDir: dir, Virtiofsd: fakeVirtiofsd(t)}}
	u.Runtime = u.again(t)
	t.Cleanup(func() {
		// Whatever a failed test left: the sandboxes' file servers.
		for _, pid := range testutil.ProcessesMentioning(dir) {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	})
	return u
}

func (u *unitRuntime) again(t *testing.T) *Runtime {
	t.Helper()
	r, err := New(u.opts)
	if err != nil {
		t.Fatal(err)
	}
	r.vmm = u.vms
	return r
}

// unitBundle is a bundle directory with an empty rootfs and the spec of a
// container running args.
func unitBundle(t *testing.T, args ...string) (string, *specs.Spec) {
	t.Helper()
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, "rootfs"), 0o755); err != nil {
		t.Fatal(err)
	}
	return dir, specutil.Default(args...)
}

// unitSandboxConfig is sandbox id with one container of the same id.
func unitSandboxConfig(t *testing.T, id string) SandboxConfig {
	b, spec := unitBundle(t, "sh")
	return SandboxConfig{
		ID: id, VM: VMConfig{Kernel: "/fake/vmlinux", Initrd: "/fake/initrd"},
		Annotations: map[string]string{"a": "b"},
		Containers:  []ContainerConfig{{ID: id, Bundle: b, Spec: spec}},
	}
}

// running is sandbox id of u, created and started with its container,
// deleted when the test ends; and its VM.
func (u *unitRuntime) running(t *testing.T, id string) (*Sandbox, *fakeVM) {
	t.Helper()
	sb, err := u.RunSandbox(context.Background(), unitSandboxConfig(t, id))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sb.Delete(context.Background()) })
	return sb, u.vms.vm(id)
}
