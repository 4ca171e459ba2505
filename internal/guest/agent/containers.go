package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/cocoon-runtime/cocoon/agent/protocol"
	"github.com/cocoon-runtime/cocoon/internal/guest/container"
	securejoin "github.com/cyphar/filepath-securejoin"
	"github.com/opencontainers/runc/libcontainer"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// sharedFS mounts the host's shared directory on first use.
type sharedFS struct {
	mountPoint string
	mounted    func(string) // called once mounted, if not nil
	once       sync.Once
	err        error
}

func (s *sharedFS) mount() error {
	s.once.Do(func() {
		if err := os.MkdirAll(s.mountPoint, 0o755); err != nil {
			s.err = fmt.Errorf("mount shared fs: %w", err)
			return
		}
		// Neither nosuid nor nodev: the containers' root filesystems and
		// volumes below it get the mount options their specs ask for, as
		// under runc (a setuid program in an image works). The host's
		// binds of them are nosuid,nodev on the host's side.
		if err := unix.Mount(protocol.SharedFSTag, s.mountPoint, "virtiofs", 0, ""); err != nil {
			s.err = fmt.Errorf("mount virtiofs %q on %s: %w", protocol.SharedFSTag, s.mountPoint, err)
			return
		}
		// Shared, and so are the virtio-fs submounts below it (the host's
		// binds): the mount namespaces of containers are copies whose
		// mounts are its peers, so that a mount one container makes below a
		// volume reaches the others that bind the same one as their
		// propagation (rshared, rslave) says.
		if err := unix.Mount("", s.mountPoint, "", unix.MS_SHARED, ""); err != nil {
			s.err = fmt.Errorf("make %s shared: %w", s.mountPoint, err)
			return
		}
		if s.mounted != nil {
			s.mounted(s.mountPoint)
		}
	})
	return s.err
}

// resolve returns the guest path of rel, which must stay below the shared
// mount point.
func (s *sharedFS) resolve(rel string) (string, error) {
	if err := s.mount(); err != nil {
		return "", err
	}
	if rel == "" || filepath.IsAbs(rel) {
		return "", fmt.Errorf("rootfs %q: want a path relative to the shared directory", rel)
	}
	return securejoin.SecureJoin(s.mountPoint, rel)
}

func (a *Agent) manager() (*container.Manager, error) {
	if a.containers == nil {
		return nil, errors.New("this agent cannot run containers")
	}
	return a.containers, nil
}

// CreateContainer creates a container from an OCI spec whose rootfs was
// shared by the host.
func (a *Agent) CreateContainer(ctx context.Context, r *protocol.CreateContainerRequest) (_ *protocol.Empty, retErr error) {
	m, err := a.manager()
	if err != nil {
		return nil, err
	}
	var spec specs.Spec
	if err := json.Unmarshal(r.Spec, &spec); err != nil {
		return nil, fmt.Errorf("create container %s: parse spec: %w", r.ContainerId, err)
	}
	if spec.Process == nil {
		return nil, fmt.Errorf("create container %s: spec has no process", r.ContainerId)
	}
	// The virtio-fs and overlay drivers load in the background at boot.
	if _, err := a.modules(ctx); err != nil {
		return nil, fmt.Errorf("create container %s: kernel modules: %w", r.ContainerId, err)
	}
	var rootfs string
	if r.Root != nil {
		if r.Rootfs != "" {
			return nil, fmt.Errorf("create container %s: both a shared and a block root filesystem", r.ContainerId)
		}
		rootfs, err = a.blocks.mountRoot(ctx, r.ContainerId, r.Root)
	} else {
		rootfs, err = a.shared.resolve(r.Rootfs)
	}
	if err != nil {
		return nil, fmt.Errorf("create container %s: %w", r.ContainerId, err)
	}
	defer func() {
		if retErr != nil {
			a.blocks.unmount(r.ContainerId)
		}
	}()
	if err := a.resolveStorages(ctx, r.ContainerId, &spec, r.Storages); err != nil {
		return nil, fmt.Errorf("create container %s: %w", r.ContainerId, err)
	}
	if err := a.passDevices(ctx, &spec, r.Devices); err != nil {
		return nil, fmt.Errorf("create container %s: %w", r.ContainerId, err)
	}
	if err := joinNamespaces(m, &spec, r.JoinNamespaces); err != nil {
		return nil, fmt.Errorf("create container %s: %w", r.ContainerId, err)
	}
	pio := container.ProcessIO{Terminal: spec.Process.Terminal}
	if cs := spec.Process.ConsoleSize; cs != nil {
		pio.Width, pio.Height = uint16(cs.Width), uint16(cs.Height)
	}
	if _, err := m.Create(ctx, r.ContainerId, &spec, rootfs, pio); err != nil {
		return nil, err
	}
	return &protocol.Empty{}, nil
}

