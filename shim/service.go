// Package shim is Cocoon's containerd runtime v2 shim: containerd (and
// through it nerdctl, the CRI and Kubernetes) drives Cocoon with the task
// API, and the shim translates every call into the library's sandbox and
// container API.
//
// One shim process serves a whole pod: the pod's first task (the CRI's
// sandbox container, or a container run on its own) boots the pod's VM,
// later tasks of the pod join it, and the VM goes away with the first
// task. The task service only translates; each process's lifecycle rules
// live in process.go.
package shim

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/cocoon-runtime/cocoon"
	"github.com/cocoon-runtime/cocoon/config"
	"github.com/cocoon-runtime/cocoon/internal/specutil"
	eventstypes "github.com/containerd/containerd/api/events"
	taskAPI "github.com/containerd/containerd/api/runtime/task/v2"
	ptypes "github.com/containerd/containerd/api/types"
	"github.com/containerd/containerd/api/types/task"
	"github.com/containerd/containerd/errdefs"
	"github.com/containerd/containerd/mount"
	"github.com/containerd/containerd/namespaces"
	"github.com/containerd/containerd/pkg/shutdown"
	"github.com/containerd/containerd/plugin"
	"github.com/containerd/containerd/protobuf"
	"github.com/containerd/containerd/runtime"
	cshim "github.com/containerd/containerd/runtime/v2/shim"
	"github.com/containerd/log"
	"github.com/containerd/ttrpc"
	"github.com/containerd/typeurl/v2"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/emptypb"

	runtimeoptions "github.com/containerd/containerd/pkg/runtimeoptions/v1"
)

// RuntimeName is the runtime type containerd knows Cocoon by.
const RuntimeName = "io.containerd.cocoon.v2"

// ConfigEnv names the environment variable that points the shim at a
// configuration file when containerd passes no runtime options.
const ConfigEnv = "COCOON_CONFIG"

// vmDiedStatus is the exit status of every process whose VM died.
const vmDiedStatus = 255

// Run runs the shim binary: containerd's shim package parses the command
// line and calls back the manager ("start", "delete") or serves the task
// service.
func Run(ctx context.Context, name string) {
	plugin.Register(&plugin.Registration{
		Type:     plugin.TTRPCPlugin,
		ID:       "task",
		Requires: []plugin.Type{plugin.EventPlugin, plugin.InternalPlugin},
		InitFn: func(ic *plugin.InitContext) (interface{}, error) {
			pp, err := ic.GetByID(plugin.EventPlugin, "publisher")
			if err != nil {
				return nil, err
			}
			sd, err := ic.GetByID(plugin.InternalPlugin, "shutdown")
			if err != nil {
				return nil, err
			}
			return newService(ic.Context, pp.(cshim.Publisher), sd.(shutdown.Service)), nil
		},
	})
	// The library waits for the processes it starts (QEMU's daemonizing
	// parent, virtiofsd); a reaper taking every child would steal those.
	cshim.RunManager(ctx, manager{name: name}, func(c *cshim.Config) {
		c.NoReaper = true
		c.NoSubreaper = true
	})
}

// service implements containerd's task service for one pod.
type service struct {
	ctx       context.Context // the shim's; lives as long as the process
	publisher cshim.Publisher
	shutdown  shutdown.Service

	// newRuntime makes the library's runtime (see library.go).
	newRuntime func(cocoon.Options) (podRuntime, error)

	mu        sync.Mutex
	rt        podRuntime
	cfg       *config.Config
	sb        podSandbox
	sandboxID string
	vmPid     uint32
	deleting  bool // the sandbox is being deleted on purpose
	sbDeleted bool // the sandbox was removed, VM and record
	// shutdownAsked says containerd asked the shim to exit: it does once
	// it serves no task and creates none.
	shutdownAsked bool
	containers    map[string]*container
	creating      map[string]bool // task IDs whose Create is under way
	// removals counts the Deletes still removing their container (or, for
	// the sandbox's task, the whole VM): the shim does not exit under them.
	removals int
	// replyGrace overrides defaultReplyGrace (tests).
	replyGrace time.Duration
	// fwd serves the pod's localhost in its netns (kubectl port-forward)
	// while the sandbox runs; nil without a netns.
	fwd io.Closer
}

// removeTimeout bounds the removal of a container or of the sandbox,
// which goes on when containerd's request is cancelled: a removal cut
// short would leave a VM that nothing removes any more.
const removeTimeout = 2 * time.Minute

