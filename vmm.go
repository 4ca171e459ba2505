package cocoon

import (
	"context"
	"net"
	"time"

	"github.com/cocoon-runtime/cocoon/agent/protocol"
	"github.com/cocoon-runtime/cocoon/hypervisor"
	"github.com/cocoon-runtime/cocoon/internal/agent"
	"github.com/cocoon-runtime/cocoon/internal/network"
	"github.com/cocoon-runtime/cocoon/internal/vm"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// The boundaries below the sandbox code, as it uses them: the VMs (vmm,
// sandboxVM) and the guest agent in each (guestAgent). Package vm, the
// template factory and agent.Client are behind them in production; unit
// tests put fakes there, so that the lifecycle, its persisted state and
// its error paths are tested without booting a VM.

// vmm starts a runtime's sandbox VMs, re-attaches to them and removes
// them.
type vmm interface {
	// Start boots VM id and returns once its agent answers; on error
	// nothing of the VM is left.
	Start(ctx context.Context, id string, cfg hypervisor.Config, bootTimeout time.Duration) (sandboxVM, error)
	// Open re-attaches to VM id, started by this or another process. When
	// its agent cannot be reached it returns the error together with a VM
	// still fit for Stop.
	Open(ctx context.Context, id string) (sandboxVM, error)
	// Remove stops and removes VM id from what is on disk, however far
	// its start got; a VM that does not exist is not an error.
	Remove(ctx context.Context, id string) error
}

// sandboxVM is one running sandbox VM.
type sandboxVM interface {
	// Agent is the VM's connected agent, nil when it has none.
	Agent() guestAgent
	// PIDs are the VM's host processes.
	PIDs() []int
	// Exited is closed when the VM's hypervisor exits.
	Exited() <-chan struct{}
	// Kill stops the VM at once, without asking the guest.
	Kill(ctx context.Context) error
	Pause(ctx context.Context) error
	Resume(ctx context.Context) error
	// Stop powers the guest off and removes every host resource of the VM.
	Stop(ctx context.Context) error
	// Close releases this process's connections and leaves the VM running.
	Close() error
	// AddDevice and RemoveDevice hot-plug a device into the running VM
	// and unplug it (see hypervisor.Hypervisor).
	AddDevice(ctx context.Context, dev hypervisor.Device) error
	RemoveDevice(ctx context.Context, dev hypervisor.Device) error
	// ResizeVCPUs and ResizeMemory hot-plug or unplug vCPUs and memory
	// (see hypervisor.Hypervisor).
	ResizeVCPUs(ctx context.Context, vcpus uint32) (uint32, error)
	ResizeMemory(ctx context.Context, memMiB uint32) (uint32, error)
}

// guestAgent is the guest agent as the sandbox and container code calls
// it (see agent.Client).
type guestAgent interface {
	CreateContainer(ctx context.Context, id string, spec *specs.Spec, rootfs string, join map[specs.LinuxNamespaceType]string, storages []agent.Storage, devices []agent.DeviceMapping) error
	StartContainer(ctx context.Context, id string) error
	StateContainer(ctx context.Context, id string) (agent.ContainerState, error)
	PauseContainer(ctx context.Context, id string) error
	ResumeContainer(ctx context.Context, id string) error
	UpdateContainer(ctx context.Context, id string, r *specs.LinuxResources) error
	StatsContainer(ctx context.Context, id string) (*agent.Stats, error)
	ListProcesses(ctx context.Context, id string) ([]agent.ProcessInfo, error)
	RemoveContainer(ctx context.Context, id string, force bool) error
	ExecProcess(ctx context.Context, id, execID string, p *specs.Process) error
	SignalProcess(ctx context.Context, id, execID string, sig uint32, all bool) error
	WaitProcess(ctx context.Context, id, execID string) (agent.Exit, error)
	DeleteProcess(ctx context.Context, id, execID string) error
	ResizeTTY(ctx context.Context, id, execID string, width, height uint32) error
	CloseStdin(ctx context.Context, id, execID string) error
	OpenStream(ctx context.Context, h protocol.StreamHeader) (net.Conn, error)
	DialPort(ctx context.Context, family byte, port uint16) (*protocol.PortStream, error)
	SetupNetwork(ctx context.Context, cfg network.Config) error
	UpdateInterface(ctx context.Context, ifc network.Interface, routes []network.Route, neighs []network.Neighbor, wait time.Duration) (network.Interface, error)
	ListInterfaces(ctx context.Context) ([]network.Interface, error)
	UpdateRoutes(ctx context.Context, routes []network.Route) ([]network.Route, error)
	ListRoutes(ctx context.Context) ([]network.Route, error)
	OnlineResources(ctx context.Context, vcpus uint32, memBytes uint64, wait time.Duration) (agent.GuestResources, error)
}

var _ guestAgent = (*agent.Client)(nil)

// vms is the runtime's vmm: package vm, or the template factory when the
// runtime makes VMs from templates.
type vms struct{ r *Runtime }

func (m vms) Start(ctx context.Context, id string, cfg hypervisor.Config, bootTimeout time.Duration) (sandboxVM, error) {
	var v *vm.VM
	var err error
	// A template's VM was saved without the pod's NICs, and QEMU cannot
	// restore a VM whose devices differ from the saved one's: a VM with
	// network devices boots without a template.
	if o := m.r.vmOptions(bootTimeout); m.r.fromTemplate(cfg) {
		v, err = m.r.factory(o).VM(ctx, id, cfg)
	} else {
		v, err = vm.Start(ctx, id, cfg, o)
	}
	if err != nil {
		return nil, err
	}
	return bootedVM{v}, nil
}

// fromTemplate reports whether a VM of cfg is restored from a template.
func (r *Runtime) fromTemplate(cfg hypervisor.Config) bool {
	return r.opts.VMTemplates && len(cfg.NetDevices) == 0
}

func (m vms) Open(ctx context.Context, id string) (sandboxVM, error) {
	v, err := vm.Open(ctx, m.r.vmStateDir(), id, m.r.vmOptions(0))
	if v == nil {
		return nil, err
	}
	return bootedVM{v}, err
}

func (m vms) Remove(ctx context.Context, id string) error {
	return vm.Remove(ctx, m.r.vmStateDir(), id, m.r.vmOptions(0))
}

// bootedVM is a *vm.VM as a sandboxVM.
type bootedVM struct{ v *vm.VM }

func (b bootedVM) Agent() guestAgent {
	if b.v.Agent == nil {
		return nil
	}
	return b.v.Agent
}
func (b bootedVM) PIDs() []int                      { return b.v.HV.PIDs() }
func (b bootedVM) Exited() <-chan struct{}          { return b.v.HV.Wait() }
func (b bootedVM) Kill(ctx context.Context) error   { return b.v.HV.StopVM(ctx) }
func (b bootedVM) Pause(ctx context.Context) error  { return b.v.Pause(ctx) }
func (b bootedVM) Resume(ctx context.Context) error { return b.v.Resume(ctx) }
func (b bootedVM) Stop(ctx context.Context) error   { return b.v.Stop(ctx) }
func (b bootedVM) Close() error                     { return b.v.Close() }
func (b bootedVM) AddDevice(ctx context.Context, dev hypervisor.Device) error {
	return b.v.HV.AddDevice(ctx, dev)
}
func (b bootedVM) RemoveDevice(ctx context.Context, dev hypervisor.Device) error {
	return b.v.HV.RemoveDevice(ctx, dev)
}
func (b bootedVM) ResizeVCPUs(ctx context.Context, vcpus uint32) (uint32, error) {
	return b.v.HV.ResizeVCPUs(ctx, vcpus)
}
func (b bootedVM) ResizeMemory(ctx context.Context, memMiB uint32) (uint32, error) {
	return b.v.HV.ResizeMemory(ctx, memMiB)
}