// resolveStorages sets the sources of spec's bind mounts to where the
// host's storages say they are in the guest, and mounts the virtio-fs
// submounts the host announced below them (the host's mounts there),
// before the container's mounts are made.
//
// A virtio-fs submount is an automount: the kernel mounts it when a path
// first crosses it, with the flags of the mount crossed. Crossed first
// inside the container's bind, it would take that bind's flags, and a
// tmpfs below a volume bound "ro" would be read-only, as if "rro" had been
// asked. Mounted here, below the agent's read-write shared mount, each
// keeps its own flags and the container's (recursive) bind copies it;
// "ro" then makes only the top read-only, and "rro" the whole tree.
//
// A block volume's disk is mounted by the agent, and the container's mount
// (a bind, the host made it so) binds it.
func (a *Agent) resolveStorages(ctx context.Context, id string, spec *specs.Spec, storages []*protocol.Storage) error {
	seen := map[uint32]bool{}
	for _, st := range storages {
		if int64(st.Mount) >= int64(len(spec.Mounts)) {
			return fmt.Errorf("storage of mount %d: the spec has %d mounts", st.Mount, len(spec.Mounts))
		}
		if seen[st.Mount] {
			return fmt.Errorf("storage of mount %d given twice", st.Mount)
		}
		seen[st.Mount] = true
		m := &spec.Mounts[st.Mount]
		if st.Kind == protocol.Storage_EPHEMERAL {
			p, err := a.ephemeral.mount(st.Path, st.SizeBytes)
			if err != nil {
				return fmt.Errorf("mount %s: %w", m.Destination, err)
			}
			if len(st.Submounts) > 0 {
				return fmt.Errorf("mount %s: an ephemeral storage has no submounts", m.Destination)
			}
			m.Source = p
			continue
		}
		if st.Kind == protocol.Storage_BLOCK {
			if len(st.Submounts) > 0 || m.Type != "bind" {
				return fmt.Errorf("mount %s: a block volume is a bind without submounts", m.Destination)
			}
			p, err := a.blocks.mountVolume(ctx, id, st)
			if err != nil {
				return fmt.Errorf("mount %s: %w", m.Destination, err)
			}
			m.Source = p
			continue
		}
		if st.Kind != protocol.Storage_SHARED {
			return fmt.Errorf("mount %s: storage kind %d is not known", m.Destination, int32(st.Kind))
		}
		p, err := a.shared.resolve(st.Path)
		if err != nil {
			return fmt.Errorf("mount %s: %w", m.Destination, err)
		}
		// The host's bind is a virtio-fs submount: mount it here, in the
		// agent's namespace, so that every container binding it binds one
		// mount (statx without AT_NO_AUTOMOUNT crosses the automount).
		var stx unix.Statx_t
		if err := unix.Statx(unix.AT_FDCWD, p, 0, unix.STATX_TYPE, &stx); err != nil {
			return fmt.Errorf("mount %s: %w", m.Destination, err)
		}
		m.Source = p
		for _, rel := range st.Submounts {
			if rel == "" || filepath.IsAbs(rel) {
				return fmt.Errorf("submount %q of mount %s: want a relative path", rel, m.Destination)
			}
			sp, err := securejoin.SecureJoin(p, rel)
			if err != nil {
				return fmt.Errorf("submount %q of mount %s: %w", rel, m.Destination, err)
			}
			// statx(2) without AT_NO_AUTOMOUNT crosses the automount, which
			// mounts it (stat(2) would not: it implies AT_NO_AUTOMOUNT). A
			// path gone meanwhile (the host unmounted it) is no error.
			if err := unix.Statx(unix.AT_FDCWD, sp, 0, unix.STATX_TYPE, &stx); err != nil && !errors.Is(err, unix.ENOENT) {
				return fmt.Errorf("submount %q of mount %s: %w", rel, m.Destination, err)
			}
		}
	}
	return nil
}