func newService(ctx context.Context, pub cshim.Publisher, sd shutdown.Service) *service {
	// fd 3 is the listening socket "start" handed down; containerd's shim
	// package serves a duplicate of it and leaves fd 3 open without
	// close-on-exec. The daemons the shim starts (QEMU, virtiofsd) outlive
	// it and must not hold the socket: containerd would keep seeing a
	// live shim after this one died.
	unix.CloseOnExec(3)
	s := &service{ctx: ctx, publisher: pub, shutdown: sd, newRuntime: newRuntime, containers: map[string]*container{}, creating: map[string]bool{}}
	sd.RegisterCallback(func(context.Context) error {
		s.stopForwarding()
		s.mu.Lock()
		sb, gone := s.sb, s.sbDeleted
		s.deleting = true
		s.mu.Unlock()
		if sb != nil && !gone {
			// No task is left, yet the sandbox is: its task's Delete failed,
			// or never came. The shim is its only owner; it goes too.
			log.G(s.ctx).WithField("sandbox", sb.ID()).Warn("shim exits with its sandbox still there; removing it")
			ctx, cancel := context.WithTimeout(context.WithoutCancel(s.ctx), removeTimeout)
			if err := sb.Delete(ctx); err != nil {
				log.G(s.ctx).WithError(err).Error("remove the sandbox")
			}
			cancel()
		}
		if sb != nil {
			sb.Release()
		}
		// Events are published synchronously, so none is pending: the
		// shim may exit as soon as the publisher is closed.
		return pub.Close()
	})
	return s
}

// RegisterTTRPC serves the task API on the shim's socket.
func (s *service) RegisterTTRPC(server *ttrpc.Server) error {
	taskAPI.RegisterTaskService(server, s)
	return nil
}

// grpcError maps the library's errors onto containerd's error kinds,
// which travel over ttrpc as gRPC status codes.
func grpcError(err error) error {
	if err == nil {
		return nil
	}
	switch {
	case errors.Is(err, cocoon.ErrNotFound):
		err = fmt.Errorf("%w: %w", errdefs.ErrNotFound, err)
	case errors.Is(err, cocoon.ErrExists):
		err = fmt.Errorf("%w: %w", errdefs.ErrAlreadyExists, err)
	case errors.Is(err, cocoon.ErrInvalidConfig), errors.Is(err, config.ErrInvalid), errors.Is(err, config.ErrAnnotationNotAllowed):
		err = fmt.Errorf("%w: %w", errdefs.ErrInvalidArgument, err)
	case errors.Is(err, cocoon.ErrState):
		err = fmt.Errorf("%w: %w", errdefs.ErrFailedPrecondition, err)
	}
	return errdefs.ToGRPC(err)
}

// loadConfig finds the configuration: the runtime options' ConfigPath
// (containerd's runtime options, `ctr --runtime-config-path`), else
// $COCOON_CONFIG, else config.DefaultPath.
func loadConfig(opts *anypb.Any) (*config.Config, error) {
	path := os.Getenv(ConfigEnv)
	if opts != nil && opts.GetTypeUrl() != "" {
		v, err := typeurl.UnmarshalAny(opts)
		if err != nil {
			return nil, fmt.Errorf("runtime options: %w", err)
		}
		if o, ok := v.(*runtimeoptions.Options); ok && o.ConfigPath != "" {
			path = o.ConfigPath
		}
	}
	return config.Load(path)
}

// logger is the library's logger: text to the shim's log, which
// containerd collects.
func logger(ctx context.Context, level string) *slog.Logger {
	lvl := slog.LevelInfo
	lvl.UnmarshalText([]byte(level))
	return slog.New(slog.NewTextHandler(log.G(ctx).Logger.Out, &slog.HandlerOptions{Level: lvl}))
}

func (s *service) publish(topic string, ev interface{}) {
	ctx := namespaces.WithNamespace(context.Background(), namespaceOf(s.ctx))
	if err := s.publisher.Publish(ctx, topic, ev); err != nil {
		log.G(s.ctx).WithError(err).WithField("topic", topic).Warn("publish event")
	}
}

func namespaceOf(ctx context.Context) string {
	ns, _ := namespaces.Namespace(ctx)
	return ns
}

