// Package hypervisor defines the contract between Cocoon and the virtual
// machine monitors that run its sandboxes.
//
// A driver (such as the QEMU driver, in the qemu package below this one)
// implements Hypervisor for one VMM. The sandbox layer consumes it and
// never learns which VMM it drives.
package hypervisor

import (
	"context"
	"errors"
	"fmt"
	"os"
	"regexp"
	"strings"
	"time"
)

// Hypervisor drives one virtual machine through its whole life.
//
// A Hypervisor value is bound to a single VM. CreateVM prepares the VM,
// StartVM launches it and StopVM shuts it down; Cleanup removes every host
// resource the VM used and is safe to call at any point, including after the
// VMM process died.
type Hypervisor interface {
	// CreateVM validates cfg and prepares (but does not launch) the VM
	// identified by id.
	CreateVM(ctx context.Context, id string, cfg Config) error
	// StartVM launches the VM and returns once the VMM is running. It does
	// not wait for the guest to boot.
	StartVM(ctx context.Context) error
	// StopVM shuts the VM down, forcefully if the VMM does not exit within
	// the context's deadline, and releases its resources.
	StopVM(ctx context.Context) error
	// PauseVM stops the guest's vCPUs.
	PauseVM(ctx context.Context) error
	// ResumeVM restarts the guest's vCPUs after PauseVM.
	ResumeVM(ctx context.Context) error
	// SaveVM writes the VM's state to path so RestoreVM can resume it.
	SaveVM(ctx context.Context, path string) error
	// RestoreVM launches a VM from state written by SaveVM.
	RestoreVM(ctx context.Context, path string) error

	// AddDevice hot-plugs dev into the running VM.
	AddDevice(ctx context.Context, dev Device) error
	// RemoveDevice hot-unplugs a device added with AddDevice.
	RemoveDevice(ctx context.Context, dev Device) error
	// ResizeVCPUs changes the number of online vCPUs and reports the new count.
	ResizeVCPUs(ctx context.Context, vcpus uint32) (uint32, error)
	// ResizeMemory changes guest memory and reports the new size in MiB.
	ResizeMemory(ctx context.Context, memMiB uint32) (uint32, error)

	// Capabilities reports what this VM supports.
	Capabilities(ctx context.Context) Capabilities
	// PIDs reports the host processes that make up the VM (the VMM first).
	PIDs() []int
	// AgentEndpoint tells the host how to reach the guest agent.
	AgentEndpoint() AgentEndpoint
	// Wait returns a channel closed when the VMM process exits.
	Wait() <-chan struct{}
	// Status reports the VM's run state; it fails with ErrNotRunning when
	// the VMM process is not running.
	Status(ctx context.Context) (RunState, error)
	// ConsoleTail returns the last n bytes the guest printed on its
	// console, or "" where the driver keeps no console.
	ConsoleTail(n int64) string
	// ReclaimBootMemory gives back to the host what the VMM holds only
	// for the guest's boot (the pages of kernel and initrd); called once
	// the agent answered. A driver that cannot returns ErrNotSupported.
	ReclaimBootMemory() error
	// Cleanup removes every host resource of the VM: processes, sockets,
	// state files. It is idempotent.
	Cleanup(ctx context.Context) error
	// Close releases this process's handles on the VM (connections,
	// process handles) and leaves it running.
	Close() error
}

// RunState is a VM's run state as the core branches on it.
type RunState string

// Run states.
const (
	StateRunning RunState = "running"
	StatePaused  RunState = "paused"
	// StateShutdown: the guest powered off or was shut down.
	StateShutdown RunState = "shutdown"
	// StateCrashed: the guest cannot go on (a panic, an emulation or I/O
	// error of the VMM).
	StateCrashed RunState = "crashed"
	// StateOther is any state between those (starting, migrating).
	StateOther RunState = "other"
)

