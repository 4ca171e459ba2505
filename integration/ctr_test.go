package integration

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cocoon-runtime/cocoon/internal/ctrtest"
	"github.com/cocoon-runtime/cocoon/internal/testutil"
	"github.com/containerd/console"
)

func exitCode(t *testing.T, err error) int {
	t.Helper()
	if err == nil {
		return 0
	}
	var ce *ctrtest.CtrError
	if !errors.As(err, &ce) {
		t.Fatalf("not a ctr failure: %v", err)
	}
	return ce.ExitCode()
}

// ctr run prints the container's output, returns its exit code, and the
// container runs on the guest's kernel; afterwards nothing is left.
func TestCtrRunOutputAndExitCode(t *testing.T) {
	e := needContainerd(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cid := id(t)
	e.removeOnCleanup(t, cid)
	args := append([]string{"run", "--rm"}, e.runtimeFlags()...)
	args = append(args, ctrtest.BusyboxImage, cid, "sh", "-c", "echo out-line; echo err-line >&2; uname -r; exit 7")
	stdout, stderr, err := e.ctrd.Ctr(ctx, args...)
	if code := exitCode(t, err); code != 7 {
		t.Fatalf("exit code %d, want 7 (err %v)\nstdout %q\nstderr %q\n%s", code, err, stdout, stderr, e.ctrd.LogTail(30))
	}
	lines := strings.Split(strings.TrimSpace(stdout), "\n")
	if len(lines) != 2 || lines[0] != "out-line" {
		t.Fatalf("stdout %q, want out-line and the kernel release", stdout)
	}
	if lines[1] == hostKernel(t) {
		t.Errorf("container kernel %q is the host's: not in a VM", lines[1])
	}
	if !strings.Contains(stderr, "err-line") || strings.Contains(stdout, "err-line") {
		t.Errorf("stderr %q / stdout %q: stderr must be separate", stderr, stdout)
	}
	e.assertNoLeaks(t, cid)
}

// A detached container: exec (with its own exit code and stdin), pause and
// resume, metrics, ps, kill, delete.
func TestCtrTaskLifecycle(t *testing.T) {
	e := needContainerd(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	cid := e.runDetached(t, ctx, "sh", "-c", "echo hi > /tmp/mark; exec sleep 1000")

	if st := taskStatus(t, e, ctx, cid); st != "RUNNING" {
		t.Fatalf("task status %q, want RUNNING", st)
	}
	// exec sees the container's filesystem and returns its own exit code.
	out, _, err := e.ctrd.Ctr(ctx, "task", "exec", "--exec-id", "x1", cid, "sh", "-c", "cat /tmp/mark; exit 3")
	if code := exitCode(t, err); code != 3 || strings.TrimSpace(out) != "hi" {
		t.Errorf("exec: exit %d output %q, want 3 and hi (%v)", code, out, err)
	}
	cmd := e.ctrd.CtrCommand(ctx, "task", "exec", "--exec-id", "x2", cid, "tr", "a-z", "A-Z")
	cmd.Stdin = strings.NewReader("through stdin\n")
	if b, err := cmd.Output(); err != nil || string(b) != "THROUGH STDIN\n" {
		t.Errorf("exec with stdin: %q, %v", b, err)
	}

	e.ctr(t, ctx, "task", "pause", cid)
	if st := taskStatus(t, e, ctx, cid); st != "PAUSED" {
		t.Errorf("after pause: %q, want PAUSED", st)
	}
	e.ctr(t, ctx, "task", "resume", cid)
	if st := taskStatus(t, e, ctx, cid); st != "RUNNING" {
		t.Errorf("after resume: %q, want RUNNING", st)
	}

	m := e.ctr(t, ctx, "task", "metrics", cid)
	usage := regexp.MustCompile(`memory\.usage\s+([0-9]+)`).FindStringSubmatch(m)
	if usage == nil || usage[1] == "0" {
		t.Errorf("metrics have no memory usage:\n%s", m)
	}
	if !regexp.MustCompile(`pids\.current\s+[1-9]`).MatchString(m) {
		t.Errorf("metrics have no pids:\n%s", m)
	}
	ps := e.ctr(t, ctx, "task", "ps", cid)
	if n := len(strings.Split(strings.TrimSpace(ps), "\n")); n < 2 {
		t.Errorf("task ps lists no process:\n%s", ps)
	}

	// Checkpoint is refused clearly.
	if _, stderr, err := e.ctrd.Ctr(ctx, "task", "checkpoint", cid); err == nil || !strings.Contains(stderr, "not implemented") && !strings.Contains(stderr, "does not checkpoint") {
		t.Errorf("checkpoint: err %v stderr %q, want a not-supported error", err, stderr)
	}

	// sleep is PID 1 of its namespace: it ignores SIGTERM, SIGKILL ends it.
	e.ctr(t, ctx, "task", "kill", "-s", "KILL", cid)
	if code := e.waitExit(t, ctx, cid); code != 137 {
		t.Errorf("exit status %d after SIGKILL, want 137", code)
	}
	e.ctr(t, ctx, "container", "delete", cid)
	e.assertNoLeaks(t, cid)
}

// waitExit waits for task cid to stop, deletes it and returns its exit
// status (ctr 1.6 has no "task wait"; "task delete" reports a non-zero
// status on stderr).
func (e *env) waitExit(t *testing.T, ctx context.Context, cid string) int {
	t.Helper()
	for taskStatus(t, e, ctx, cid) != "STOPPED" {
		if ctx.Err() != nil {
			t.Fatalf("task %s did not stop", cid)
		}
		time.Sleep(100 * time.Millisecond)
	}
	_, stderr, err := e.ctrd.Ctr(ctx, "task", "delete", cid)
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`exit code ([0-9]+)`).FindStringSubmatch(stderr)
	if m == nil {
		return 0
	}
	var code int
	fmt.Sscan(m[1], &code)
	return code
}

// runDetached runs a busybox container with Cocoon in the background, as
// `ctr run -d`, and returns its ID; the container goes when the test ends.
func (e *env) runDetached(t *testing.T, ctx context.Context, cmd ...string) string {
	t.Helper()
	cid := id(t)
	e.removeOnCleanup(t, cid)
	args := append([]string{"run", "-d"}, e.runtimeFlags()...)
	e.ctr(t, ctx, append(append(args, ctrtest.BusyboxImage, cid), cmd...)...)
	return cid
}

func taskStatus(t *testing.T, e *env, ctx context.Context, cid string) string {
	t.Helper()
	for _, line := range strings.Split(e.ctr(t, ctx, "task", "ls"), "\n") {
		f := strings.Fields(line)
		if len(f) == 3 && f[0] == cid {
			return f[2]
		}
	}
	return ""
}

// ctr run -t gives the container a real terminal of the caller's size.
func TestCtrRunTTY(t *testing.T) {
	e := needContainerd(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cid := id(t)
	e.removeOnCleanup(t, cid)
	master, slavePath, err := console.NewPty()
	if err != nil {
		t.Fatal(err)
	}
	defer master.Close()
	if err := master.Resize(console.WinSize{Height: 33, Width: 77}); err != nil {
		t.Fatal(err)
	}
	slave, err := os.OpenFile(slavePath, os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	args := append([]string{"run", "--rm", "-t"}, e.runtimeFlags()...)
	cmd := e.ctrd.CtrCommand(ctx, append(args, ctrtest.BusyboxImage, cid, "sh", "-c", "tty; stty size; exit 5")...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = slave, slave, slave
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	slave.Close()
	var out bytes.Buffer
	copied := make(chan struct{})
	go func() { io.Copy(&out, master); close(copied) }()
	err = cmd.Wait()
	select {
	case <-copied:
	case <-time.After(5 * time.Second):
	}
	if code := exitStatus(err); code != 5 {
		t.Errorf("exit %d (%v), want 5; output %q", code, err, out.String())
	}
	if !regexp.MustCompile(`/dev/pts/[0-9]+`).MatchString(out.String()) {
		t.Errorf("output %q has no /dev/pts path", out.String())
	}
	if !strings.Contains(out.String(), "33 77") {
		t.Errorf("output %q: stty size should be 33 77", out.String())
	}
	e.assertNoLeaks(t, cid)
}

func exitStatus(err error) int {
	var ee interface{ ExitCode() int }
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	if err == nil {
		return 0
	}
	return -1
}

// SIGKILL of the shim: containerd cleans up through the shim's delete
// command, and the VM goes with it.
func TestCtrShimKilled(t *testing.T) {
	e := needContainerd(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cid := e.runDetached(t, ctx, "sleep", "1000")
	qemu := pidOf(t, cid, "qemu-system")
	shim := pidOf(t, cid, "containerd-shim-cocoon-v2")
	address, err := os.ReadFile(filepath.Join(e.ctrd.State, "io.containerd.runtime.v2.task", ctrtest.DefaultNamespace, cid, "address"))
	if err != nil {
		t.Fatal(err)
	}
	socket := strings.TrimPrefix(string(address), "unix://")
	if err := syscall.Kill(shim, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	// containerd notices, runs the shim's delete, and the task is gone.
	deadline := time.Now().Add(30 * time.Second)
	for taskStatus(t, e, ctx, cid) != "" && time.Now().Before(deadline) {
		time.Sleep(200 * time.Millisecond)
	}
	if st := taskStatus(t, e, ctx, cid); st != "" {
		t.Fatalf("task still listed as %s after its shim died", st)
	}
	e.ctr(t, ctx, "container", "delete", cid)
	if err := testutil.WaitGone(ctx, qemu); err != nil {
		t.Errorf("QEMU %d outlived its pod: %v", qemu, err)
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		if _, err := os.Stat(socket); os.IsNotExist(err) {
			break
		} else if time.Now().After(deadline) {
			t.Errorf("the dead shim's socket %s is left (%v)", socket, err)
			break
		}
	}
	e.assertNoLeaks(t, cid)
}

// SIGKILL of QEMU: the task exits with a non-zero status, containerd can
// delete it, and nothing is left.
func TestCtrVMKilled(t *testing.T) {
	e := needContainerd(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cid := e.runDetached(t, ctx, "sleep", "1000")
	e.ctr(t, ctx, "task", "exec", "-d", "--exec-id", "bg", cid, "sleep", "1000")
	if err := syscall.Kill(pidOf(t, cid, "qemu-system"), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if code := e.waitExit(t, ctx, cid); code != 255 {
		t.Errorf("exit status %d after the VM died, want 255", code)
	}
	e.ctr(t, ctx, "container", "delete", cid)
	e.assertNoLeaks(t, cid)
}

// SIGKILL of virtiofsd: the pod's file operations could never finish, so
// the shim notices, stops the VM, and the task exits (instead of hanging);
// containerd can delete it, and nothing is left.
func TestCtrVirtiofsdKilled(t *testing.T) {
	e := needContainerd(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cid := e.runDetached(t, ctx, "sleep", "1000")
	b, err := os.ReadFile(filepath.Join(e.stateDir, "sandboxes", cid, "virtiofsd.pid"))
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if code := e.waitExit(t, ctx, cid); code != 255 {
		t.Errorf("exit status %d after the file server died, want 255", code)
	}
	e.ctr(t, ctx, "container", "delete", cid)
	e.assertNoLeaks(t, cid)
}

// Per-pod overrides by annotation: allowed keys apply, others are refused
// before any VM boots.
func TestCtrAnnotations(t *testing.T) {
	e := needContainerd(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cid := id(t)
	e.removeOnCleanup(t, cid)
	args := append([]string{"run", "--rm", "--annotation", "io.cocoon.config.hypervisor.machine_type=microvm"}, e.runtimeFlags()...)
	_, stderr, err := e.ctrd.Ctr(ctx, append(args, ctrtest.BusyboxImage, cid, "true")...)
	if err == nil || !strings.Contains(stderr, "not allowed") {
		t.Errorf("a non-allowlisted annotation: err %v, stderr %q; want a not-allowed error", err, stderr)
	}
	e.assertNoLeaks(t, cid)

	cid2 := id(t) + "b"
	e.removeOnCleanup(t, cid2)
	args = append([]string{"run", "--rm", "--annotation", "io.cocoon.config.hypervisor.memory_mib=384"}, e.runtimeFlags()...)
	out := e.ctr(t, ctx, append(args, ctrtest.BusyboxImage, cid2, "sh", "-c", "free -m | awk '/Mem/{print $2}'")...)
	var mib int
	if _, err := fmt.Sscan(strings.TrimSpace(out), &mib); err != nil || mib <= 256 || mib > 384 {
		t.Errorf("guest memory %q MiB, want between 256 and 384 (the annotation's 384)", out)
	}
	e.assertNoLeaks(t, cid2)
}

// The shim publishes the task events containerd and its clients follow,
// including an OOM kill.
func TestCtrEvents(t *testing.T) {
	e := needContainerd(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	events := e.ctrd.CtrCommand(ctx, "events")
	var out bytes.Buffer
	events.Stdout = &out
	if err := events.Start(); err != nil {
		t.Fatal(err)
	}
	stopped := false
	stop := func() {
		if !stopped {
			events.Process.Kill()
			events.Wait()
			stopped = true
		}
	}
	defer stop()
	time.Sleep(300 * time.Millisecond) // subscribed

	cid := e.runDetached(t, ctx, "sleep", "1000")
	e.ctr(t, ctx, "task", "exec", "--exec-id", "x1", cid, "true")
	e.ctr(t, ctx, "task", "pause", cid)
	e.ctr(t, ctx, "task", "resume", cid)
	e.ctr(t, ctx, "task", "kill", "-s", "KILL", cid)
	e.waitExit(t, ctx, cid)
	e.ctr(t, ctx, "container", "delete", cid)

	// 32 MiB of memory, and a 64 MiB /dev/shm filled: the OOM killer.
	oom := id(t) + "oom"
	e.removeOnCleanup(t, oom)
	args := append([]string{"run", "--rm", "--memory-limit", "33554432"}, e.runtimeFlags()...)
	_, _, err := e.ctrd.Ctr(ctx, append(args, ctrtest.BusyboxImage, oom, "dd", "if=/dev/zero", "of=/dev/shm/fill", "bs=1M", "count=60")...)
	if code := exitCode(t, err); code != 137 {
		t.Errorf("OOM: exit %d (%v), want 137", code, err)
	}
	time.Sleep(300 * time.Millisecond) // the last events delivered
	stop()

	seen := func(topic, id string) bool {
		for _, line := range strings.Split(out.String(), "\n") {
			if strings.Contains(line, topic) && strings.Contains(line, id) {
				return true
			}
		}
		return false
	}
	for _, topic := range []string{"/tasks/create", "/tasks/start", "/tasks/exec-added", "/tasks/exec-started", "/tasks/paused", "/tasks/resumed", "/tasks/exit", "/tasks/delete"} {
		if !seen(topic, cid) {
			t.Errorf("no %s event for %s", topic, cid)
		}
	}
	if !seen("/tasks/oom", oom) {
		t.Errorf("no /tasks/oom event for %s", oom)
	}
	if t.Failed() {
		t.Logf("events:\n%s", out.String())
	}
	e.assertNoLeaks(t, cid)
	e.assertNoLeaks(t, oom)
}

// With factory.enable_template, the shim starts pods from a VM template:
// the first run makes it, the next are restored from it, and each runs
// its own container in its own VM.
func TestCtrVMTemplates(t *testing.T) {
	e := needContainerd(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	conf := filepath.Join(e.dir, "cocoon-templates.toml")
	vmEnv := testutil.NeedVM(t)
	err := ctrtest.CocoonConfig{
		Kernel: vmEnv.Kernel, Initrd: vmEnv.Initrd, Accelerator: os.Getenv("COCOON_ACCEL"),
		StateDir: e.stateDir, DataDir: filepath.Dir(vmEnv.CacheDir), Templates: true,
	}.Write(conf)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(filepath.Join(e.stateDir, "factory")) })
	boots := map[string]bool{}
	for i := range 2 {
		cid := fmt.Sprintf("%s-%d", id(t), i)
		e.removeOnCleanup(t, cid)
		args := []string{"run", "--rm", "--runtime", "io.containerd.cocoon.v2", "--runtime-config-path", conf,
			ctrtest.BusyboxImage, cid, "sh", "-c", "uname -r; cat /proc/sys/kernel/random/uuid; exit 3"}
		stdout, stderr, err := e.ctrd.Ctr(ctx, args...)
		if code := exitCode(t, err); code != 3 {
			t.Fatalf("run %d: exit %d (%v), stderr %q\n%s", i, code, err, stderr, e.ctrd.LogTail(30))
		}
		lines := strings.Split(strings.TrimSpace(stdout), "\n")
		if len(lines) != 2 || lines[0] == hostKernel(t) {
			t.Fatalf("run %d printed %q: want the guest kernel and a uuid", i, stdout)
		}
		if boots[lines[1]] {
			t.Errorf("run %d drew the uuid of an earlier clone: clones share randomness", i)
		}
		boots[lines[1]] = true
		e.assertNoLeaks(t, cid)
	}
	if procs := pidsMentioning(filepath.Join(e.stateDir, "factory")); len(procs) > 0 {
		t.Errorf("template VM left running: %v", procs)
	}
}