// joinNamespaces makes spec join the namespaces the host asked for: each
// that of the init process of another container of the sandbox.
func joinNamespaces(m *container.Manager, spec *specs.Spec, join []*protocol.JoinNamespace) error {
	if len(join) == 0 {
		return nil
	}
	if spec.Linux == nil {
		spec.Linux = &specs.Linux{}
	}
	for _, j := range join {
		file, ok := protocol.NamespaceFile(j.Type)
		if !ok || j.Type == string(specs.NetworkNamespace) {
			return fmt.Errorf("join namespace: type %q cannot be joined", j.Type)
		}
		pid, err := m.InitPid(j.ContainerId)
		if err != nil {
			return fmt.Errorf("join the %s namespace of container %s: %w", j.Type, j.ContainerId, err)
		}
		ns := specs.LinuxNamespace{Type: specs.LinuxNamespaceType(j.Type), Path: fmt.Sprintf("/proc/%d/ns/%s", pid, file)}
		i := slices.IndexFunc(spec.Linux.Namespaces, func(n specs.LinuxNamespace) bool { return n.Type == ns.Type })
		if i < 0 {
			spec.Linux.Namespaces = append(spec.Linux.Namespaces, ns)
		} else {
			spec.Linux.Namespaces[i] = ns
		}
	}
	return nil
}

// StartContainer starts a created container's program.
func (a *Agent) StartContainer(ctx context.Context, r *protocol.ContainerRequest) (*protocol.Empty, error) {
	m, err := a.manager()
	if err != nil {
		return nil, err
	}
	if err := m.Start(ctx, r.ContainerId); err != nil {
		return nil, err
	}
	return &protocol.Empty{}, nil
}

// ExecProcess starts a process in a running container.
func (a *Agent) ExecProcess(ctx context.Context, r *protocol.ExecProcessRequest) (*protocol.Empty, error) {
	m, err := a.manager()
	if err != nil {
		return nil, err
	}
	if r.ExecId == "" {
		return nil, errors.New("exec: empty exec id")
	}
	var p specs.Process
	if err := json.Unmarshal(r.Process, &p); err != nil {
		return nil, fmt.Errorf("exec %s in %s: parse process: %w", r.ExecId, r.ContainerId, err)
	}
	pio := container.ProcessIO{Terminal: p.Terminal}
	if cs := p.ConsoleSize; cs != nil {
		pio.Width, pio.Height = uint16(cs.Width), uint16(cs.Height)
	}
	if _, err := m.Exec(ctx, r.ContainerId, r.ExecId, &p, pio); err != nil {
		return nil, err
	}
	return &protocol.Empty{}, nil
}

// SignalProcess delivers a signal.
func (a *Agent) SignalProcess(ctx context.Context, r *protocol.SignalProcessRequest) (*protocol.Empty, error) {
	m, err := a.manager()
	if err != nil {
		return nil, err
	}
	if r.Signal == 0 || r.Signal > 64 {
		return nil, fmt.Errorf("signal %d: out of range", r.Signal)
	}
	sig := syscall.Signal(r.Signal)
	if r.ExecId == "" {
		err = m.Kill(ctx, r.ContainerId, sig, r.All)
	} else {
		var p *container.Process
		if p, err = m.Process(r.ContainerId, r.ExecId); err == nil {
			err = p.Signal(sig)
		}
	}
	if err != nil {
		return nil, err
	}
	return &protocol.Empty{}, nil
}

// WaitProcess waits for a process to exit.
func (a *Agent) WaitProcess(ctx context.Context, r *protocol.ProcessRequest) (*protocol.ExitStatus, error) {
	p, err := a.process(r.ContainerId, r.ExecId)
	if err != nil {
		return nil, err
	}
	st, err := p.Wait(ctx)
	if err != nil {
		return nil, err
	}
	return &protocol.ExitStatus{Code: int32(st.Code), Signal: int32(st.Signal), OomKilled: st.OOMKilled, ExitedAtUnixNano: st.ExitedAt.UnixNano()}, nil
}

func (a *Agent) process(id, execID string) (*container.Process, error) {
	m, err := a.manager()
	if err != nil {
		return nil, err
	}
	return m.Process(id, execID)
}

// ResizeTTY resizes a process's terminal.
func (a *Agent) ResizeTTY(ctx context.Context, r *protocol.ResizeTTYRequest) (*protocol.Empty, error) {
	p, err := a.process(r.ContainerId, r.ExecId)
	if err != nil {
		return nil, err
	}
	if r.Width > 0xffff || r.Height > 0xffff {
		return nil, fmt.Errorf("resize: %dx%d out of range", r.Width, r.Height)
	}
	if err := p.Resize(uint16(r.Width), uint16(r.Height)); err != nil {
		return nil, err
	}
	return &protocol.Empty{}, nil
}

// CloseStdin closes a process's stdin.
func (a *Agent) CloseStdin(ctx context.Context, r *protocol.ProcessRequest) (*protocol.Empty, error) {
	p, err := a.process(r.ContainerId, r.ExecId)
	if err != nil {
		return nil, err
	}
	if err := p.CloseStdin(); err != nil {
		return nil, err
	}
	return &protocol.Empty{}, nil
}

