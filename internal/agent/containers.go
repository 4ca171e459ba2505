package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"math"
	"slices"
	"time"

	"github.com/cocoon-runtime/cocoon/agent/protocol"
	"github.com/cocoon-runtime/cocoon/internal/guesttext"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// Bounds on the process list a guest may return: its length, and the
// length of a process's command line and state.
const (
	maxProcesses    = 65536
	maxCommand      = 4096
	maxProcessState = 8
)

// DeviceMapping says that entry Index of the spec's linux.devices is the
// disk the host attached with serial Serial: the guest gives the entry,
// and the device cgroup rules naming its host numbers, the disk's.
type DeviceMapping struct {
	Index  int
	Serial string
}

// StorageKind says what a Storage is.
type StorageKind int

// Storage kinds.
const (
	// StorageShared: Path below the shared directory, with the host's
	// mounts below it at Submounts (paths relative to it).
	StorageShared StorageKind = iota
	// StorageEphemeral: a tmpfs of the guest's own named Path, of
	// SizeBytes, shared by every container of the sandbox that names it.
	StorageEphemeral
	// StorageBlock: the block device of serial Path, a file system of
	// FSType, mounted read-only when ReadOnly.
	StorageBlock
)

// Storage is where the guest finds the source of the spec's bind mount
// number Mount or, when Root, the container's root filesystem.
type Storage struct {
	Mount     int
	Root      bool
	Kind      StorageKind
	Path      string
	Submounts []string
	SizeBytes uint64
	FSType    string
	ReadOnly  bool
}

// proto is st in the agent's protocol.
func (st Storage) proto() *protocol.Storage {
	kind := protocol.Storage_SHARED
	switch st.Kind {
	case StorageEphemeral:
		kind = protocol.Storage_EPHEMERAL
	case StorageBlock:
		kind = protocol.Storage_BLOCK
	}
	return &protocol.Storage{Mount: uint32(st.Mount), Kind: kind, Path: st.Path, Submounts: st.Submounts,
		SizeBytes: st.SizeBytes, Fstype: st.FSType, Readonly: st.ReadOnly}
}

// CreateContainer asks the agent to create a container from spec, whose
// root filesystem is rootfs relative to the shared directory. join maps
// namespace types the container shares to the container whose namespace
// of that type it joins. storages say where the guest finds the sources
// of the spec's bind mounts and, for one marked Root, its root filesystem
// (rootfs is then empty); devices, which of the spec's devices are disks
// the host attached.
func (c *Client) CreateContainer(ctx context.Context, id string, spec *specs.Spec, rootfs string, join map[specs.LinuxNamespaceType]string, storages []Storage, devices []DeviceMapping) error {
	b, err := json.Marshal(spec)
	if err != nil {
		return fmt.Errorf("create container %s: %w", id, err)
	}
	req := &protocol.CreateContainerRequest{ContainerId: id, Spec: b, Rootfs: rootfs}
	for _, typ := range slices.Sorted(maps.Keys(join)) {
		req.JoinNamespaces = append(req.JoinNamespaces, &protocol.JoinNamespace{Type: string(typ), ContainerId: join[typ]})
	}
	for _, st := range storages {
		if st.Root {
			req.Root = st.proto()
			continue
		}
		req.Storages = append(req.Storages, st.proto())
	}
	for _, d := range devices {
		req.Devices = append(req.Devices, &protocol.DeviceMapping{Index: uint32(d.Index), Serial: d.Serial})
	}
	return c.call(ctx, "create container "+id, func(ctx context.Context) error {
		_, err := c.agent.CreateContainer(ctx, req)
		return err
	})
}

// StartContainer starts a created container.
func (c *Client) StartContainer(ctx context.Context, id string) error {
	return c.call(ctx, "start container "+id, func(ctx context.Context) error {
		_, err := c.agent.StartContainer(ctx, &protocol.ContainerRequest{ContainerId: id})
		return err
	})
}

// ExecProcess starts process p as execID in container id.
func (c *Client) ExecProcess(ctx context.Context, id, execID string, p *specs.Process) error {
	b, err := json.Marshal(p)
	if err != nil {
		return fmt.Errorf("exec in %s: %w", id, err)
	}
	return c.call(ctx, "exec "+execID+" in "+id, func(ctx context.Context) error {
		_, err := c.agent.ExecProcess(ctx, &protocol.ExecProcessRequest{ContainerId: id, ExecId: execID, Process: b})
		return err
	})
}

// SignalProcess signals a process (execID "" for the init process), or
// with all every process of the container.
func (c *Client) SignalProcess(ctx context.Context, id, execID string, sig uint32, all bool) error {
	return c.call(ctx, "signal "+id, func(ctx context.Context) error {
		_, err := c.agent.SignalProcess(ctx, &protocol.SignalProcessRequest{ContainerId: id, ExecId: execID, Signal: sig, All: all})
		return err
	})
}