// Create creates a task: the pod's VM for its first task, then the
// container in it. Its program does not run until Start.
func (s *service) Create(ctx context.Context, r *taskAPI.CreateTaskRequest) (_ *taskAPI.CreateTaskResponse, retErr error) {
	if r.Checkpoint != "" || r.ParentCheckpoint != "" {
		return nil, grpcError(fmt.Errorf("create %s from a checkpoint: %w", r.ID, errdefs.ErrNotImplemented))
	}
	defer logDuration(ctx, "create", r.ID)()
	spec, err := cocoon.LoadSpec(r.Bundle)
	if err != nil {
		return nil, grpcError(err)
	}
	// The lock is held only to check and reserve: booting the VM or
	// creating the container takes long, and the pod's other tasks keep
	// being served meanwhile.
	pd := podOf(r.ID, spec.Annotations)
	if pd.cri {
		if err := hostNamespaces(spec); err != nil {
			return nil, grpcError(fmt.Errorf("task %s: %w", r.ID, err))
		}
	}
	s.mu.Lock()
	if _, ok := s.containers[r.ID]; ok || s.creating[r.ID] {
		s.mu.Unlock()
		return nil, grpcError(fmt.Errorf("task %s: %w", r.ID, errdefs.ErrAlreadyExists))
	}
	if pd.createsVM && s.sandboxID != "" {
		s.mu.Unlock()
		return nil, grpcError(fmt.Errorf("task %s: %w: this shim already serves sandbox %s", r.ID, errdefs.ErrFailedPrecondition, s.sandboxID))
	}
	if !pd.createsVM && (s.sb == nil || pd.sandboxID != s.sandboxID) {
		s.mu.Unlock()
		return nil, grpcError(fmt.Errorf("task %s: %w: its sandbox %s is not served by this shim", r.ID, errdefs.ErrFailedPrecondition, pd.sandboxID))
	}
	if pd.createsVM {
		s.sandboxID = r.ID // reserved until the VM is up, or released
	}
	s.creating[r.ID] = true
	sb, rec := s.sb, s.record()
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.creating, r.ID)
		if retErr != nil && pd.createsVM {
			s.sandboxID = ""
		}
		s.mu.Unlock()
		s.shutdownAfterReply()
	}()

	c := &container{id: r.ID, bundle: r.Bundle, execs: map[string]*process{}}
	cc := cocoon.ContainerConfig{ID: r.ID, Bundle: r.Bundle, Spec: spec, Annotations: spec.Annotations}
	if disk, readOnly, ok := blockRootfs(r.Rootfs); ok {
		// The VM gets the snapshot as a disk and mounts it itself: the
		// host never mounts it.
		cc.RootDisk, cc.RootDiskReadOnly = disk, readOnly
	} else if len(r.Rootfs) > 0 {
		if err := mountRootfs(r.Bundle, r.Rootfs); err != nil {
			return nil, grpcError(fmt.Errorf("task %s: %w", r.ID, err))
		}
		c.rootfsMounted = true
		defer func() {
			if retErr != nil {
				mount.UnmountRecursive(filepath.Join(r.Bundle, "rootfs"), 0)
			}
		}()
	}
	if pd.createsVM {
		if err := s.createSandbox(ctx, r, cc); err != nil {
			return nil, grpcError(err)
		}
	} else {
		if err := writeBundleRecord(r.Bundle, rec); err != nil {
			return nil, grpcError(err)
		}
		done := logDuration(ctx, "create container in the VM", r.ID)
		if err := sb.CreateContainer(ctx, cc); err != nil {
			os.Remove(filepath.Join(r.Bundle, bundleRecordFile))
			return nil, grpcError(err)
		}
		done()
	}
	c.init = newProcess(r.ID, "", stdio{r.Stdin, r.Stdout, r.Stderr, r.Terminal}, nil)
	defer logDuration(ctx, "attach stdio", r.ID)()
	if err := s.attach(ctx, c.init); err != nil {
		s.removeContainer(ctx, c)
		return nil, grpcError(err)
	}
	if err := ctx.Err(); err != nil {
		// containerd gave up on this Create and takes the task for never
		// made: nothing would ever delete it.
		s.removeContainer(ctx, c)
		return nil, grpcError(fmt.Errorf("create task %s: %w", r.ID, err))
	}
	s.mu.Lock()
	s.containers[r.ID] = c
	s.mu.Unlock()
	go s.waitExit(c.init)

	s.publish(runtime.TaskCreateEventTopic, &eventstypes.TaskCreate{
		ContainerID: r.ID, Bundle: r.Bundle, Rootfs: r.Rootfs, Pid: s.vmPid,
		IO: &eventstypes.TaskIO{Stdin: r.Stdin, Stdout: r.Stdout, Stderr: r.Stderr, Terminal: r.Terminal},
	})
	return &taskAPI.CreateTaskResponse{Pid: s.vmPid}, nil
}

// podDiskSlots is how many root ports a pod whose sandbox container runs
// from a block snapshot gets, beyond hypervisor.hotplug_slots, for the
// disks of the containers that join it later.
const podDiskSlots = 8