// ListProcesses lists the processes in a container.
func (a *Agent) ListProcesses(ctx context.Context, r *protocol.ContainerRequest) (*protocol.ProcessList, error) {
	m, err := a.manager()
	if err != nil {
		return nil, err
	}
	pids, err := m.Processes(ctx, r.ContainerId)
	if err != nil {
		return nil, err
	}
	out := &protocol.ProcessList{}
	for _, pid := range pids {
		out.Processes = append(out.Processes, processInfo(pid))
	}
	return out, nil
}

// processInfo describes pid from /proc.
func processInfo(pid int) *protocol.ProcessInfo {
	info := &protocol.ProcessInfo{Pid: int32(pid)}
	if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); err == nil {
		s := string(b)
		if i := strings.LastIndexByte(s, ')'); i > 0 {
			if f := strings.Fields(s[i+1:]); len(f) > 1 {
				info.State = f[0]
				ppid, _ := strconv.Atoi(f[1])
				info.Ppid = int32(ppid)
			}
		}
	}
	if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); err == nil {
		info.Command = strings.TrimSpace(strings.ReplaceAll(string(b), "\x00", " "))
	}
	return info
}

// StatsContainer reports a container's cgroup statistics.
func (a *Agent) StatsContainer(ctx context.Context, r *protocol.ContainerRequest) (*protocol.ContainerStats, error) {
	m, err := a.manager()
	if err != nil {
		return nil, err
	}
	s, err := m.Stats(ctx, r.ContainerId)
	if err != nil {
		return nil, err
	}
	return &protocol.ContainerStats{
		CpuUsageNs: s.CPU.UsageNanos, CpuUserNs: s.CPU.UserNanos, CpuSystemNs: s.CPU.SystemNanos,
		CpuThrottledPeriods: s.CPU.ThrottledPeriods, CpuThrottledNs: s.CPU.ThrottledNanos,
		MemoryUsageBytes: s.Memory.Usage, MemoryLimitBytes: s.Memory.Limit, MemoryMaxUsageBytes: s.Memory.MaxUsage,
		MemoryAnonBytes: s.Memory.Anon, MemoryFileBytes: s.Memory.File,
		MemoryOomEvents: s.Memory.OOM, MemoryOomKillEvents: s.Memory.OOMKill,
		PidsCurrent: s.Pids.Current, PidsLimit: s.Pids.Limit,
		IoReadBytes: s.IO.ReadBytes, IoWriteBytes: s.IO.WriteBytes, IoReadOps: s.IO.ReadOps, IoWriteOps: s.IO.WriteOps,
	}, nil
}

// StateContainer reports a container's state.
func (a *Agent) StateContainer(ctx context.Context, r *protocol.ContainerRequest) (*protocol.ContainerState, error) {
	m, err := a.manager()
	if err != nil {
		return nil, err
	}
	st, err := m.State(ctx, r.ContainerId)
	if err != nil {
		return nil, err
	}
	return &protocol.ContainerState{Status: containerStatus(st.Status), Pid: int32(st.Pid), CreatedUnixNano: st.Created.UnixNano()}, nil
}

// containerStatus is the protocol's name for a container's status.
func containerStatus(s libcontainer.Status) protocol.ContainerState_Status {
	switch s {
	case libcontainer.Created:
		return protocol.ContainerState_CREATED
	case libcontainer.Running:
		return protocol.ContainerState_RUNNING
	case libcontainer.Paused:
		return protocol.ContainerState_PAUSED
	case libcontainer.Stopped:
		return protocol.ContainerState_STOPPED
	}
	return protocol.ContainerState_UNKNOWN
}

// PauseContainer freezes a container.
func (a *Agent) PauseContainer(ctx context.Context, r *protocol.ContainerRequest) (*protocol.Empty, error) {
	return a.onContainer(ctx, r.ContainerId, (*container.Manager).Pause)
}

// ResumeContainer thaws a container.
func (a *Agent) ResumeContainer(ctx context.Context, r *protocol.ContainerRequest) (*protocol.Empty, error) {
	return a.onContainer(ctx, r.ContainerId, (*container.Manager).Resume)
}

func (a *Agent) onContainer(ctx context.Context, id string, op func(*container.Manager, context.Context, string) error) (*protocol.Empty, error) {
	m, err := a.manager()
	if err != nil {
		return nil, err
	}
	if err := op(m, ctx, id); err != nil {
		return nil, err
	}
	return &protocol.Empty{}, nil
}