// Exit is a process's end as the agent reported it.
type Exit struct {
	Code      int
	Signal    int
	OOMKilled bool
	ExitedAt  time.Time
}

// WaitProcess waits for a process to exit.
func (c *Client) WaitProcess(ctx context.Context, id, execID string) (Exit, error) {
	var e Exit
	err := c.call(ctx, "wait "+id, func(ctx context.Context) error {
		r, err := c.agent.WaitProcess(ctx, &protocol.ProcessRequest{ContainerId: id, ExecId: execID})
		if err != nil {
			return err
		}
		e, err = validateExit(r)
		return err
	})
	return e, err
}

// validateExit checks a guest's exit status: a code of 0 to 255 and a
// signal of 0 to 64.
func validateExit(r *protocol.ExitStatus) (Exit, error) {
	if r.Code < 0 || r.Code > 255 || r.Signal < 0 || r.Signal > 64 {
		return Exit{}, fmt.Errorf("%w: exit status %d signal %d", ErrProtocol, r.Code, r.Signal)
	}
	return Exit{Code: int(r.Code), Signal: int(r.Signal), OOMKilled: r.OomKilled, ExitedAt: time.Unix(0, r.ExitedAtUnixNano)}, nil
}

// ResizeTTY resizes a process's terminal.
func (c *Client) ResizeTTY(ctx context.Context, id, execID string, width, height uint32) error {
	return c.call(ctx, "resize "+id, func(ctx context.Context) error {
		_, err := c.agent.ResizeTTY(ctx, &protocol.ResizeTTYRequest{ContainerId: id, ExecId: execID, Width: width, Height: height})
		return err
	})
}

// CloseStdin closes a process's stdin.
func (c *Client) CloseStdin(ctx context.Context, id, execID string) error {
	return c.call(ctx, "close stdin "+id, func(ctx context.Context) error {
		_, err := c.agent.CloseStdin(ctx, &protocol.ProcessRequest{ContainerId: id, ExecId: execID})
		return err
	})
}

// ProcessInfo is one process of a container.
type ProcessInfo struct {
	Pid, PPid int
	Command   string
	State     string
}

// ListProcesses lists a container's processes.
func (c *Client) ListProcesses(ctx context.Context, id string) ([]ProcessInfo, error) {
	var out []ProcessInfo
	err := c.call(ctx, "list processes of "+id, func(ctx context.Context) error {
		r, err := c.agent.ListProcesses(ctx, &protocol.ContainerRequest{ContainerId: id})
		if err != nil {
			return err
		}
		out, err = validateProcesses(r)
		return err
	})
	return out, err
}

// validateProcesses bounds a guest's process list (maxProcesses) and
// sanitizes its strings.
func validateProcesses(r *protocol.ProcessList) ([]ProcessInfo, error) {
	if len(r.Processes) > maxProcesses {
		return nil, fmt.Errorf("%w: %d processes", ErrProtocol, len(r.Processes))
	}
	var out []ProcessInfo
	for _, p := range r.Processes {
		out = append(out, ProcessInfo{Pid: int(p.GetPid()), PPid: int(p.GetPpid()), Command: guesttext.Line(p.GetCommand(), maxCommand), State: guesttext.Line(p.GetState(), maxProcessState)})
	}
	return out, nil
}

// Stats are a container's cgroup statistics, as the guest reported them.
type Stats = protocol.ContainerStats

// StatsContainer reports a container's cgroup statistics. Figures no
// kernel could report fail the call with ErrProtocol (see checkStats).
func (c *Client) StatsContainer(ctx context.Context, id string) (*Stats, error) {
	var s *Stats
	err := c.call(ctx, "stats of "+id, func(ctx context.Context) error {
		var err error
		s, err = c.agent.StatsContainer(ctx, &protocol.ContainerRequest{ContainerId: id})
		if err != nil {
			return err
		}
		return checkStats(s)
	})
	if err != nil {
		return nil, err
	}
	return s, nil
}

// maxPids is the kernel's PID_MAX_LIMIT: no cgroup holds more tasks.
const maxPids = 4 << 20

