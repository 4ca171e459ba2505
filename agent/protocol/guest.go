package protocol

import "strconv"

// The contracts between the host and the guest outside the ttrpc
// services: how the host describes the VM to the agent and where each
// finds what the other provides. Each is defined here only.

// Kernel command-line parameters the host sets and the agent reads.
const (
	// ParamTransport names the agent channel: TransportVsock, or
	// virtio-serial when absent.
	ParamTransport = "cocoon.transport"
	// ParamAgentPorts is how many virtio-serial ports the agent serves
	// (1 to MaxAgentPorts).
	ParamAgentPorts = "cocoon.agent_ports"
	// ParamHostname is the VM's hostname until a container sets its own.
	ParamHostname = "cocoon.hostname"
	// ParamDebug, "1", makes the agent log at debug level.
	ParamDebug = "cocoon.debug"
)

// TransportVsock is ParamTransport's value for an agent served over vsock.
const TransportVsock = "vsock"

// MaxAgentPorts bounds the agent's virtio-serial ports: a virtio-serial
// device has at most 32, one of them the console's.
const MaxAgentPorts = 31

// SerialPortPrefix starts the name of each virtio-serial port of the
// agent; SerialPortName is the whole name.
const SerialPortPrefix = "agent."

// SerialPortName is the name of the agent's virtio-serial port i.
func SerialPortName(i int) string { return SerialPortPrefix + strconv.Itoa(i) }

// SharedFSTag is the virtio-fs tag of the directory the host shares with
// the guest: containers' root filesystems and the sources of their binds
// (Storage_SHARED) are below it.
const SharedFSTag = "cocoon"

// ModulesTree is the directory, below the shared directory, that holds
// the guest image's on-demand kernel modules (a read-only bind of the
// image's module tree, absent when the image has none). The guest loads
// from it when its kernel asks for a module.
const ModulesTree = "_modules"

// ModprobeHelper is the path, in the guest's initramfs, of a link to the
// agent binary under which it serves the kernel's module requests (see
// internal/guest/modprobe).
const ModprobeHelper = "/sbin/cocoon-modprobe"

// VsockPort is the vsock port the agent listens on when served over
// vsock.
const VsockPort = 1024

// EphemeralNameLen is the length of an EPHEMERAL storage's name: that many
// lowercase hex digits, which the host derives from the volume's host
// path and the guest checks before making a directory of it.
const EphemeralNameLen = 16
