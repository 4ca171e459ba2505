// Package cocoon runs OCI containers inside lightweight virtual machines.
//
// A sandbox is one VM with its own guest kernel; it runs one or more
// containers, each from an OCI bundle on the host. A Runtime creates,
// finds and lists sandboxes; a Sandbox handle operates on one of them and
// on its containers and processes:
//
//	rt, _ := cocoon.New(cocoon.Options{})
//	sb, _ := rt.RunSandbox(ctx, cocoon.SandboxConfig{
//		ID:         "pod1",
//		Containers: []cocoon.ContainerConfig{{ID: "web", Bundle: "/srv/bundles/web"}},
//	})
//	stdin, stdout, stderr, _ := sb.IOStream(ctx, "web", "")
//	...
//	status, _ := sb.WaitProcess(ctx, "web", "")
//	sb.Delete(ctx)
//
// State is saved under Options.StateDir, so a Runtime in another process
// finds the sandbox with FetchSandbox and acts on it; the VM, its agent and
// its file server keep running when the process that created them exits.
package cocoon

import (
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"time"

	"github.com/cocoon-runtime/cocoon/hypervisor"
	"github.com/cocoon-runtime/cocoon/internal/agent"
	"github.com/cocoon-runtime/cocoon/internal/layout"
	"github.com/cocoon-runtime/cocoon/internal/persist"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// Options configure a Runtime. The zero value selects the defaults.
type Options struct {
	// StateDir holds runtime state: sandbox documents, VM sockets, shared
	// directories. Default /run/cocoon.
	StateDir string
	// DataDir holds guest images and caches. Default /var/lib/cocoon.
	DataDir string
	// Virtiofsd is the virtiofsd binary; empty finds QEMU's.
	Virtiofsd string
	// VMTemplates makes sandbox VMs from templates (package factory)
	// instead of booting each: the first sandbox of a configuration boots
	// and saves a template under StateDir/factory, later ones restore a
	// copy of it in a fraction of a boot.
	VMTemplates bool
	// TemplateLimit is the most templates kept (0: factory's default);
	// TemplateMemoryMiB sizes the tmpfs under StateDir/mem that holds
	// template and restored VMs' RAM (0: factory's default).
	TemplateLimit     int
	TemplateMemoryMiB uint32
	// DANConfDir is where directly attachable network files are: a
	// sandbox whose <DANConfDir>/<ID>.json exists gets exactly the host
	// devices that file lists (see package dan's format), and its netns
	// is not scanned. "" turns DAN off.
	DANConfDir string
	// Log receives the runtime's messages; nil discards them.
	Log *slog.Logger
}

// Runtime manages the sandboxes under one state directory. It holds no
// connection of its own and is safe for concurrent use.
type Runtime struct {
	opts  Options
	log   *slog.Logger
	store *persist.Store
	// vmm starts and finds the sandboxes' VMs (see vmm.go).
	vmm vmm
}

// New returns a Runtime.
func New(opts Options) (*Runtime, error) {
	if opts.StateDir == "" {
		opts.StateDir = layout.StateDir
	}
	if opts.DataDir == "" {
		opts.DataDir = layout.DataDir
	}
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	store, err := persist.New(filepath.Join(opts.StateDir, "state"))
	if err != nil {
		return nil, err
	}
	r := &Runtime{opts: opts, log: opts.Log, store: store}
	r.vmm = vms{r}
	return r, nil
}

// Errors callers branch on, wrapped with the operation and object.
var (
	ErrNotFound      = errors.New("not found")
	ErrExists        = errors.New("already exists")
	ErrInvalidConfig = errors.New("invalid configuration")
	// ErrTooBig (with ErrInvalidConfig) refuses a sandbox or container
	// that asks for more memory than its VM may have
	// (VMConfig.MaxMemoryMiB).
	ErrTooBig = errors.New("beyond the most a VM may have")
	// ErrState is returned for an operation the object's state forbids,
	// such as starting a stopped sandbox.
	ErrState = errors.New("invalid state for operation")
	// ErrGuestDied is wrapped by the error of an operation that failed
	// because the sandbox's VM (or its file server) died.
	ErrGuestDied = agent.ErrGuestDied
)

// State is the state of a sandbox or a container.
type State string

// States.
const (
	StateReady   State = "ready" // sandbox booted / container created, nothing started
	StateRunning State = "running"
	StatePaused  State = "paused"
	StateStopped State = "stopped"
	// StateCreating is a sandbox whose creation has not finished: its
	// creator holds its lock, or died (then Delete or GC removes it).
	StateCreating State = "creating"
	// StateUnknown is reported for a sandbox whose guest does not answer.
	StateUnknown State = "unknown"
)

// OCI is the state's name in the OCI runtime spec's state, as an OCI
// runtime's "state" command reports it: a created container is
// "created", and a stopped or unknown one "stopped".
func (s State) OCI() specs.ContainerState {
	switch s {
	case StateCreating:
		return specs.StateCreating
	case StateReady:
		return specs.StateCreated
	case StateRunning:
		return specs.StateRunning
	case StatePaused:
		return "paused" // runc's, which the spec does not name
	}
	return specs.StateStopped
}

// validateID checks a sandbox, container or exec ID with the VM's rule (a
// sandbox ID names its VM): 1-64 letters, digits, '_', '.', '-', not
// starting with punctuation; so an ID is always safe as a path component.
func validateID(kind, id string) error {
	if err := hypervisor.ValidateID(id); err != nil {
		return fmt.Errorf("%s id: %w: %w", kind, ErrInvalidConfig, err)
	}
	return nil
}

// ExitStatus is how a process ended.
type ExitStatus struct {
	// Code is the exit code, or 128+signal when a signal killed it.
	Code int
	// Signal is the signal that killed it, 0 if it exited.
	Signal int
	// OOMKilled reports that the kernel's OOM killer ended it.
	OOMKilled bool
	ExitedAt  time.Time
}