// checkStats rejects statistics no kernel reports: they come from a broken
// or lying guest, and a caller gets an error rather than numbers clamped
// into plausibility (which would be made up). Only impossible values are
// refused, never ones a cgroup can show for a moment: usage may exceed
// memory.max a little (charges the kernel must not fail, or memory.max
// just lowered below the usage) and pids.current may exceed pids.max
// (lowering pids.max kills nothing).
func checkStats(s *Stats) error {
	// Every figure is a count or a size the consumers (CRI, cgroup
	// metrics) take as signed: none reaches 2^63 (292 years of CPU time).
	var bad error
	s.ProtoReflect().Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		if fd.Kind() == protoreflect.Uint64Kind && v.Uint() > math.MaxInt64 {
			bad = fmt.Errorf("%w: stats %s = %d", ErrProtocol, fd.Name(), v.Uint())
			return false
		}
		return true
	})
	if bad != nil {
		return bad
	}
	switch {
	case s.CpuUserNs > s.CpuUsageNs || s.CpuSystemNs > s.CpuUsageNs:
		return fmt.Errorf("%w: stats cpu user %d / system %d ns above usage %d", ErrProtocol, s.CpuUserNs, s.CpuSystemNs, s.CpuUsageNs)
	case max(s.MemoryUsageBytes, s.MemoryMaxUsageBytes, s.MemoryAnonBytes, s.MemoryFileBytes) > maxMemory:
		return fmt.Errorf("%w: stats memory usage %d / peak %d / anon %d / file %d beyond any guest", ErrProtocol,
			s.MemoryUsageBytes, s.MemoryMaxUsageBytes, s.MemoryAnonBytes, s.MemoryFileBytes)
	case s.MemoryLimitBytes != 0 && s.MemoryUsageBytes > s.MemoryLimitBytes+max(s.MemoryLimitBytes/4, 64<<20):
		return fmt.Errorf("%w: stats memory usage %d far above limit %d", ErrProtocol, s.MemoryUsageBytes, s.MemoryLimitBytes)
	case s.PidsCurrent > maxPids:
		return fmt.Errorf("%w: stats %d pids", ErrProtocol, s.PidsCurrent)
	}
	return nil
}

// ContainerState is a container's state in the guest.
type ContainerState struct {
	Status  ContainerStatus
	Pid     int
	Created time.Time
}

// StateContainer reports a container's state.
func (c *Client) StateContainer(ctx context.Context, id string) (ContainerState, error) {
	var st ContainerState
	err := c.call(ctx, "state of "+id, func(ctx context.Context) error {
		r, err := c.agent.StateContainer(ctx, &protocol.ContainerRequest{ContainerId: id})
		if err != nil {
			return err
		}
		st, err = validateState(r)
		return err
	})
	return st, err
}

// ContainerStatus is a container's status.
type ContainerStatus = protocol.ContainerState_Status

// The statuses a container has.
const (
	ContainerCreated = protocol.ContainerState_CREATED
	ContainerRunning = protocol.ContainerState_RUNNING
	ContainerPaused  = protocol.ContainerState_PAUSED
	ContainerStopped = protocol.ContainerState_STOPPED
)

// validateState checks a guest's container state: one of the four
// statuses.
func validateState(r *protocol.ContainerState) (ContainerState, error) {
	switch r.Status {
	case ContainerCreated, ContainerRunning, ContainerPaused, ContainerStopped:
	default:
		return ContainerState{}, fmt.Errorf("%w: container status %d", ErrProtocol, int32(r.Status))
	}
	return ContainerState{Status: r.Status, Pid: int(r.Pid), Created: time.Unix(0, r.CreatedUnixNano)}, nil
}

// PauseContainer freezes a container.
func (c *Client) PauseContainer(ctx context.Context, id string) error {
	return c.call(ctx, "pause "+id, func(ctx context.Context) error {
		_, err := c.agent.PauseContainer(ctx, &protocol.ContainerRequest{ContainerId: id})
		return err
	})
}

// ResumeContainer thaws a container.
func (c *Client) ResumeContainer(ctx context.Context, id string) error {
	return c.call(ctx, "resume "+id, func(ctx context.Context) error {
		_, err := c.agent.ResumeContainer(ctx, &protocol.ContainerRequest{ContainerId: id})
		return err
	})
}

// UpdateContainer changes a container's resources.
func (c *Client) UpdateContainer(ctx context.Context, id string, r *specs.LinuxResources) error {
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	return c.call(ctx, "update "+id, func(ctx context.Context) error {
		_, err := c.agent.UpdateContainer(ctx, &protocol.UpdateContainerRequest{ContainerId: id, Resources: b})
		return err
	})
}

// RemoveContainer deletes a container in the guest.
func (c *Client) RemoveContainer(ctx context.Context, id string, force bool) error {
	return c.call(ctx, "remove "+id, func(ctx context.Context) error {
		_, err := c.agent.RemoveContainer(ctx, &protocol.RemoveContainerRequest{ContainerId: id, Force: force})
		return err
	})
}

// DeleteProcess forgets an exited exec'd process in the guest.
func (c *Client) DeleteProcess(ctx context.Context, id, execID string) error {
	return c.call(ctx, "delete process "+execID+" of "+id, func(ctx context.Context) error {
		_, err := c.agent.DeleteProcess(ctx, &protocol.ProcessRequest{ContainerId: id, ExecId: execID})
		return err
	})
}
