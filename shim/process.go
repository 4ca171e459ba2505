package shim

import (
	"fmt"
	"sync"
	"syscall"
	"time"

	"github.com/cocoon-runtime/cocoon"
	"github.com/containerd/containerd/api/types/task"
	"github.com/containerd/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// procState is where a process is in its life. The only moves are those
// allowed by canMove, so an illegal transition cannot be written.
type procState int

const (
	stateCreated procState = iota
	stateRunning
	statePaused
	stateStopped
	stateDeleted
)

func (s procState) String() string {
	return [...]string{"created", "running", "paused", "stopped", "deleted"}[s]
}

// canMove reports whether a process may go from one state to another.
func canMove(from, to procState) bool {
	switch from {
	case stateCreated:
		return to == stateRunning || to == stateStopped || to == stateDeleted
	case stateRunning:
		return to == statePaused || to == stateStopped
	case statePaused:
		return to == stateRunning || to == stateStopped
	case stateStopped:
		return to == stateDeleted
	}
	return false
}

func (s procState) taskStatus() task.Status {
	switch s {
	case stateCreated:
		return task.Status_CREATED
	case stateRunning:
		return task.Status_RUNNING
	case statePaused:
		return task.Status_PAUSED
	}
	return task.Status_STOPPED
}

// process is a task's init process (execID "") or an exec'd one.
type process struct {
	containerID, execID string
	stdio               stdio
	spec                *specs.Process // exec'd processes only

	mu    sync.Mutex
	state procState
	exit  cocoon.ExitStatus
	pipes *pipes
	done  chan struct{} // closed on exit
}

func newProcess(containerID, execID string, sio stdio, spec *specs.Process) *process {
	return &process{containerID: containerID, execID: execID, stdio: sio, spec: spec, done: make(chan struct{})}
}

// move makes a transition, failing with a precondition error if the
// process's state forbids it.
func (p *process) move(to procState) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.moveLocked(to)
}

func (p *process) moveLocked(to procState) error {
	if !canMove(p.state, to) {
		return fmt.Errorf("process %s is %s, cannot become %s: %w", p.name(), p.state, to, errdefs.ErrFailedPrecondition)
	}
	p.state = to
	return nil
}

func (p *process) current() procState {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.state
}

// setExited records the exit status once; it reports whether this call
// did (a process ends once, whether by its exit or by its VM's death).
func (p *process) setExited(st cocoon.ExitStatus) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.state == stateStopped || p.state == stateDeleted {
		return false
	}
	if st.ExitedAt.IsZero() {
		st.ExitedAt = time.Now()
	}
	p.state = stateStopped
	p.exit = st
	close(p.done)
	return true
}

// signalled is the exit status of a process that sig ended.
func signalled(sig syscall.Signal) cocoon.ExitStatus {
	return cocoon.ExitStatus{Code: 128 + int(sig), Signal: int(sig)}
}

func (p *process) exitStatus() cocoon.ExitStatus {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.exit
}

func (p *process) name() string {
	if p.execID == "" {
		return p.containerID
	}
	return p.containerID + "/" + p.execID
}

// container is one task: a container in the pod's VM.
type container struct {
	id, bundle string
	// rootfsMounted says the shim mounted containerd's rootfs in the
	// bundle and must unmount it.
	rootfsMounted bool
	init          *process
	execs         map[string]*process
}

// process returns the init process or exec execID.
func (c *container) process(execID string) (*process, error) {
	if execID == "" {
		return c.init, nil
	}
	p, ok := c.execs[execID]
	if !ok {
		return nil, fmt.Errorf("exec %s in task %s: %w", execID, c.id, errdefs.ErrNotFound)
	}
	return p, nil
}