// createSandbox boots the pod's VM with its first container.
func (s *service) createSandbox(ctx context.Context, r *taskAPI.CreateTaskRequest, cc cocoon.ContainerConfig) error {
	base, err := loadConfig(r.Options)
	if err != nil {
		return fmt.Errorf("task %s: %w", r.ID, err)
	}
	cfg, err := base.WithAnnotations(cc.Spec.Annotations)
	if err != nil {
		return fmt.Errorf("task %s: %w", r.ID, err)
	}
	rt, err := s.newRuntime(cocoon.Options{
		StateDir:    cfg.Runtime.StateDir,
		DataDir:     cfg.Runtime.DataDir,
		Virtiofsd:   cfg.Hypervisor.Virtiofsd,
		DANConfDir:  cfg.Runtime.DANConfDir,
		VMTemplates: cfg.Factory.EnableTemplate,
		Log:         logger(s.ctx, cfg.Runtime.LogLevel),

		TemplateLimit:     cfg.Factory.TemplateLimit,
		TemplateMemoryMiB: cfg.Factory.MemoryMiB,
	})
	if err != nil {
		return err
	}
	// Sweep what killed shims and CLIs left (unfinished sandboxes, orphan
	// VMs and mounts); sandboxes in use are never touched.
	go func() {
		if rep, err := rt.GC(context.WithoutCancel(ctx)); err != nil {
			log.G(ctx).WithError(err).Warn("cocoon gc")
		} else if len(rep.Sandboxes)+len(rep.Leftovers) > 0 {
			log.G(ctx).WithField("sandboxes", rep.Sandboxes).WithField("leftovers", rep.Leftovers).Info("cocoon gc removed leftovers")
		}
	}()
	// Written first: if the shim dies while the VM boots, containerd's
	// "delete" still finds the sandbox.
	rec := bundleRecord{SandboxID: r.ID, StateDir: cfg.Runtime.StateDir, DataDir: cfg.Runtime.DataDir}
	if err := writeBundleRecord(r.Bundle, rec); err != nil {
		return err
	}
	res, err := podResources(cc.Spec)
	if err != nil {
		return fmt.Errorf("task %s: %w", r.ID, err)
	}
	vm := cfg.VMConfig()
	if cc.RootDisk != "" {
		// One snapshotter per runtime handler: the pod's other containers
		// come as block snapshots too, each a disk in a root port.
		vm.HotplugSlots += podDiskSlots
	}
	sb, err := rt.CreateSandbox(ctx, cocoon.SandboxConfig{
		ID:           r.ID,
		VM:           vm,
		BootTimeout:  cfg.Agent.BootTimeout.Duration,
		Annotations:  cc.Spec.Annotations,
		Containers:   []cocoon.ContainerConfig{cc},
		NetNS:        specutil.NetNSPath(cc.Spec),
		NetworkModel: cfg.Runtime.InternetworkingModel,
		Resources:    res,
	})
	if err != nil {
		os.Remove(filepath.Join(r.Bundle, bundleRecordFile))
		if errors.Is(err, cocoon.ErrTooBig) {
			return fmt.Errorf("%w (hypervisor.max_vcpus, max_memory_mib)", err)
		}
		return err
	}
	var vmPid uint32
	if st := sb.Status(ctx); len(st.HypervisorPids) > 0 {
		vmPid = uint32(st.HypervisorPids[0])
	}
	fwd := forwardLocalhost(s.ctx, sb, cc.Spec)
	s.mu.Lock()
	s.cfg, s.rt, s.sb, s.vmPid = cfg, rt, sb, vmPid
	s.deleting, s.sbDeleted = false, false
	s.fwd = fwd
	s.mu.Unlock()
	go s.monitor(sb)
	return nil
}

// forwardLocalhost serves the pod's localhost in the netns of its spec,
// where containerd's CRI dials it for kubectl port-forward. A pod whose
// forwarder cannot start still runs, without port-forward, and says so.
func forwardLocalhost(ctx context.Context, sb podSandbox, spec *specs.Spec) io.Closer {
	if specutil.NetNSPath(spec) == "" {
		return nil
	}
	f, err := sb.ForwardLocalhost(ctx)
	if err != nil {
		log.G(ctx).WithError(err).Warn("port-forward into this pod will not work")
		return nil
	}
	return f
}

// stopForwarding stops the pod's localhost forwarder, if any: its
// listeners and netns rules go and connections in flight are reset.
func (s *service) stopForwarding() {
	s.mu.Lock()
	f := s.fwd
	s.fwd = nil
	s.mu.Unlock()
	if f != nil {
		if err := f.Close(); err != nil {
			log.G(s.ctx).WithError(err).Warn("stop the port forwarder")
		}
	}
}

// record is the bundle record of the pod's later tasks; call with s.mu
// held.
func (s *service) record() bundleRecord {
	if s.cfg == nil {
		return bundleRecord{SandboxID: s.sandboxID}
	}
	return bundleRecord{SandboxID: s.sandboxID, StateDir: s.cfg.Runtime.StateDir, DataDir: s.cfg.Runtime.DataDir}
}

// blockRootfs reports whether the rootfs containerd prepared is one file
// system image or block device, mounted whole (containerd 2.x's blockfile
// snapshotter: an ext4 image with "loop"; devmapper: a thin device), which
// the VM takes as a disk of its own; it returns its path and whether the
// snapshot is read-only. Any other mount option, an overlay, a bind or
// several mounts: the host mounts them (mountRootfs) and shares the result.
func blockRootfs(rootfs []*ptypes.Mount) (path string, readOnly, ok bool) {
	if len(rootfs) != 1 {
		return "", false, false
	}
	m := rootfs[0]
	switch m.Type {
	case "ext4", "ext3", "ext2", "xfs", "erofs":
	default:
		return "", false, false
	}
	if !filepath.IsAbs(m.Source) || m.Target != "" {
		return "", false, false
	}
	for _, o := range m.Options {
		switch o {
		case "loop", "rw":
		case "ro":
			readOnly = true
		default:
			return "", false, false
		}
	}
	// The library checks that Source is an image or a block device.
	return m.Source, readOnly, true
}