// UpdateContainer changes a container's resources.
func (a *Agent) UpdateContainer(ctx context.Context, r *protocol.UpdateContainerRequest) (*protocol.Empty, error) {
	m, err := a.manager()
	if err != nil {
		return nil, err
	}
	var res specs.LinuxResources
	if err := json.Unmarshal(r.Resources, &res); err != nil {
		return nil, fmt.Errorf("update container %s: parse resources: %w", r.ContainerId, err)
	}
	if err := m.Update(ctx, r.ContainerId, &res); err != nil {
		return nil, err
	}
	return &protocol.Empty{}, nil
}

// RemoveContainer deletes a container.
func (a *Agent) RemoveContainer(ctx context.Context, r *protocol.RemoveContainerRequest) (*protocol.Empty, error) {
	m, err := a.manager()
	if err != nil {
		return nil, err
	}
	if err := m.Delete(ctx, r.ContainerId, r.Force); err != nil {
		return nil, err
	}
	if err := a.blocks.unmount(r.ContainerId); err != nil {
		return nil, err
	}
	return &protocol.Empty{}, nil
}

// DeleteProcess forgets an exited exec'd process.
func (a *Agent) DeleteProcess(ctx context.Context, r *protocol.ProcessRequest) (*protocol.Empty, error) {
	m, err := a.manager()
	if err != nil {
		return nil, err
	}
	if r.ExecId == "" {
		return nil, errors.New("delete process: the init process goes with its container")
	}
	if err := m.DeleteProcess(ctx, r.ContainerId, r.ExecId); err != nil {
		return nil, err
	}
	return &protocol.Empty{}, nil
}

// AttachStream connects a host stream to a process's stdin, stdout or
// stderr. It takes ownership of conn.
func (a *Agent) AttachStream(h protocol.StreamHeader, conn net.Conn) {
	go func() {
		defer conn.Close()
		p, err := a.process(h.ContainerID, h.ExecID)
		if err != nil {
			a.log.Warn("attach stream", "container", h.ContainerID, "exec", h.ExecID, "stream", h.Stream, "err", err)
			return
		}
		switch h.Stream {
		case protocol.StreamStdin:
			if w := p.Stdin(); w != nil {
				io.Copy(w, conn)
				p.CloseStdin()
			}
		case protocol.StreamStdout:
			a.copyOut(conn, p.Stdout())
		case protocol.StreamStderr:
			a.copyOut(conn, p.Stderr())
		}
	}()
}

// outFrame is the most output sent to the host in one frame.
const outFrame = 256 << 10

// copyOut copies a process's output to the host until the process closed
// it. A PTY master reports EIO once the last slave closed: that is its end
// of file.
func (a *Agent) copyOut(conn net.Conn, r io.Reader) {
	if r == nil {
		return
	}
	if f, ok := r.(*os.File); ok {
		if cr, err := newCoalescingReader(f); err == nil {
			r = cr
		}
	}
	buf, _ := a.outBufs.Get().(*[]byte)
	if buf == nil {
		b := make([]byte, outFrame)
		buf = &b
	}
	defer a.outBufs.Put(buf)
	_, err := io.CopyBuffer(conn, r, *buf)
	if err != nil && !errors.Is(err, syscall.EIO) {
		return
	}
	if cw, ok := conn.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	}
}

// Output coalescing: a read of at least bulkRead bytes from a process's
// output pipe means the process is streaming, and the agent, which tends
// to run as soon as the process wrote one chunk, waits bulkWait for more
// before sending. Every frame to the host costs a round of the channel
// (virtqueue buffers, a QEMU wakeup), whatever its size.
const (
	bulkRead = 16 << 10
	bulkWait = 500 * time.Microsecond
)

// coalescingReader reads a pipe, joining streamed output into large reads.
type coalescingReader struct {
	f  *os.File
	rc syscall.RawConn
	// wait lets the process write more; nil sleeps bulkWait.
	wait func()
}

func newCoalescingReader(f *os.File) (*coalescingReader, error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return nil, err
	}
	return &coalescingReader{f: f, rc: rc}, nil
}

func (c *coalescingReader) Read(p []byte) (int, error) {
	n, err := c.f.Read(p)
	if err != nil || n < bulkRead || n == len(p) {
		return n, err
	}
	if c.wait != nil {
		c.wait()
	} else {
		time.Sleep(bulkWait)
	}
	c.rc.Read(func(fd uintptr) bool {
		if m, err := unix.Read(int(fd), p[n:]); err == nil && m > 0 {
			n += m
		}
		return true // one non-blocking try
	})
	return n, nil
}
