package shim

import (
	"context"
	"io"
	"syscall"

	"github.com/cocoon-runtime/cocoon"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// The library as the task service uses it: a runtime that creates the
// pod's sandbox (podRuntime) and the sandbox's container and process API
// (podSandbox). *cocoon.Runtime and *cocoon.Sandbox are behind them in
// production; unit tests put fakes there, so that the task service's
// translation, state machine, events and error mapping are tested
// without booting a VM.

// podRuntime creates the pod's sandbox and sweeps what killed shims left.
type podRuntime interface {
	CreateSandbox(ctx context.Context, cfg cocoon.SandboxConfig) (podSandbox, error)
	GC(ctx context.Context) (cocoon.GCReport, error)
}

// podSandbox is the pod's sandbox.
type podSandbox interface {
	ID() string
	Status(ctx context.Context) cocoon.SandboxStatus
	// Monitor receives an error when the sandbox's VM exits.
	Monitor() <-chan error
	Stop(ctx context.Context, force bool) error
	Delete(ctx context.Context) error
	Release() error

	CreateContainer(ctx context.Context, cfg cocoon.ContainerConfig) error
	StartContainer(ctx context.Context, id string) error
	PauseContainer(ctx context.Context, id string) error
	ResumeContainer(ctx context.Context, id string) error
	UpdateContainer(ctx context.Context, id string, r *specs.LinuxResources) error
	StatsContainer(ctx context.Context, id string) (*cocoon.ContainerStats, error)
	ProcessListContainer(ctx context.Context, id string) ([]cocoon.ProcessInfo, error)
	DeleteContainer(ctx context.Context, id string) error

	EnterContainer(ctx context.Context, id, execID string, p specs.Process) (string, error)
	IOStream(ctx context.Context, id, execID string) (stdin io.WriteCloser, stdout, stderr io.ReadCloser, err error)
	SignalProcess(ctx context.Context, id, execID string, sig syscall.Signal, all bool) error
	WinsizeProcess(ctx context.Context, id, execID string, height, width uint32) error
	WaitProcess(ctx context.Context, id, execID string) (cocoon.ExitStatus, error)
	DeleteProcess(ctx context.Context, id, execID string) error

	// ForwardLocalhost serves the pod's localhost in its netns until the
	// forwarder is closed.
	ForwardLocalhost(ctx context.Context) (*cocoon.Forwarder, error)
}

var _ podSandbox = (*cocoon.Sandbox)(nil)

// newRuntime is the library's runtime for the task service.
func newRuntime(opts cocoon.Options) (podRuntime, error) {
	rt, err := cocoon.New(opts)
	if err != nil {
		return nil, err
	}
	return libRuntime{rt}, nil
}

// libRuntime is a *cocoon.Runtime as a podRuntime.
type libRuntime struct{ *cocoon.Runtime }

func (r libRuntime) CreateSandbox(ctx context.Context, cfg cocoon.SandboxConfig) (podSandbox, error) {
	sb, err := r.Runtime.CreateSandbox(ctx, cfg)
	if err != nil {
		return nil, err
	}
	return sb, nil
}