// mountRootfs mounts the root filesystem containerd prepared (a
// snapshot's mounts) at the bundle's rootfs.
func mountRootfs(bundle string, rootfs []*ptypes.Mount) error {
	target := filepath.Join(bundle, "rootfs")
	if err := os.MkdirAll(target, 0o711); err != nil {
		return err
	}
	ms := make([]mount.Mount, 0, len(rootfs))
	for _, m := range rootfs {
		ms = append(ms, mount.Mount{Type: m.Type, Source: m.Source, Target: m.Target, Options: m.Options})
	}
	if err := mount.All(ms, target); err != nil {
		mount.UnmountRecursive(target, 0)
		return fmt.Errorf("mount rootfs: %w", err)
	}
	return nil
}

// attach opens the process's streams in the guest and connects them to
// containerd's stdio.
func (s *service) attach(ctx context.Context, p *process) error {
	in, out, errs, err := s.sb.IOStream(ctx, p.containerID, p.execID)
	if err != nil {
		return err
	}
	pp, err := connect(s.ctx, namespaceOf(ctx), p.containerID, p.stdio, in, out, errs)
	if err != nil {
		return err
	}
	p.mu.Lock()
	p.pipes = pp
	p.mu.Unlock()
	return nil
}

// waitExit waits for a process to end, lets its output reach containerd,
// and publishes the exit.
func (s *service) waitExit(p *process) {
	st, err := s.sb.WaitProcess(s.ctx, p.containerID, p.execID)
	if err != nil {
		st = cocoon.ExitStatus{Code: vmDiedStatus}
		log.G(s.ctx).WithError(err).WithField("process", p.name()).Warn("wait failed; reporting the process as exited")
	}
	p.mu.Lock()
	pp := p.pipes
	p.mu.Unlock()
	if pp != nil {
		pp.drain(outputDrain)
	}
	s.exited(p, st)
}

// exited records a process's end and tells containerd.
func (s *service) exited(p *process, st cocoon.ExitStatus) {
	if !p.setExited(st) {
		return
	}
	log.G(s.ctx).WithField("process", p.name()).WithField("status", st.Code).Debug("exited")
	if st.OOMKilled {
		s.publish(runtime.TaskOOMEventTopic, &eventstypes.TaskOOM{ContainerID: p.containerID})
	}
	st = p.exitStatus()
	s.publish(runtime.TaskExitEventTopic, &eventstypes.TaskExit{
		ContainerID: p.containerID, ID: p.taskID(), Pid: s.vmPid,
		ExitStatus: uint32(st.Code), ExitedAt: protobuf.ToTimestamp(st.ExitedAt),
	})
}

// taskID is the id containerd's exit events carry: the container's for
// the init process, else the exec's.
func (p *process) taskID() string {
	if p.execID == "" {
		return p.containerID
	}
	return p.execID
}

// monitor ends every process when the VM dies and releases the VM's host
// resources; containerd then deletes the tasks.
func (s *service) monitor(sb podSandbox) {
	err := <-sb.Monitor()
	s.mu.Lock()
	deleting := s.deleting
	var procs []*process
	for _, c := range s.containers {
		procs = append(procs, c.init)
		for _, e := range c.execs {
			procs = append(procs, e)
		}
	}
	s.mu.Unlock()
	if deleting {
		return
	}
	log.G(s.ctx).WithError(err).Error("sandbox VM died; every task exits")
	// A client connecting to the pod's localhost is refused from now on,
	// rather than accepted and reset.
	s.stopForwarding()
	for _, p := range procs {
		s.exited(p, cocoon.ExitStatus{Code: vmDiedStatus})
	}
	if err := sb.Stop(s.ctx, true); err != nil {
		log.G(s.ctx).WithError(err).Warn("release the dead VM's resources")
	}
}

// lookup returns a task's container and process.
func (s *service) lookup(id, execID string) (*container, *process, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c, ok := s.containers[id]
	if !ok {
		return nil, nil, fmt.Errorf("task %s: %w", id, errdefs.ErrNotFound)
	}
	p, err := c.process(execID)
	return c, p, err
}

