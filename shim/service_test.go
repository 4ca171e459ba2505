package shim

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cocoon-runtime/cocoon"
	eventstypes "github.com/containerd/containerd/api/events"
	taskAPI "github.com/containerd/containerd/api/runtime/task/v2"
	"github.com/containerd/containerd/api/types/task"
	"github.com/containerd/containerd/errdefs"
	"github.com/containerd/containerd/protobuf"
	"github.com/containerd/containerd/runtime"
	"github.com/containerd/typeurl/v2"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// The unit tests of the task service: the library below it is the fake
// of fakes_test.go. The shim's real-VM tests are in integration/.

// wantKind fails unless err, as containerd receives it, is of kind is.
func wantKind(t *testing.T, what string, err error, is func(error) bool) {
	t.Helper()
	if !is(errdefs.FromGRPC(err)) {
		t.Errorf("%s: %v, want another kind of error", what, err)
	}
}

func (u *unitService) state(t *testing.T, id, execID string) *taskAPI.StateResponse {
	t.Helper()
	st, err := u.State(u.ctx, &taskAPI.StateRequest{ID: id, ExecID: execID})
	if err != nil {
		t.Fatalf("state of %s/%s: %v", id, execID, err)
	}
	return st
}

// A task's life: created, started, killed, waited for, deleted; each step
// calls the sandbox, publishes its event and shows in State.
func TestTaskLifecycle(t *testing.T) {
	u := newUnitService(t)
	ctx := u.ctx
	req, out := u.create(t, "t1", map[string]string{"k": "v"})
	resp, err := u.Create(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.Pid != fakeVMPid {
		t.Errorf("create reports pid %d, want the VM's %d", resp.Pid, fakeVMPid)
	}
	if len(u.lib.opts) != 1 || u.lib.opts[0].StateDir != "/run/cocoon-unit" {
		t.Errorf("runtime options %+v, want the configuration's state dir", u.lib.opts)
	}
	cfg := u.lib.created[0]
	if cfg.ID != "t1" || len(cfg.Containers) != 1 || cfg.Containers[0].ID != "t1" || cfg.Annotations["k"] != "v" {
		t.Errorf("sandbox created with %+v", cfg)
	}
	rec, err := readBundleRecord(req.Bundle)
	if err != nil || rec.SandboxID != "t1" || rec.StateDir != "/run/cocoon-unit" {
		t.Errorf("bundle record %+v, %v", rec, err)
	}
	ev, n := u.pub.next(t, runtime.TaskCreateEventTopic, 0)
	if c := ev.(*eventstypes.TaskCreate); c.ContainerID != "t1" || c.Pid != fakeVMPid || c.Bundle != req.Bundle {
		t.Errorf("create event %+v", c)
	}
	if st := u.state(t, "t1", ""); st.Status != task.Status_CREATED || st.Pid != fakeVMPid || st.Bundle != req.Bundle {
		t.Errorf("state after create: %+v", st)
	}
	sb := u.lib.sandbox(t, 0)

	if _, err := u.Start(ctx, &taskAPI.StartRequest{ID: "t1"}); err != nil {
		t.Fatal(err)
	}
	if got := sb.List("StartContainer"); !slices.Equal(got, []string{"StartContainer t1"}) {
		t.Errorf("sandbox calls on start: %v", got)
	}
	_, n = u.pub.next(t, runtime.TaskStartEventTopic, n)
	if st := u.state(t, "t1", ""); st.Status != task.Status_RUNNING {
		t.Errorf("state after start: %v", st.Status)
	}
	if _, err := u.Start(ctx, &taskAPI.StartRequest{ID: "t1"}); !errdefs.IsFailedPrecondition(errdefs.FromGRPC(err)) {
		t.Errorf("second start: %v, want a precondition error", err)
	}

	if _, err := u.Pause(ctx, &taskAPI.PauseRequest{ID: "t1"}); err != nil {
		t.Fatal(err)
	}
	if st := u.state(t, "t1", ""); st.Status != task.Status_PAUSED {
		t.Errorf("state after pause: %v", st.Status)
	}
	if _, err := u.Resume(ctx, &taskAPI.ResumeRequest{ID: "t1"}); err != nil {
		t.Fatal(err)
	}
	_, n = u.pub.next(t, runtime.TaskResumedEventTopic, n)

	waited := make(chan *taskAPI.WaitResponse, 1)
	go func() {
		w, err := u.Wait(ctx, &taskAPI.WaitRequest{ID: "t1"})
		if err != nil {
			t.Error(err)
		}
		waited <- w
	}()
	if _, err := u.Kill(ctx, &taskAPI.KillRequest{ID: "t1", Signal: uint32(syscall.SIGTERM), All: true}); err != nil {
		t.Fatal(err)
	}
	if got := sb.List("SignalProcess"); !slices.Equal(got, []string{"SignalProcess t1  15 true"}) {
		t.Errorf("sandbox calls on kill: %v", got)
	}
	ev, n = u.pub.next(t, runtime.TaskExitEventTopic, n)
	if e := ev.(*eventstypes.TaskExit); e.ContainerID != "t1" || e.ID != "t1" || e.ExitStatus != 143 || e.Pid != fakeVMPid {
		t.Errorf("exit event %+v, want t1 exiting 143", e)
	}
	select {
	case w := <-waited:
		if w.ExitStatus != 143 {
			t.Errorf("wait: exit status %d, want 143", w.ExitStatus)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("wait did not return after the exit")
	}
	if st := u.state(t, "t1", ""); st.Status != task.Status_STOPPED || st.ExitStatus != 143 {
		t.Errorf("state after exit: %+v", st)
	}
	if b, _ := os.ReadFile(out); string(b) != "out of t1\n" {
		t.Errorf("stdout file has %q", b)
	}
	if _, err := u.Kill(ctx, &taskAPI.KillRequest{ID: "t1", Signal: 9}); !errdefs.IsNotFound(errdefs.FromGRPC(err)) {
		t.Errorf("kill of an exited task: %v, want not found", err)
	}

	d, err := u.Delete(ctx, &taskAPI.DeleteRequest{ID: "t1"})
	if err != nil {
		t.Fatal(err)
	}
	if d.ExitStatus != 143 || d.Pid != fakeVMPid {
		t.Errorf("delete response %+v", d)
	}
	if !sb.deleted {
		t.Error("deleting the sandbox's task left the sandbox")
	}
	u.pub.next(t, runtime.TaskDeleteEventTopic, n)
	if _, err := os.Stat(filepath.Join(req.Bundle, bundleRecordFile)); !os.IsNotExist(err) {
		t.Errorf("bundle record left: %v", err)
	}
	_, err = u.State(ctx, &taskAPI.StateRequest{ID: "t1"})
	wantKind(t, "state after delete", err, errdefs.IsNotFound)
	want := []string{runtime.TaskCreateEventTopic, runtime.TaskStartEventTopic, runtime.TaskPausedEventTopic,
		runtime.TaskResumedEventTopic, runtime.TaskExitEventTopic, runtime.TaskDeleteEventTopic}
	if got := u.pub.topics(); !slices.Equal(got, want) {
		t.Errorf("events %v, want %v", got, want)
	}
}

// An exec: added, started in the guest, its exit published with its
// exec ID, deleted; an exec not started ends without the guest.
func TestTaskExec(t *testing.T) {
	u := newUnitService(t)
	ctx := u.ctx
	u.createTask(t, "t1", nil)
	sb := u.lib.sandbox(t, 0)
	spec, _ := typeurl.MarshalAny(&specs.Process{Args: []string{"ls", "-l"}, Cwd: "/"})
	exec := func(id string) error {
		_, err := u.Exec(ctx, &taskAPI.ExecProcessRequest{ID: "t1", ExecID: id, Spec: protobuf.FromAny(spec)})
		return err
	}
	wantKind(t, "exec in a created task", exec("e1"), errdefs.IsFailedPrecondition)
	if _, err := u.Start(ctx, &taskAPI.StartRequest{ID: "t1"}); err != nil {
		t.Fatal(err)
	}
	if err := exec("e1"); err != nil {
		t.Fatal(err)
	}
	wantKind(t, "duplicate exec", exec("e1"), errdefs.IsAlreadyExists)
	_, err := u.Exec(ctx, &taskAPI.ExecProcessRequest{ID: "t1", ExecID: "bad"})
	wantKind(t, "exec without a spec", err, errdefs.IsInvalidArgument)
	if st := u.state(t, "t1", "e1"); st.Status != task.Status_CREATED {
		t.Errorf("added exec is %v", st.Status)
	}
	if len(sb.List("EnterContainer")) != 0 {
		t.Fatal("exec reached the guest before Start")
	}
	if _, err := u.Start(ctx, &taskAPI.StartRequest{ID: "t1", ExecID: "e1"}); err != nil {
		t.Fatal(err)
	}
	if got := sb.List("EnterContainer"); !slices.Equal(got, []string{"EnterContainer t1 e1 [ls -l]"}) {
		t.Errorf("sandbox calls on exec start: %v", got)
	}
	ev, n := u.pub.next(t, runtime.TaskExecStartedEventTopic, 0)
	if e := ev.(*eventstypes.TaskExecStarted); e.ExecID != "e1" {
		t.Errorf("exec started event %+v", e)
	}
	sb.exit("t1", "e1", 3)
	ev, _ = u.pub.next(t, runtime.TaskExitEventTopic, n)
	if e := ev.(*eventstypes.TaskExit); e.ContainerID != "t1" || e.ID != "e1" || e.ExitStatus != 3 {
		t.Errorf("exec's exit event %+v, want e1 exiting 3", e)
	}
	if st := u.state(t, "t1", "e1"); st.Status != task.Status_STOPPED || st.ExitStatus != 3 {
		t.Errorf("exited exec: %+v", st)
	}
	if st := u.state(t, "t1", ""); st.Status != task.Status_RUNNING {
		t.Errorf("the task is %v once its exec exited", st.Status)
	}
	if _, err := u.Delete(ctx, &taskAPI.DeleteRequest{ID: "t1", ExecID: "e1"}); err != nil {
		t.Fatal(err)
	}
	if got := sb.List("DeleteProcess"); !slices.Equal(got, []string{"DeleteProcess t1 e1"}) {
		t.Errorf("sandbox calls on exec delete: %v", got)
	}
	_, err = u.State(ctx, &taskAPI.StateRequest{ID: "t1", ExecID: "e1"})
	wantKind(t, "state of a deleted exec", err, errdefs.IsNotFound)

	// Killed before it started: it ends without reaching the guest.
	if err := exec("e2"); err != nil {
		t.Fatal(err)
	}
	if _, err := u.Kill(ctx, &taskAPI.KillRequest{ID: "t1", ExecID: "e2", Signal: 9}); err != nil {
		t.Fatal(err)
	}
	if st := u.state(t, "t1", "e2"); st.Status != task.Status_STOPPED || st.ExitStatus != 137 {
		t.Errorf("exec killed before start: %+v", st)
	}
	if got := sb.List("SignalProcess t1 e2"); len(got) > 0 {
		t.Errorf("signal of an exec not started reached the guest: %v", got)
	}
	if _, err := u.Start(ctx, &taskAPI.StartRequest{ID: "t1", ExecID: "e2"}); !errdefs.IsFailedPrecondition(errdefs.FromGRPC(err)) {
		t.Errorf("start of a killed exec: %v", err)
	}
}

// A pod: the first task boots the VM, the pod's containers join it, and
// the VM goes with the sandbox's task; tasks that do not fit are refused.
func TestTaskPod(t *testing.T) {
	u := newUnitService(t)
	ctx := u.ctx
	u.createTask(t, "p1", map[string]string{annContainerType: "sandbox", annSandboxID: "p1"})
	sb := u.lib.sandbox(t, 0)
	cReq := u.createTask(t, "c1", map[string]string{annContainerType: "container", annSandboxID: "p1"})
	if len(u.lib.created) != 1 {
		t.Errorf("%d sandboxes created, want the pod's one", len(u.lib.created))
	}
	if got := sb.List("CreateContainer"); !slices.Equal(got, []string{"CreateContainer c1"}) {
		t.Errorf("sandbox calls for the pod's container: %v", got)
	}
	if rec, err := readBundleRecord(cReq.Bundle); err != nil || rec.SandboxID != "p1" {
		t.Errorf("container's bundle record %+v, %v", rec, err)
	}

	other, _ := u.create(t, "c2", map[string]string{annContainerType: "container", annSandboxID: "p2"})
	_, err := u.Create(ctx, other)
	wantKind(t, "container of another pod", err, errdefs.IsFailedPrecondition)
	second, _ := u.create(t, "p3", nil)
	_, err = u.Create(ctx, second)
	wantKind(t, "second sandbox in one shim", err, errdefs.IsFailedPrecondition)
	_, err = u.Create(ctx, cReq)
	wantKind(t, "same task again", err, errdefs.IsAlreadyExists)
	hostNet, _ := u.create(t, "c3", map[string]string{annContainerType: "container", annSandboxID: "p1"})
	spec, _ := cocoon.LoadSpec(hostNet.Bundle)
	spec.Linux.Namespaces = slices.DeleteFunc(spec.Linux.Namespaces, func(ns specs.LinuxNamespace) bool { return ns.Type == specs.NetworkNamespace })
	b, _ := json.Marshal(spec)
	os.WriteFile(filepath.Join(hostNet.Bundle, "config.json"), b, 0o644)
	_, err = u.Create(ctx, hostNet)
	wantKind(t, "hostNetwork pod container", err, errdefs.IsInvalidArgument)
	if got := sb.List("CreateContainer"); len(got) != 1 {
		t.Errorf("refused tasks reached the sandbox: %v", got)
	}

	// The container's Delete removes it from the VM; the sandbox's
	// removes the VM, and every task left in it exits.
	if _, err := u.Delete(ctx, &taskAPI.DeleteRequest{ID: "c1"}); err != nil {
		t.Fatal(err)
	}
	if got := sb.List("DeleteContainer"); !slices.Equal(got, []string{"DeleteContainer c1"}) || sb.deleted {
		t.Errorf("container delete: calls %v, sandbox deleted %v", got, sb.deleted)
	}
	if _, err := u.Start(ctx, &taskAPI.StartRequest{ID: "p1"}); err != nil {
		t.Fatal(err)
	}
	_, err = u.Delete(ctx, &taskAPI.DeleteRequest{ID: "p1"})
	wantKind(t, "delete of a running task", err, errdefs.IsFailedPrecondition)
	if _, err := u.Kill(ctx, &taskAPI.KillRequest{ID: "p1", Signal: 9}); err != nil {
		t.Fatal(err)
	}
	if _, err := u.Wait(ctx, &taskAPI.WaitRequest{ID: "p1"}); err != nil {
		t.Fatal(err)
	}
	if _, err := u.Delete(ctx, &taskAPI.DeleteRequest{ID: "p1"}); err != nil {
		t.Fatal(err)
	}
	if !sb.deleted {
		t.Error("the sandbox's task was deleted but not its sandbox")
	}
}

// The library's errors reach containerd as its error kinds, and a failed
// Create leaves nothing reserved.
func TestTaskErrors(t *testing.T) {
	u := newUnitService(t)
	ctx := u.ctx
	req, _ := u.create(t, "t1", nil)
	u.lib.createErr = errors.Join(cocoon.ErrInvalidConfig, errors.New("bad spec"))
	_, err := u.Create(ctx, req)
	wantKind(t, "create the library refuses", err, errdefs.IsInvalidArgument)
	if !strings.Contains(err.Error(), "bad spec") {
		t.Errorf("create error lost the library's message: %v", err)
	}
	if _, err := os.Stat(filepath.Join(req.Bundle, bundleRecordFile)); !os.IsNotExist(err) {
		t.Errorf("bundle record left after a failed create: %v", err)
	}
	u.lib.createErr = nil
	if _, err := u.Create(ctx, req); err != nil {
		t.Fatalf("create after a failed create: %v", err)
	}
	sb := u.lib.sandbox(t, 0)

	_, err = u.Create(ctx, &taskAPI.CreateTaskRequest{ID: "t2", Bundle: req.Bundle, Checkpoint: "/x"})
	wantKind(t, "create from a checkpoint", err, errdefs.IsNotImplemented)
	_, err = u.Create(ctx, &taskAPI.CreateTaskRequest{ID: "t2", Bundle: t.TempDir()})
	wantKind(t, "create without a spec", err, errdefs.IsInvalidArgument)
	_, err = u.Start(ctx, &taskAPI.StartRequest{ID: "nope"})
	wantKind(t, "start of an unknown task", err, errdefs.IsNotFound)
	_, err = u.Start(ctx, &taskAPI.StartRequest{ID: "t1", ExecID: "nope"})
	wantKind(t, "start of an unknown exec", err, errdefs.IsNotFound)
	_, err = u.Pause(ctx, &taskAPI.PauseRequest{ID: "t1"})
	wantKind(t, "pause of a created task", err, errdefs.IsFailedPrecondition)
	_, err = u.Resume(ctx, &taskAPI.ResumeRequest{ID: "t1"})
	wantKind(t, "resume of a created task", err, errdefs.IsFailedPrecondition)
	_, err = u.Update(ctx, &taskAPI.UpdateTaskRequest{ID: "t1"})
	wantKind(t, "update without resources", err, errdefs.IsInvalidArgument)

	sb.FailOn("StartContainer", errors.Join(cocoon.ErrState, errors.New("vm gone")))
	_, err = u.Start(ctx, &taskAPI.StartRequest{ID: "t1"})
	wantKind(t, "start the sandbox refuses", err, errdefs.IsFailedPrecondition)
	if st := u.state(t, "t1", ""); st.Status != task.Status_CREATED {
		t.Errorf("a failed start left the task %v", st.Status)
	}
	sb.FailOn("StartContainer", nil)
	if _, err := u.Start(ctx, &taskAPI.StartRequest{ID: "t1"}); err != nil {
		t.Fatal(err)
	}
	sb.FailOn("SignalProcess", errors.Join(cocoon.ErrNotFound, errors.New("gone")))
	_, err = u.Kill(ctx, &taskAPI.KillRequest{ID: "t1", Signal: 9})
	wantKind(t, "kill the sandbox cannot deliver", err, errdefs.IsNotFound)

	limit := int64(5)
	res, _ := typeurl.MarshalAny(&specs.LinuxResources{Pids: &specs.LinuxPids{Limit: &limit}})
	if _, err := u.Update(ctx, &taskAPI.UpdateTaskRequest{ID: "t1", Resources: protobuf.FromAny(res)}); err != nil {
		t.Fatal(err)
	}
	if got := sb.List("UpdateContainer"); !slices.Equal(got, []string{"UpdateContainer t1 5"}) {
		t.Errorf("update calls %v", got)
	}
	pids, err := u.Pids(ctx, &taskAPI.PidsRequest{ID: "t1"})
	if err != nil || len(pids.Processes) != 2 || pids.Processes[1].Pid != 7 {
		t.Errorf("pids %v, %v", pids, err)
	}
	if _, err := u.Stats(ctx, &taskAPI.StatsRequest{ID: "t1"}); err != nil {
		t.Errorf("stats: %v", err)
	}
	sb.FailOn("StatsContainer", errors.Join(cocoon.ErrState, errors.New("no vm")))
	_, err = u.Stats(ctx, &taskAPI.StatsRequest{ID: "t1"})
	wantKind(t, "stats the sandbox refuses", err, errdefs.IsFailedPrecondition)

	// Wait honours its context.
	wctx, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	_, err = u.Wait(wctx, &taskAPI.WaitRequest{ID: "t1"})
	wantKind(t, "wait cut short", err, func(err error) bool { return errdefs.IsDeadlineExceeded(err) || errdefs.IsCanceled(err) })
}

// When the VM dies every process exits with 255 and the VM's resources
// are released.
func TestTaskVMDies(t *testing.T) {
	u := newUnitService(t)
	ctx := u.ctx
	u.createTask(t, "t1", nil)
	if _, err := u.Start(ctx, &taskAPI.StartRequest{ID: "t1"}); err != nil {
		t.Fatal(err)
	}
	spec, _ := typeurl.MarshalAny(&specs.Process{Args: []string{"sleep", "9"}})
	if _, err := u.Exec(ctx, &taskAPI.ExecProcessRequest{ID: "t1", ExecID: "e1", Spec: protobuf.FromAny(spec)}); err != nil {
		t.Fatal(err)
	}
	sb := u.lib.sandbox(t, 0)
	sb.monitor <- errors.New("vm exited")
	ev, n := u.pub.next(t, runtime.TaskExitEventTopic, 0)
	ev2, _ := u.pub.next(t, runtime.TaskExitEventTopic, n)
	ids := []string{ev.(*eventstypes.TaskExit).ID, ev2.(*eventstypes.TaskExit).ID}
	slices.Sort(ids)
	if !slices.Equal(ids, []string{"e1", "t1"}) {
		t.Errorf("exits of %v, want t1 and e1", ids)
	}
	for _, e := range []*eventstypes.TaskExit{ev.(*eventstypes.TaskExit), ev2.(*eventstypes.TaskExit)} {
		if e.ExitStatus != vmDiedStatus {
			t.Errorf("%s exited %d, want %d", e.ID, e.ExitStatus, vmDiedStatus)
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for len(sb.List("Stop true")) == 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if got := sb.List("Stop"); !slices.Equal(got, []string{"Stop true"}) {
		t.Errorf("the dead VM was not stopped with force: %v", got)
	}
	if st := u.state(t, "t1", ""); st.Status != task.Status_STOPPED || st.ExitStatus != vmDiedStatus {
		t.Errorf("task after the VM died: %+v", st)
	}
}

// A shim that exits with its sandbox still there removes it.
func TestShutdownRemovesSandbox(t *testing.T) {
	u := newUnitService(t)
	u.createTask(t, "t1", nil)
	sb := u.lib.sandbox(t, 0)
	u.sd.Shutdown()
	select {
	case <-u.sd.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("shutdown did not finish")
	}
	if !sb.deleted || sb.released != 1 || !u.pub.closed {
		t.Errorf("after shutdown: sandbox deleted %v, released %d times, publisher closed %v", sb.deleted, sb.released, u.pub.closed)
	}
}