var validID = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,63}$`)

// ErrInvalidID is wrapped by ValidateID's error.
var ErrInvalidID = errors.New("invalid id")

// ValidateID reports whether id can name a VM (and a sandbox): 1-64
// characters of letters, digits, '_', '.' and '-', not starting with a
// punctuation character and without "..". Every driver's files and
// sockets are named by it.
func ValidateID(id string) error {
	if !validID.MatchString(id) || strings.Contains(id, "..") {
		return fmt.Errorf("%w %q: use 1-64 letters, digits, '_', '.', '-'", ErrInvalidID, id)
	}
	return nil
}

// Config describes a VM to launch.
type Config struct {
	// Path of the VMM binary; empty selects the driver's default.
	Path string
	// Kernel is the guest kernel (an ELF with a PVH note or a bzImage).
	Kernel string
	// Initrd is the guest initramfs holding the agent as /init.
	Initrd string
	// KernelParams are appended to the driver's tuned command line.
	KernelParams []string
	// VCPUs is the number of vCPUs at boot; MaxVCPUs the hotplug ceiling.
	VCPUs, MaxVCPUs uint32
	// MemoryMiB is guest RAM at boot; MaxMemoryMiB the hotplug ceiling.
	MemoryMiB, MaxMemoryMiB uint32
	// MachineType selects the VMM machine model ("q35", "microvm");
	// empty selects the driver's default.
	MachineType string
	// Accelerator is "auto", "kvm" or "tcg".
	Accelerator Accelerator
	// AgentTransport selects the agent channel; TransportAuto picks vsock
	// when the host supports it and virtio-serial otherwise.
	AgentTransport Transport
	// SharedFSSocket, when set, is the vhost-user socket of a running
	// virtiofsd; the guest sees its directory as virtio-fs tag protocol.SharedFSTag.
	SharedFSSocket string
	// StateDir is the parent of the per-VM runtime directory.
	StateDir string
	// MemoryFile, when set, backs guest RAM with this file (mapped
	// shared, on a tmpfs) instead of anonymous memory: a VM saved with
	// SaveVM keeps its RAM there, and one restored with RestoreVM starts
	// from a copy of it.
	MemoryFile string
	// GenerationID adds a VM generation ID device: a VM restored from a
	// saved state gets a new ID, and the guest reseeds its random number
	// generator (clones of one template must not share its state).
	GenerationID bool
	// HotplugSlots is the number of PCIe root ports to pre-create for
	// device hotplug (q35 only).
	HotplugSlots int
	// Debug keeps the guest kernel verbose and the console log.
	Debug bool
	// NetDevices are the network devices the VM boots with, in order.
	NetDevices []NetDevice
}

// NetDevice is a network device the VM boots with: a tap the host opened
// (in the pod's network namespace) and hands to the VMM as files.
type NetDevice struct {
	// ID is unique within the VM.
	ID string
	// Taps are the open tap device, one file a queue pair: more than one
	// makes the NIC multi-queue. The VMM inherits them. They are not
	// persisted: the caller closes them once the VM started.
	Taps []*os.File `json:"-"`
	// VhostNet are open /dev/vhost-net files, one a tap, for the kernel
	// to move the NIC's frames; none for the VMM's userspace path.
	VhostNet []*os.File `json:"-"`
	// MAC is the guest NIC's MAC address.
	MAC string
	// QueueSize is the NIC's receive ring size (a power of two from 256
	// to 1024); 0 for the VMM's default.
	QueueSize int
}

// Accelerator selects how the VMM executes guest code.
type Accelerator string

// Accelerators.
const (
	AccelAuto Accelerator = "auto" // KVM if a probe shows it works, else TCG
	AccelKVM  Accelerator = "kvm"
	AccelTCG  Accelerator = "tcg"
)

// AccelProbe configures a driver's choice of accelerator (see
// drivers.Driver.ResolveAccel).
type AccelProbe struct {
	// Binary is the VMM binary: a path, or a name looked up in PATH; ""
	// is the driver's default.
	Binary string
	// Kernel is a guest kernel the probe may boot; without one, auto
	// picks TCG without probing KVM.
	Kernel string
	// CacheDir holds the driver's probe cache; "" disables caching.
	CacheDir string
}

// AccelChoice is the accelerator a driver picked and why.
type AccelChoice struct {
	// Accelerator is AccelKVM or AccelTCG, never AccelAuto.
	Accelerator Accelerator
	// Reason explains the choice for a person.
	Reason string
	// NoKernel is true when KVM was not probed for want of a guest kernel.
	NoKernel bool
	// Cached is true when the choice came from the probe cache, made at
	// CheckedAt.
	Cached    bool
	CheckedAt time.Time
}

// Transport selects the channel between host and guest agent.
type Transport string

// Transports.
const (
	TransportAuto   Transport = "auto"
	TransportSerial Transport = "virtio-serial"
	TransportVsock  Transport = "vsock"
)

// AgentEndpoint tells the host where the agent listens.
type AgentEndpoint struct {
	Transport Transport
	// Sockets are the unix sockets of the virtio-serial ports
	// (TransportSerial). Each takes one host connection at a time; a host
	// process claims a free one, so several processes can talk to the agent
	// at once.
	Sockets []string
	// CID and Port address the guest over vsock (TransportVsock).
	CID, Port uint32
}

// Capabilities reports optional features of a VM.
type Capabilities struct {
	BlockHotplug    bool
	NetHotplug      bool
	VCPUHotplug     bool
	MemoryHotplug   bool
	SharedFS        bool
	SaveRestore     bool
	MultiQueueNet   bool
	MachineType     string
	AcceleratorUsed Accelerator
}

// MaxBlockSerial bounds a block device's serial: virtio-blk shows the
// guest 20 bytes.
const MaxBlockSerial = 20

// DeviceKind names the kinds of hot-pluggable device.
type DeviceKind string

// Device kinds.
const (
	DeviceBlock DeviceKind = "block"
	DeviceNet   DeviceKind = "net"
	DeviceVFIO  DeviceKind = "vfio"
	// DeviceSharedFS is a virtio-fs device served by the vhost-user
	// socket Path, with the guest tag protocol.SharedFSTag.
	DeviceSharedFS DeviceKind = "shared-fs"
)

// Device is a device to hot-plug.
type Device struct {
	Kind DeviceKind
	// ID is unique within the VM.
	ID string
	// Path is the backing file or block device (DeviceBlock) or the
	// sysfs path of the host device (DeviceVFIO).
	Path     string
	ReadOnly bool
	// Serial is the serial number a block device shows the guest (its
	// /sys/block/<dev>/serial), by which the agent finds it; at most
	// MaxBlockSerial characters of [A-Za-z0-9_-].
	Serial string
	// Tap is the open tap device (DeviceNet), opened by the host in the
	// pod's network namespace; the VMM gets a copy, the caller keeps and
	// closes this one.
	Tap *os.File `json:"-"`
	// MAC is the guest MAC address (DeviceNet).
	MAC string
}

// Errors callers branch on.
var (
	// ErrNotSupported is returned for an operation the VM cannot perform.
	ErrNotSupported = errors.New("not supported")
	// ErrNotRunning is returned when the VMM process is not running.
	ErrNotRunning = errors.New("vm not running")
)

// ConfigError reports an invalid VM configuration.
type ConfigError struct {
	Field string
	Err   error
}

func (e *ConfigError) Error() string { return fmt.Sprintf("invalid vm config: %s: %v", e.Field, e.Err) }
func (e *ConfigError) Unwrap() error { return e.Err }

// DefaultStopTimeout bounds how long StopVM waits for a graceful shutdown
// when the caller's context has no deadline.
const DefaultStopTimeout = 5 * time.Second