// Start starts a created task's program or an added exec.
func (s *service) Start(ctx context.Context, r *taskAPI.StartRequest) (*taskAPI.StartResponse, error) {
	defer logDuration(ctx, "start", r.ID)()
	_, p, err := s.lookup(r.ID, r.ExecID)
	if err != nil {
		return nil, grpcError(err)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.state != stateCreated {
		return nil, grpcError(fmt.Errorf("start %s: %w: it is %s", p.name(), errdefs.ErrFailedPrecondition, p.state))
	}
	if r.ExecID == "" {
		if err := s.sb.StartContainer(ctx, r.ID); err != nil {
			return nil, grpcError(err)
		}
		p.moveLocked(stateRunning)
		s.publish(runtime.TaskStartEventTopic, &eventstypes.TaskStart{ContainerID: r.ID, Pid: s.vmPid})
		return &taskAPI.StartResponse{Pid: s.vmPid}, nil
	}
	if _, err := s.sb.EnterContainer(ctx, r.ID, r.ExecID, *p.spec); err != nil {
		return nil, grpcError(err)
	}
	p.mu.Unlock()
	err = s.attach(ctx, p)
	p.mu.Lock()
	if err != nil {
		s.sb.SignalProcess(ctx, r.ID, r.ExecID, syscall.SIGKILL, false)
		return nil, grpcError(err)
	}
	p.moveLocked(stateRunning)
	go s.waitExit(p)
	s.publish(runtime.TaskExecStartedEventTopic, &eventstypes.TaskExecStarted{ContainerID: r.ID, ExecID: r.ExecID, Pid: s.vmPid})
	return &taskAPI.StartResponse{Pid: s.vmPid}, nil
}

// Exec adds a process to a running task; Start runs it.
func (s *service) Exec(ctx context.Context, r *taskAPI.ExecProcessRequest) (*emptypb.Empty, error) {
	c, _, err := s.lookup(r.ID, "")
	if err != nil {
		return nil, grpcError(err)
	}
	if st := c.init.current(); st != stateRunning {
		return nil, grpcError(fmt.Errorf("exec in task %s: %w: it is %s", r.ID, errdefs.ErrFailedPrecondition, st))
	}
	var spec specs.Process
	if r.Spec == nil || json.Unmarshal(r.Spec.GetValue(), &spec) != nil {
		return nil, grpcError(fmt.Errorf("exec %s: %w: process spec is missing or not JSON", r.ExecID, errdefs.ErrInvalidArgument))
	}
	spec.Terminal = r.Terminal
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := c.execs[r.ExecID]; ok {
		return nil, grpcError(fmt.Errorf("exec %s in task %s: %w", r.ExecID, r.ID, errdefs.ErrAlreadyExists))
	}
	c.execs[r.ExecID] = newProcess(r.ID, r.ExecID, stdio{r.Stdin, r.Stdout, r.Stderr, r.Terminal}, &spec)
	s.publish(runtime.TaskExecAddedEventTopic, &eventstypes.TaskExecAdded{ContainerID: r.ID, ExecID: r.ExecID})
	return &emptypb.Empty{}, nil
}

// Delete removes an exited process. Deleting the pod's sandbox task
// removes the VM.
func (s *service) Delete(ctx context.Context, r *taskAPI.DeleteRequest) (*taskAPI.DeleteResponse, error) {
	defer logDuration(ctx, "delete", r.ID)()
	c, p, err := s.lookup(r.ID, r.ExecID)
	if err != nil {
		return nil, grpcError(err)
	}
	switch p.current() {
	case stateRunning, statePaused:
		return nil, grpcError(fmt.Errorf("delete %s: %w: it is still running", p.name(), errdefs.ErrFailedPrecondition))
	case stateCreated:
		if r.ExecID == "" {
			s.sb.SignalProcess(ctx, r.ID, "", syscall.SIGKILL, true)
		}
		p.setExited(signalled(syscall.SIGKILL))
	}
	if err := p.move(stateDeleted); err != nil {
		return nil, grpcError(err)
	}
	if pp := p.pipes; pp != nil {
		pp.close()
	}
	st := p.exitStatus()
	resp := &taskAPI.DeleteResponse{Pid: s.vmPid, ExitStatus: uint32(st.Code), ExitedAt: protobuf.ToTimestamp(st.ExitedAt)}
	if r.ExecID != "" {
		if p.spec != nil && s.sb != nil {
			s.sb.DeleteProcess(ctx, r.ID, r.ExecID)
		}
		s.mu.Lock()
		delete(c.execs, r.ExecID)
		s.mu.Unlock()
		return resp, nil
	}
	s.mu.Lock()
	delete(s.containers, r.ID)
	s.removals++
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.removals--
		s.mu.Unlock()
		s.shutdownAfterReply()
	}()
	if err := s.removeContainer(ctx, c); err != nil {
		return nil, grpcError(err)
	}
	s.publish(runtime.TaskDeleteEventTopic, &eventstypes.TaskDelete{
		ContainerID: r.ID, Pid: s.vmPid, ExitStatus: uint32(st.Code), ExitedAt: protobuf.ToTimestamp(st.ExitedAt),
	})
	return resp, nil
}

// removeContainer removes a container from the VM and its rootfs from the
// host; for the sandbox's own task, it removes the whole sandbox (any
// container still in it ends with it).
func (s *service) removeContainer(ctx context.Context, c *container) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), removeTimeout)
	defer cancel()
	var err error
	if c.id == s.sandboxID {
		s.mu.Lock()
		s.deleting = true
		rest := make([]*container, 0, len(s.containers))
		for _, o := range s.containers {
			rest = append(rest, o)
		}
		s.mu.Unlock()
		for _, o := range rest {
			s.exited(o.init, signalled(syscall.SIGKILL))
		}
		s.stopForwarding()
		err = s.sb.Delete(ctx)
		if err == nil {
			s.mu.Lock()
			s.sbDeleted = true
			s.mu.Unlock()
		}
	} else {
		err = s.sb.DeleteContainer(ctx, c.id)
		if errors.Is(err, cocoon.ErrNotFound) {
			err = nil
		}
	}
	if c.rootfsMounted {
		if uerr := mount.UnmountRecursive(filepath.Join(c.bundle, "rootfs"), 0); uerr != nil {
			err = errors.Join(err, fmt.Errorf("unmount rootfs of %s: %w", c.id, uerr))
		}
	}
	os.Remove(filepath.Join(c.bundle, bundleRecordFile))
	return err
}

