package shim

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cocoon-runtime/cocoon"
	"github.com/cocoon-runtime/cocoon/internal/specutil"
	"github.com/cocoon-runtime/cocoon/internal/testutil"
	taskAPI "github.com/containerd/containerd/api/runtime/task/v2"
	"github.com/containerd/containerd/events"
	"github.com/containerd/containerd/namespaces"
	"github.com/containerd/containerd/pkg/shutdown"
	"github.com/containerd/containerd/protobuf"
	"github.com/containerd/typeurl/v2"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/protobuf/types/known/anypb"

	runtimeoptions "github.com/containerd/containerd/pkg/runtimeoptions/v1"
)

// Fakes at the boundaries of library.go, for the unit tests of the task
// service: a runtime whose sandboxes keep their containers' and
// processes' states, and a publisher that collects the events.

// fakeLib is the library: newRuntime and the runtime it returns.
type fakeLib struct {
	mu        sync.Mutex
	opts      []cocoon.Options
	created   []cocoon.SandboxConfig
	sandboxes []*fakeSandbox
	// createErr fails CreateSandbox.
	createErr error
}

func (l *fakeLib) newRuntime(o cocoon.Options) (podRuntime, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.opts = append(l.opts, o)
	return l, nil
}

func (l *fakeLib) CreateSandbox(ctx context.Context, cfg cocoon.SandboxConfig) (podSandbox, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.created = append(l.created, cfg)
	if l.createErr != nil {
		return nil, l.createErr
	}
	sb := &fakeSandbox{id: cfg.ID, containers: map[string]string{}, procs: map[string]*fakeProc{}, monitor: make(chan error, 1)}
	for _, c := range cfg.Containers {
		sb.addContainer(c.ID)
	}
	l.sandboxes = append(l.sandboxes, sb)
	return sb, nil
}

func (l *fakeLib) GC(ctx context.Context) (cocoon.GCReport, error) { return cocoon.GCReport{}, nil }

// sandbox returns the i-th sandbox created.
func (l *fakeLib) sandbox(t *testing.T, i int) *fakeSandbox {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.sandboxes) <= i {
		t.Fatalf("%d sandboxes created, want at least %d", len(l.sandboxes), i+1)
	}
	return l.sandboxes[i]
}

const fakeVMPid = 4242

// fakeSandbox is a sandbox whose containers live in memory.
type fakeSandbox struct {
	id string
	testutil.Calls

	mu         sync.Mutex
	containers map[string]string // id → created, running, paused, stopped
	procs      map[string]*fakeProc
	monitor    chan error
	deleted    bool
	stopped    bool
	released   int
}

// fakeProc is a process: its output, and its exit once it ended.
type fakeProc struct {
	out  string
	exit chan cocoon.ExitStatus // buffered: holds the exit once it came
}

func (sb *fakeSandbox) addContainer(id string) {
	sb.containers[id] = "created"
	sb.procs[id+"/"] = &fakeProc{out: "out of " + id + "\n", exit: make(chan cocoon.ExitStatus, 1)}
}

// end makes process id/execID exit with st; the caller holds sb.mu.
func (sb *fakeSandbox) end(key string, st cocoon.ExitStatus) {
	p, ok := sb.procs[key]
	if !ok {
		return
	}
	select {
	case p.exit <- st:
	default:
	}
	if id, exec, _ := strings.Cut(key, "/"); exec == "" {
		sb.containers[id] = "stopped"
	}
}

// exit makes process id/execID exit with code.
func (sb *fakeSandbox) exit(id, execID string, code int) {
	sb.mu.Lock()
	defer sb.mu.Unlock()
	sb.end(id+"/"+execID, cocoon.ExitStatus{Code: code, ExitedAt: time.Now()})
}

func (sb *fakeSandbox) ID() string { return sb.id }

func (sb *fakeSandbox) Status(ctx context.Context) cocoon.SandboxStatus {
	return cocoon.SandboxStatus{ID: sb.id, State: cocoon.StateReady, HypervisorPids: []int{fakeVMPid}}
}

func (sb *fakeSandbox) Monitor() <-chan error { return sb.monitor }

func (sb *fakeSandbox) Stop(ctx context.Context, force bool) error {
	sb.mu.Lock()
	defer sb.mu.Unlock()
	sb.stopped = true
	return sb.Record("Stop", force)
}

func (sb *fakeSandbox) Delete(ctx context.Context) error {
	sb.mu.Lock()
	defer sb.mu.Unlock()
	if err := sb.Record("Delete"); err != nil {
		return err
	}
	for key := range sb.procs {
		sb.end(key, cocoon.ExitStatus{Code: 137, Signal: 9})
	}
	sb.deleted = true
	return nil
}

func (sb *fakeSandbox) Release() error {
	sb.mu.Lock()
	defer sb.mu.Unlock()
	sb.released++
	return nil
}

func (sb *fakeSandbox) CreateContainer(ctx context.Context, cfg cocoon.ContainerConfig) error {
	sb.mu.Lock()
	defer sb.mu.Unlock()
	if err := sb.Record("CreateContainer", cfg.ID); err != nil {
		return err
	}
	if _, ok := sb.containers[cfg.ID]; ok {
		return fmt.Errorf("container %s: %w", cfg.ID, cocoon.ErrExists)
	}
	sb.addContainer(cfg.ID)
	return nil
}