// State reports a process's state.
func (s *service) State(ctx context.Context, r *taskAPI.StateRequest) (*taskAPI.StateResponse, error) {
	c, p, err := s.lookup(r.ID, r.ExecID)
	if err != nil {
		return nil, grpcError(err)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	resp := &taskAPI.StateResponse{
		ID: r.ID, ExecID: r.ExecID, Bundle: c.bundle, Pid: s.vmPid, Status: p.state.taskStatus(),
		Stdin: p.stdio.stdin, Stdout: p.stdio.stdout, Stderr: p.stdio.stderr, Terminal: p.stdio.terminal,
	}
	if p.state == stateStopped || p.state == stateDeleted {
		resp.ExitStatus = uint32(p.exit.Code)
		resp.ExitedAt = protobuf.ToTimestamp(p.exit.ExitedAt)
	}
	return resp, nil
}

// Pids lists the processes of a task (their pids in the guest).
func (s *service) Pids(ctx context.Context, r *taskAPI.PidsRequest) (*taskAPI.PidsResponse, error) {
	if _, _, err := s.lookup(r.ID, ""); err != nil {
		return nil, grpcError(err)
	}
	ps, err := s.sb.ProcessListContainer(ctx, r.ID)
	if err != nil {
		return nil, grpcError(err)
	}
	resp := &taskAPI.PidsResponse{}
	for _, p := range ps {
		resp.Processes = append(resp.Processes, &task.ProcessInfo{Pid: uint32(p.Pid)})
	}
	return resp, nil
}

// Pause freezes a task's processes.
func (s *service) Pause(ctx context.Context, r *taskAPI.PauseRequest) (*emptypb.Empty, error) {
	_, p, err := s.lookup(r.ID, "")
	if err != nil {
		return nil, grpcError(err)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if !canMove(p.state, statePaused) {
		return nil, grpcError(fmt.Errorf("pause %s: %w: it is %s", r.ID, errdefs.ErrFailedPrecondition, p.state))
	}
	if err := s.sb.PauseContainer(ctx, r.ID); err != nil {
		return nil, grpcError(err)
	}
	p.moveLocked(statePaused)
	s.publish(runtime.TaskPausedEventTopic, &eventstypes.TaskPaused{ContainerID: r.ID})
	return &emptypb.Empty{}, nil
}

// Resume thaws a paused task.
func (s *service) Resume(ctx context.Context, r *taskAPI.ResumeRequest) (*emptypb.Empty, error) {
	_, p, err := s.lookup(r.ID, "")
	if err != nil {
		return nil, grpcError(err)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.state != statePaused {
		return nil, grpcError(fmt.Errorf("resume %s: %w: it is %s", r.ID, errdefs.ErrFailedPrecondition, p.state))
	}
	if err := s.sb.ResumeContainer(ctx, r.ID); err != nil {
		return nil, grpcError(err)
	}
	p.moveLocked(stateRunning)
	s.publish(runtime.TaskResumedEventTopic, &eventstypes.TaskResumed{ContainerID: r.ID})
	return &emptypb.Empty{}, nil
}

// Checkpoint is not supported: a VM's containers cannot be checkpointed
// with CRIU from the host.
func (s *service) Checkpoint(ctx context.Context, r *taskAPI.CheckpointTaskRequest) (*emptypb.Empty, error) {
	return nil, grpcError(fmt.Errorf("checkpoint %s: %w: Cocoon does not checkpoint containers", r.ID, errdefs.ErrNotImplemented))
}

// Kill signals a process, or with All every process of the task.
func (s *service) Kill(ctx context.Context, r *taskAPI.KillRequest) (*emptypb.Empty, error) {
	_, p, err := s.lookup(r.ID, r.ExecID)
	if err != nil {
		return nil, grpcError(err)
	}
	finished := func() error {
		return grpcError(fmt.Errorf("kill %s: %w: process already finished", p.name(), errdefs.ErrNotFound))
	}
	switch p.current() {
	case stateStopped, stateDeleted:
		return nil, finished()
	case stateCreated:
		if r.ExecID != "" { // not started: there is nothing in the guest
			p.setExited(signalled(syscall.Signal(r.Signal)))
			return &emptypb.Empty{}, nil
		}
	}
	if err := s.sb.SignalProcess(ctx, r.ID, r.ExecID, syscall.Signal(r.Signal), r.All && r.ExecID == ""); err != nil {
		if p.current() == stateStopped {
			return nil, finished()
		}
		return nil, grpcError(err)
	}
	return &emptypb.Empty{}, nil
}

// ResizePty resizes a process's terminal.
func (s *service) ResizePty(ctx context.Context, r *taskAPI.ResizePtyRequest) (*emptypb.Empty, error) {
	if _, _, err := s.lookup(r.ID, r.ExecID); err != nil {
		return nil, grpcError(err)
	}
	if err := s.sb.WinsizeProcess(ctx, r.ID, r.ExecID, r.Height, r.Width); err != nil {
		return nil, grpcError(err)
	}
	return &emptypb.Empty{}, nil
}

// CloseIO closes a process's stdin.
func (s *service) CloseIO(ctx context.Context, r *taskAPI.CloseIORequest) (*emptypb.Empty, error) {
	_, p, err := s.lookup(r.ID, r.ExecID)
	if err != nil {
		return nil, grpcError(err)
	}
	if r.Stdin {
		p.mu.Lock()
		pp := p.pipes
		p.mu.Unlock()
		if pp != nil {
			pp.closeStdinSoon()
		}
	}
	return &emptypb.Empty{}, nil
}

// Update changes a task's resource limits.
func (s *service) Update(ctx context.Context, r *taskAPI.UpdateTaskRequest) (*emptypb.Empty, error) {
	if _, _, err := s.lookup(r.ID, ""); err != nil {
		return nil, grpcError(err)
	}
	var res specs.LinuxResources
	if r.Resources == nil || !strings.HasSuffix(r.Resources.GetTypeUrl(), "LinuxResources") || json.Unmarshal(r.Resources.GetValue(), &res) != nil {
		return nil, grpcError(fmt.Errorf("update %s: %w: resources must be OCI LinuxResources", r.ID, errdefs.ErrInvalidArgument))
	}
	if err := s.sb.UpdateContainer(ctx, r.ID, &res); err != nil {
		return nil, grpcError(err)
	}
	return &emptypb.Empty{}, nil
}

// Wait waits for a process to exit.
func (s *service) Wait(ctx context.Context, r *taskAPI.WaitRequest) (*taskAPI.WaitResponse, error) {
	_, p, err := s.lookup(r.ID, r.ExecID)
	if err != nil {
		return nil, grpcError(err)
	}
	select {
	case <-p.done:
	case <-ctx.Done():
		return nil, grpcError(ctx.Err())
	}
	st := p.exitStatus()
	return &taskAPI.WaitResponse{ExitStatus: uint32(st.Code), ExitedAt: protobuf.ToTimestamp(st.ExitedAt)}, nil
}

// Stats reports a task's cgroup metrics from the guest.
func (s *service) Stats(ctx context.Context, r *taskAPI.StatsRequest) (*taskAPI.StatsResponse, error) {
	if _, _, err := s.lookup(r.ID, ""); err != nil {
		return nil, grpcError(err)
	}
	st, err := s.sb.StatsContainer(ctx, r.ID)
	if err != nil {
		return nil, grpcError(err)
	}
	a, err := typeurl.MarshalAny(metrics(st))
	if err != nil {
		return nil, grpcError(err)
	}
	return &taskAPI.StatsResponse{Stats: protobuf.FromAny(a)}, nil
}

// Connect reports the shim's and the task's host pids (the VM's).
func (s *service) Connect(ctx context.Context, r *taskAPI.ConnectRequest) (*taskAPI.ConnectResponse, error) {
	if _, _, err := s.lookup(r.ID, ""); err != nil {
		return nil, grpcError(err)
	}
	return &taskAPI.ConnectResponse{ShimPid: uint32(os.Getpid()), TaskPid: s.vmPid}, nil
}

// Shutdown ends the shim once it serves no task and creates none: at
// once, or when the last task is deleted or the last Create ends.
// containerd asks after each task's Delete and after a failed Create.
func (s *service) Shutdown(ctx context.Context, r *taskAPI.ShutdownRequest) (*emptypb.Empty, error) {
	s.mu.Lock()
	s.shutdownAsked = true
	s.mu.Unlock()
	s.shutdownIfIdle()
	return &emptypb.Empty{}, nil
}

// shutdownIfIdle ends the shim if containerd asked it to and it serves
// no task, creates none and removes none.
func (s *service) shutdownIfIdle() {
	s.mu.Lock()
	idle := s.shutdownAsked && len(s.containers) == 0 && len(s.creating) == 0 && s.removals == 0
	s.mu.Unlock()
	if idle {
		s.shutdown.Shutdown()
	}
}

// shutdownAfterReply is shutdownIfIdle at the end of a request, which
// must not end the shim before the request's reply is out: containerd
// would get "ttrpc: closed" instead (and the CRI, failing to delete the
// pod's task, retries StopPodSandbox's cleanup a second later). It waits
// defaultReplyGrace; containerd asks Shutdown right after a Delete, which
// ends an idle shim at once, so the wait matters only when it does not.
func (s *service) shutdownAfterReply() {
	grace := s.replyGrace
	if grace == 0 {
		grace = defaultReplyGrace
	}
	time.AfterFunc(grace, s.shutdownIfIdle)
}

// defaultReplyGrace is how long a request's reply is given to reach
// containerd before the shim may exit.
const defaultReplyGrace = 500 * time.Millisecond

// logDuration logs at debug level how long an operation took.
func logDuration(ctx context.Context, op, id string) func() {
	start := time.Now()
	return func() {
		log.G(ctx).WithField("task", id).WithField("took", time.Since(start)).Debug(op)
	}
}