// move changes container id's state from from to to.
func (sb *fakeSandbox) move(method, id, from, to string) error {
	sb.mu.Lock()
	defer sb.mu.Unlock()
	if err := sb.Record(method, id); err != nil {
		return err
	}
	st, ok := sb.containers[id]
	if !ok {
		return fmt.Errorf("container %s: %w", id, cocoon.ErrNotFound)
	}
	if st != from {
		return fmt.Errorf("%s %s: %w: it is %s", method, id, cocoon.ErrState, st)
	}
	sb.containers[id] = to
	return nil
}

func (sb *fakeSandbox) StartContainer(ctx context.Context, id string) error {
	return sb.move("StartContainer", id, "created", "running")
}

func (sb *fakeSandbox) PauseContainer(ctx context.Context, id string) error {
	return sb.move("PauseContainer", id, "running", "paused")
}

func (sb *fakeSandbox) ResumeContainer(ctx context.Context, id string) error {
	return sb.move("ResumeContainer", id, "paused", "running")
}

func (sb *fakeSandbox) UpdateContainer(ctx context.Context, id string, r *specs.LinuxResources) error {
	sb.mu.Lock()
	defer sb.mu.Unlock()
	return sb.Record("UpdateContainer", id, *r.Pids.Limit)
}

func (sb *fakeSandbox) StatsContainer(ctx context.Context, id string) (*cocoon.ContainerStats, error) {
	sb.mu.Lock()
	defer sb.mu.Unlock()
	if err := sb.Record("StatsContainer", id); err != nil {
		return nil, err
	}
	return &cocoon.ContainerStats{}, nil
}

func (sb *fakeSandbox) ProcessListContainer(ctx context.Context, id string) ([]cocoon.ProcessInfo, error) {
	sb.mu.Lock()
	defer sb.mu.Unlock()
	if err := sb.Record("ProcessListContainer", id); err != nil {
		return nil, err
	}
	return []cocoon.ProcessInfo{{Pid: 1}, {Pid: 7}}, nil
}

func (sb *fakeSandbox) DeleteContainer(ctx context.Context, id string) error {
	sb.mu.Lock()
	defer sb.mu.Unlock()
	if err := sb.Record("DeleteContainer", id); err != nil {
		return err
	}
	if _, ok := sb.containers[id]; !ok {
		return fmt.Errorf("container %s: %w", id, cocoon.ErrNotFound)
	}
	delete(sb.containers, id)
	return nil
}

func (sb *fakeSandbox) EnterContainer(ctx context.Context, id, execID string, p specs.Process) (string, error) {
	sb.mu.Lock()
	defer sb.mu.Unlock()
	if err := sb.Record("EnterContainer", id, execID, p.Args); err != nil {
		return "", err
	}
	if sb.containers[id] != "running" {
		return "", fmt.Errorf("enter %s: %w", id, cocoon.ErrState)
	}
	sb.procs[id+"/"+execID] = &fakeProc{out: "out of " + execID + "\n", exit: make(chan cocoon.ExitStatus, 1)}
	return execID, nil
}

func (sb *fakeSandbox) IOStream(ctx context.Context, id, execID string) (io.WriteCloser, io.ReadCloser, io.ReadCloser, error) {
	sb.mu.Lock()
	defer sb.mu.Unlock()
	if err := sb.Record("IOStream", id, execID); err != nil {
		return nil, nil, nil, err
	}
	p, ok := sb.procs[id+"/"+execID]
	if !ok {
		return nil, nil, nil, fmt.Errorf("process %s/%s: %w", id, execID, cocoon.ErrNotFound)
	}
	return nopWriteCloser{io.Discard}, io.NopCloser(strings.NewReader(p.out)), io.NopCloser(strings.NewReader("")), nil
}

type nopWriteCloser struct{ io.Writer }

func (nopWriteCloser) Close() error { return nil }

func (sb *fakeSandbox) SignalProcess(ctx context.Context, id, execID string, sig syscall.Signal, all bool) error {
	sb.mu.Lock()
	defer sb.mu.Unlock()
	if err := sb.Record("SignalProcess", id, execID, int(sig), all); err != nil {
		return err
	}
	if _, ok := sb.procs[id+"/"+execID]; !ok {
		return fmt.Errorf("process %s/%s: %w", id, execID, cocoon.ErrNotFound)
	}
	sb.end(id+"/"+execID, cocoon.ExitStatus{Code: 128 + int(sig), Signal: int(sig), ExitedAt: time.Now()})
	return nil
}

func (sb *fakeSandbox) WinsizeProcess(ctx context.Context, id, execID string, height, width uint32) error {
	sb.mu.Lock()
	defer sb.mu.Unlock()
	return sb.Record("WinsizeProcess", id, execID, height, width)
}

func (sb *fakeSandbox) WaitProcess(ctx context.Context, id, execID string) (cocoon.ExitStatus, error) {
	sb.mu.Lock()
	p, ok := sb.procs[id+"/"+execID]
	sb.mu.Unlock()
	if !ok {
		return cocoon.ExitStatus{}, fmt.Errorf("process %s/%s: %w", id, execID, cocoon.ErrNotFound)
	}
	select {
	case st := <-p.exit:
		p.exit <- st
		return st, nil
	case <-ctx.Done():
		return cocoon.ExitStatus{}, ctx.Err()
	}
}

func (sb *fakeSandbox) DeleteProcess(ctx context.Context, id, execID string) error {
	sb.mu.Lock()
	defer sb.mu.Unlock()
	if err := sb.Record("DeleteProcess", id, execID); err != nil {
		return err
	}
	delete(sb.procs, id+"/"+execID)
	return nil
}

// ForwardLocalhost records the call; the fake has no netns to serve.
func (sb *fakeSandbox) ForwardLocalhost(ctx context.Context) (*cocoon.Forwarder, error) {
	if err := sb.Record("ForwardLocalhost"); err != nil {
		return nil, err
	}
	return nil, errors.New("fake sandbox: no network namespace")
}

// fakePublisher collects the events the service publishes.
type fakePublisher struct {
	mu     sync.Mutex
	events []published
	more   chan struct{} // receives after each event
	closed bool
}

type published struct {
	topic string
	event events.Event
}

func (p *fakePublisher) Publish(ctx context.Context, topic string, ev events.Event) error {
	if ns, _ := namespaces.Namespace(ctx); ns != unitNamespace {
		return fmt.Errorf("event %s published in namespace %q", topic, ns)
	}
	p.mu.Lock()
	p.events = append(p.events, published{topic, ev})
	p.mu.Unlock()
	select {
	case p.more <- struct{}{}:
	default:
	}
	return nil
}

func (p *fakePublisher) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closed = true
	return nil
}

// next waits for the first event on topic after the n-th and returns it
// and its index.
func (p *fakePublisher) next(t *testing.T, topic string, after int) (events.Event, int) {
	t.Helper()
	deadline := time.After(5 * time.Second)
	for {
		p.mu.Lock()
		for i := after; i < len(p.events); i++ {
			if p.events[i].topic == topic {
				ev := p.events[i].event
				p.mu.Unlock()
				return ev, i + 1
			}
		}
		p.mu.Unlock()
		select {
		case <-p.more:
		case <-time.After(10 * time.Millisecond):
		case <-deadline:
			t.Fatalf("no %s event after event %d", topic, after)
		}
	}
}

// topics lists the topics published so far.
func (p *fakePublisher) topics() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []string
	for _, e := range p.events {
		out = append(out, e.topic)
	}
	return out
}

const unitNamespace = "unit"

// unitService is a task service on the fakes, and the context of its
// requests.
type unitService struct {
	*service
	lib *fakeLib
	pub *fakePublisher
	sd  shutdown.Service
	ctx context.Context
	// options point the service at an empty configuration file.
	options *anypb.Any
}

func newUnitService(t *testing.T) *unitService {
	t.Helper()
	ctx, cancel := context.WithCancel(namespaces.WithNamespace(context.Background(), unitNamespace))
	t.Cleanup(cancel)
	ctx, sd := shutdown.WithShutdown(ctx)
	u := &unitService{lib: &fakeLib{}, pub: &fakePublisher{more: make(chan struct{}, 1)}, sd: sd, ctx: ctx}
	u.service = newService(ctx, u.pub, sd)
	u.newRuntime = u.lib.newRuntime
	conf := filepath.Join(t.TempDir(), "cocoon.toml")
	if err := os.WriteFile(conf, []byte("[runtime]\nstate_dir = \"/run/cocoon-unit\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	a, err := typeurl.MarshalAny(&runtimeoptions.Options{ConfigPath: conf})
	if err != nil {
		t.Fatal(err)
	}
	u.options = protobuf.FromAny(a)
	return u
}

// create returns the request to create task id from a new bundle whose
// spec has annotations ann; its output goes to the file it returns.
func (u *unitService) create(t *testing.T, id string, ann map[string]string) (*taskAPI.CreateTaskRequest, string) {
	t.Helper()
	dir := t.TempDir()
	spec := specutil.Default("sh")
	spec.Annotations = ann
	// As the CRI gives a pod's task: the pod's network namespace.
	spec.Linux.Namespaces = append(spec.Linux.Namespaces, specs.LinuxNamespace{Type: specs.NetworkNamespace, Path: "/var/run/netns/cni-1"})
	if err := specutil.WriteBundle(dir, spec); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "stdout.log")
	return &taskAPI.CreateTaskRequest{ID: id, Bundle: dir, Stdout: "file://" + out, Options: u.options}, out
}

// createTask creates task id from a new bundle whose spec has
// annotations ann.
func (u *unitService) createTask(t *testing.T, id string, ann map[string]string) *taskAPI.CreateTaskRequest {
	t.Helper()
	req, _ := u.create(t, id, ann)
	if _, err := u.Create(u.ctx, req); err != nil {
		t.Fatal(err)
	}
	return req
}
