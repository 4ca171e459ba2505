package container

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/moby/sys/mountinfo"
	"github.com/opencontainers/runc/libcontainer"
	"github.com/opencontainers/runc/libcontainer/seccomp"
	"github.com/opencontainers/runc/libcontainer/specconv"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// testTimeout bounds each test's container operations.
const testTimeout = 60 * time.Second

// busyboxApplets are linked to busybox in the test rootfs.
func busyboxApplets() []string {
	return []string{
		"sh", "echo", "cat", "sleep", "ps", "tty", "stty", "true", "false", "id",
		"hostname", "head", "yes", "dd", "ls", "mkdir", "touch", "pwd", "grep",
		"wc", "tr", "env", "kill", "test", "rm",
	}
}

// harness is one test's Manager and rootfs.
type harness struct {
	t      *testing.T
	m      *Manager
	root   string // libcontainer state directory
	rootfs string
	ctx    context.Context
}

// newHarness skips the test unless run as root and returns a Manager wired
// to the test process's reaper, with a busybox rootfs.
func newHarness(t *testing.T) *harness {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	if os.Getenv(nsEnv) == "" {
		t.Skip("needs the test binary's mount namespace set up by TestMain")
	}
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	t.Cleanup(cancel)
	root := filepath.Join(t.TempDir(), "state")
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	m, err := NewManager(root, testReaper(), testReaper(), log)
	if err != nil {
		t.Fatal(err)
	}
	return &harness{t: t, m: m, root: root, rootfs: newRootfs(t), ctx: ctx}
}

// newRootfs builds a root filesystem from the host's static busybox.
func newRootfs(t *testing.T) string {
	t.Helper()
	busybox := "/bin/busybox"
	data, err := os.ReadFile(busybox)
	if err != nil {
		t.Skipf("needs %s (Debian's busybox-static): %v", busybox, err)
	}
	dir := filepath.Join(t.TempDir(), "rootfs")
	for _, d := range []string{"bin", "proc", "sys", "dev", "tmp", "etc", "root"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chmod(filepath.Join(dir, "tmp"), 0o1777); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "bin", "busybox"), data, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, a := range busyboxApplets() {
		if err := os.Symlink("busybox", filepath.Join(dir, "bin", a)); err != nil {
			t.Fatal(err)
		}
	}
	files := map[string]string{
		"etc/passwd": "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:user:/tmp:/bin/sh\n",
		"etc/group":  "root:x:0:\nuser:x:1000:\nextra:x:2000:\n",
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// testSpec returns runc's default spec running args, with a writable root.
func testSpec(args ...string) *specs.Spec {
	s := specconv.Example()
	s.Root.Readonly = false
	s.Process.Terminal = false
	s.Process.Args = args
	s.Hostname = "cocoon-test"
	return s
}

// create creates container id and deletes it when the test ends.
func (h *harness) create(id string, spec *specs.Spec, pio ProcessIO) *Process {
	h.t.Helper()
	p, err := h.m.Create(h.ctx, id, spec, h.rootfs, pio)
	if err != nil {
		h.t.Fatalf("Create(%s): %v", id, err)
	}
	h.t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
		defer cancel()
		if err := h.m.Delete(ctx, id, true); err != nil && !errors.Is(err, ErrNotFound) {
			h.t.Errorf("cleanup: Delete(%s): %v", id, err)
		}
	})
	return p
}

// run creates and starts container id.
func (h *harness) run(id string, spec *specs.Spec, pio ProcessIO) *Process {
	h.t.Helper()
	p := h.create(id, spec, pio)
	if err := h.m.Start(h.ctx, id); err != nil {
		h.t.Fatalf("Start(%s): %v", id, err)
	}
	return p
}

// exec runs args in container id as execID.
func (h *harness) exec(id, execID string, pio ProcessIO, args ...string) *Process {
	h.t.Helper()
	proc := testSpec(args...).Process
	p, err := h.m.Exec(h.ctx, id, execID, proc, pio)
	if err != nil {
		h.t.Fatalf("Exec(%s, %s): %v", id, execID, err)
	}
	return p
}

// wait waits for p and returns its exit status.
func (h *harness) wait(p *Process) ExitStatus {
	h.t.Helper()
	st, err := p.Wait(h.ctx)
	if err != nil {
		h.t.Fatalf("Wait: %v", err)
	}
	return st
}

// output reads r to the end, failing the test on timeout.
func (h *harness) output(r io.Reader) string {
	h.t.Helper()
	type result struct {
		b   []byte
		err error
	}
	ch := make(chan result, 1)
	go func() {
		b, err := io.ReadAll(r)
		ch <- result{b, err}
	}()
	select {
	case res := <-ch:
		if res.err != nil {
			h.t.Fatalf("read output: %v", res.err)
		}
		return string(res.b)
	case <-h.ctx.Done():
		h.t.Fatalf("read output: %v", h.ctx.Err())
		return ""
	}
}

// run2 runs args as a container and returns its stdout, stderr and exit
// status.
func (h *harness) run2(id string, spec *specs.Spec) (stdout, stderr string, st ExitStatus) {
	h.t.Helper()
	p := h.run(id, spec, ProcessIO{})
	if err := p.CloseStdin(); err != nil {
		h.t.Fatal(err)
	}
	var errOut string
	done := make(chan struct{})
	go func() {
		defer close(done)
		b, _ := io.ReadAll(p.Stderr())
		errOut = string(b)
	}()
	stdout = h.output(p.Stdout())
	<-done
	return stdout, errOut, h.wait(p)
}

func TestExitCode(t *testing.T) {
	h := newHarness(t)
	p := h.create("exit7", testSpec("sh", "-c", "exit 7"), ProcessIO{})
	if p.Pid() <= 0 {
		t.Fatalf("Pid() = %d", p.Pid())
	}
	if st, err := h.m.State(h.ctx, "exit7"); err != nil || st.Status != libcontainer.Created || st.Pid != p.Pid() {
		t.Fatalf("State after Create = %+v, %v; want created with pid %d", st, err, p.Pid())
	}
	if err := h.m.Start(h.ctx, "exit7"); err != nil {
		t.Fatal(err)
	}
	st := h.wait(p)
	if st.Code != 7 || st.Signal != 0 || st.OOMKilled || st.ExitedAt.IsZero() {
		t.Errorf("exit status = %+v, want code 7", st)
	}
	// Wait may be called again.
	if st2 := h.wait(p); st2 != st {
		t.Errorf("second Wait = %+v, want %+v", st2, st)
	}
	s, err := h.m.State(h.ctx, "exit7")
	if err != nil || s.Status != libcontainer.Stopped || s.Rootfs != h.rootfs || s.Created.IsZero() {
		t.Errorf("State after exit = %+v, %v; want stopped", s, err)
	}
	if err := h.m.Start(h.ctx, "exit7"); err == nil {
		t.Error("Start of a stopped container succeeded")
	}
}

func TestStdoutStderrSeparate(t *testing.T) {
	h := newHarness(t)
	out, errOut, st := h.run2("streams", testSpec("sh", "-c", "echo out1; echo err1 >&2; echo out2; echo err2 >&2; exit 3"))
	if out != "out1\nout2\n" {
		t.Errorf("stdout = %q", out)
	}
	if errOut != "err1\nerr2\n" {
		t.Errorf("stderr = %q", errOut)
	}
	if st.Code != 3 {
		t.Errorf("exit code = %d, want 3", st.Code)
	}
}

func TestStdoutLarge(t *testing.T) {
	h := newHarness(t)
	const size = 10 << 20
	const line = "0123456789abcde\n"
	p := h.run("large", testSpec("sh", "-c", fmt.Sprintf("yes 0123456789abcde | head -c %d", size)), ProcessIO{})
	out := h.output(p.Stdout())
	if len(out) != size {
		t.Fatalf("read %d bytes of stdout, want %d", len(out), size)
	}
	if out != strings.Repeat(line, size/len(line)) {
		t.Error("stdout content corrupted")
	}
	if st := h.wait(p); st.Code != 0 {
		t.Errorf("exit status = %+v", st)
	}
}

func TestOutputAfterExit(t *testing.T) {
	h := newHarness(t)
	p := h.run("late", testSpec("sh", "-c", "echo before exit; echo on stderr >&2"), ProcessIO{})
	// Attach only after the process has exited.
	if st := h.wait(p); st.Code != 0 {
		t.Fatalf("exit status = %+v", st)
	}
	time.Sleep(100 * time.Millisecond)
	if out := h.output(p.Stdout()); out != "before exit\n" {
		t.Errorf("stdout = %q", out)
	}
	if out := h.output(p.Stderr()); out != "on stderr\n" {
		t.Errorf("stderr = %q", out)
	}
}

func TestStdin(t *testing.T) {
	h := newHarness(t)
	p := h.run("stdin", testSpec("cat"), ProcessIO{})
	if _, err := io.WriteString(p.Stdin(), "hello stdin\n"); err != nil {
		t.Fatal(err)
	}
	if err := p.CloseStdin(); err != nil {
		t.Fatal(err)
	}
	if err := p.CloseStdin(); err != nil {
		t.Errorf("second CloseStdin: %v", err)
	}
	if out := h.output(p.Stdout()); out != "hello stdin\n" {
		t.Errorf("stdout = %q", out)
	}
	if st := h.wait(p); st.Code != 0 {
		t.Errorf("exit status = %+v", st)
	}
	if err := p.Resize(10, 10); !errors.Is(err, ErrNoTerminal) {
		t.Errorf("Resize without terminal: %v, want ErrNoTerminal", err)
	}
}

// readUntil reads r until the output contains want, returning all read.
func (h *harness) readUntil(r io.Reader, want string) string {
	h.t.Helper()
	var buf bytes.Buffer
	ch := make(chan error, 1)
	go func() {
		b := make([]byte, 4096)
		for {
			n, err := r.Read(b)
			buf.Write(b[:n]) // only this goroutine writes until ch
			if strings.Contains(buf.String(), want) {
				ch <- nil
				return
			}
			if err != nil {
				ch <- err
				return
			}
		}
	}()
	select {
	case err := <-ch:
		if err != nil {
			h.t.Fatalf("reading for %q: %v; got %q", want, err, buf.String())
		}
		return buf.String()
	case <-h.ctx.Done():
		h.t.Fatalf("reading for %q: %v", want, h.ctx.Err())
		return ""
	}
}

func TestTerminal(t *testing.T) {
	h := newHarness(t)
	p := h.run("tty", testSpec("sh", "-c", "tty; stty size; echo ready; read x; stty size; exit 5"),
		ProcessIO{Terminal: true, Width: 80, Height: 24})
	if p.Stderr() != nil {
		t.Error("Stderr() is not nil with a terminal")
	}
	first := h.readUntil(p.Stdout(), "ready")
	if !strings.Contains(first, "/dev/pts/") {
		t.Errorf("tty printed %q, want /dev/pts/N", first)
	}
	if !strings.Contains(first, "24 80") {
		t.Errorf("initial stty size printed %q, want 24 80", first)
	}
	if err := p.Resize(100, 40); err != nil {
		t.Fatal(err)
	}
	if _, err := io.WriteString(p.Stdin(), "go\n"); err != nil {
		t.Fatal(err)
	}
	rest := h.output(p.Stdout())
	if !strings.Contains(rest, "40 100") {
		t.Errorf("stty size after Resize(100, 40) printed %q, want 40 100", rest)
	}
	if st := h.wait(p); st.Code != 5 {
		t.Errorf("exit status = %+v, want 5", st)
	}
}

func TestTerminalExecAndEOF(t *testing.T) {
	h := newHarness(t)
	h.run("ttyexec", testSpec("sleep", "1000"), ProcessIO{})
	p := h.exec("ttyexec", "cat", ProcessIO{Terminal: true}, "sh", "-c", "tty; cat; echo cat done")
	h.readUntil(p.Stdout(), "/dev/pts/")
	if _, err := io.WriteString(p.Stdin(), "typed\n"); err != nil {
		t.Fatal(err)
	}
	// On a terminal CloseStdin sends end of file and output goes on.
	if err := p.CloseStdin(); err != nil {
		t.Fatal(err)
	}
	if out := h.output(p.Stdout()); !strings.Contains(out, "cat done") {
		t.Errorf("output after CloseStdin = %q", out)
	}
	if st := h.wait(p); st.Code != 0 {
		t.Errorf("exit status = %+v", st)
	}
}

func TestKill(t *testing.T) {
	h := newHarness(t)

	// The init process of a PID namespace only gets the signals it handles.
	p := h.run("term", testSpec("sh", "-c", "trap 'exit 42' TERM; echo ready; while true; do sleep 0.05; done"), ProcessIO{})
	h.readUntil(p.Stdout(), "ready")
	if err := h.m.Kill(h.ctx, "term", unix.SIGTERM, false); err != nil {
		t.Fatal(err)
	}
	if st := h.wait(p); st.Code != 42 {
		t.Errorf("after SIGTERM: exit status = %+v, want 42 from the trap", st)
	}
	if err := h.m.Kill(h.ctx, "term", unix.SIGTERM, false); !errors.Is(err, ErrNotRunning) {
		t.Errorf("Kill after exit: %v, want ErrNotRunning", err)
	}

	p = h.run("kill", testSpec("sleep", "1000"), ProcessIO{})
	e := h.exec("kill", "sleeper", ProcessIO{}, "sleep", "1000")
	// An exec'd process has default signal handling.
	if err := e.Signal(unix.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if st := h.wait(e); st.Code != 143 || st.Signal != int(unix.SIGTERM) {
		t.Errorf("exec after SIGTERM: exit status = %+v, want 143", st)
	}
	if err := h.m.Kill(h.ctx, "kill", unix.SIGKILL, false); err != nil {
		t.Fatal(err)
	}
	if st := h.wait(p); st.Code != 137 || st.Signal != int(unix.SIGKILL) || st.OOMKilled {
		t.Errorf("after SIGKILL: exit status = %+v, want 137", st)
	}
}

func TestKillAll(t *testing.T) {
	h := newHarness(t)
	p := h.run("killall", testSpec("sh", "-c", "trap '' TERM; sleep 1000 & sleep 1000 & wait"), ProcessIO{})
	e := h.exec("killall", "e", ProcessIO{}, "sleep", "1000")
	waitFor(t, h.ctx, func() bool {
		pids, err := h.m.Processes(h.ctx, "killall")
		return err == nil && len(pids) == 4
	})
	if err := h.m.Kill(h.ctx, "killall", unix.SIGTERM, true); err != nil {
		t.Fatal(err)
	}
	if st := h.wait(e); st.Code != 143 {
		t.Errorf("exec after SIGTERM to all: %+v, want 143", st)
	}
	if err := h.m.Kill(h.ctx, "killall", unix.SIGKILL, true); err != nil {
		t.Fatal(err)
	}
	if st := h.wait(p); st.Code != 137 {
		t.Errorf("init after SIGKILL to all: %+v, want 137", st)
	}
}

// waitFor polls cond until it holds.
func waitFor(t *testing.T, ctx context.Context, cond func() bool) {
	t.Helper()
	for !cond() {
		select {
		case <-ctx.Done():
			t.Fatalf("condition not met: %v", ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func TestExecSharesFilesystemAndPIDs(t *testing.T) {
	h := newHarness(t)
	init := h.run("shared", testSpec("sh", "-c", "echo from init > /tmp/shared; exec sleep 1000"), ProcessIO{})
	waitFor(t, h.ctx, func() bool {
		_, err := os.Stat(filepath.Join(h.rootfs, "tmp", "shared"))
		return err == nil
	})

	e := h.exec("shared", "cat", ProcessIO{}, "cat", "/tmp/shared")
	if out := h.output(e.Stdout()); out != "from init\n" {
		t.Errorf("exec read %q, want the file the init wrote", out)
	}
	if st := h.wait(e); st.Code != 0 {
		t.Errorf("cat: %+v", st)
	}

	e = h.exec("shared", "ps", ProcessIO{}, "ps", "-o", "pid,args")
	out := h.output(e.Stdout())
	foundInit := false
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) >= 3 && f[0] == "1" && f[1] == "sleep" && f[2] == "1000" {
			foundInit = true
		}
	}
	if !foundInit {
		t.Errorf("ps in exec does not show the init's sleep as PID 1:\n%s", out)
	}
	e = h.exec("shared", "hostname", ProcessIO{}, "hostname")
	if out := h.output(e.Stdout()); out != "cocoon-test\n" {
		t.Errorf("hostname in exec = %q", out)
	}
	if _, err := h.m.Process("shared", "ps"); err != nil {
		t.Errorf("Process(shared, ps): %v", err)
	}
	if p, err := h.m.Process("shared", ""); err != nil || p != init {
		t.Errorf("Process(shared, \"\") = %v, %v; want the init process", p, err)
	}
	if _, err := h.m.Process("shared", "nosuch"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Process of unknown exec: %v, want ErrNotFound", err)
	}
	if err := h.m.DeleteProcess(h.ctx, "shared", "ps"); err != nil {
		t.Errorf("DeleteProcess: %v", err)
	}
	if _, err := h.m.Process("shared", "ps"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Process after DeleteProcess: %v, want ErrNotFound", err)
	}
}

func TestProcesses(t *testing.T) {
	h := newHarness(t)
	p := h.run("procs", testSpec("sleep", "1000"), ProcessIO{})
	e := h.exec("procs", "e", ProcessIO{}, "sleep", "1000")
	pids, err := h.m.Processes(h.ctx, "procs")
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(pids, p.Pid()) || !slices.Contains(pids, e.Pid()) || len(pids) != 2 {
		t.Errorf("Processes = %v, want init %d and exec %d", pids, p.Pid(), e.Pid())
	}
	procs, err := os.ReadFile(filepath.Join(cgroupRoot, cgroupParent, "procs", "cgroup.procs"))
	if err != nil {
		t.Fatalf("the container's cgroup: %v", err)
	}
	if got := strings.Fields(string(procs)); len(got) != 2 {
		t.Errorf("cgroup.procs = %q, want the 2 processes", got)
	}
	if _, err := h.m.Processes(h.ctx, "nosuch"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Processes(nosuch): %v, want ErrNotFound", err)
	}
}

func TestCommandNotFound(t *testing.T) {
	h := newHarness(t)
	_, err := h.m.Create(h.ctx, "nocmd", testSpec("nosuch"), h.rootfs, ProcessIO{})
	if err == nil || !strings.Contains(err.Error(), `exec: "nosuch": executable file not found in $PATH`) {
		t.Fatalf("Create with a missing command: %v", err)
	}
	assertGone(t, h, "nocmd")
	// The ID is free again.
	h.run("nocmd", testSpec("sleep", "1000"), ProcessIO{})
	_, err = h.m.Exec(h.ctx, "nocmd", "x", testSpec("nosuch-either").Process, ProcessIO{})
	if err == nil || !strings.Contains(err.Error(), `exec: "nosuch-either": executable file not found in $PATH`) {
		t.Fatalf("Exec with a missing command: %v", err)
	}
	// A failed exec does not take its ID.
	e := h.exec("nocmd", "x", ProcessIO{}, "true")
	if st := h.wait(e); st.Code != 0 {
		t.Errorf("exec after a failed one: %+v", st)
	}
}

func TestDuplicateIDs(t *testing.T) {
	h := newHarness(t)
	h.run("dup", testSpec("sleep", "1000"), ProcessIO{})
	if _, err := h.m.Create(h.ctx, "dup", testSpec("true"), h.rootfs, ProcessIO{}); !errors.Is(err, ErrExists) {
		t.Errorf("second Create: %v, want ErrExists", err)
	}
	h.exec("dup", "e", ProcessIO{}, "sleep", "1000")
	if _, err := h.m.Exec(h.ctx, "dup", "e", testSpec("true").Process, ProcessIO{}); !errors.Is(err, ErrExists) {
		t.Errorf("second Exec: %v, want ErrExists", err)
	}
}

func TestInvalidIDs(t *testing.T) {
	h := newHarness(t)
	for _, id := range []string{"", "-a", ".a", "_a", "a/b", "../x", "a b", "ä", strings.Repeat("a", 65)} {
		if _, err := h.m.Create(h.ctx, id, testSpec("true"), h.rootfs, ProcessIO{}); !errors.Is(err, ErrInvalidID) {
			t.Errorf("Create(%q): %v, want ErrInvalidID", id, err)
		}
	}
	long := strings.Repeat("a", 64)
	h.run(long, testSpec("sleep", "1000"), ProcessIO{})
	if _, err := h.m.Exec(h.ctx, long, "bad/id", testSpec("true").Process, ProcessIO{}); !errors.Is(err, ErrInvalidID) {
		t.Errorf("Exec with an invalid exec ID: %v, want ErrInvalidID", err)
	}
	for _, id := range []string{"a-b.c_d", "A9"} {
		if err := validateID(id); err != nil {
			t.Errorf("validateID(%q): %v", id, err)
		}
	}
}

func TestInvalidSpecs(t *testing.T) {
	h := newHarness(t)
	noProcess := testSpec("true")
	noProcess.Process = nil
	relBind := testSpec("true")
	relBind.Mounts = append(relBind.Mounts, specs.Mount{Destination: "/x", Source: "relative", Options: []string{"rbind"}})
	for name, tc := range map[string]struct {
		spec   *specs.Spec
		rootfs string
	}{
		"nil spec":          {nil, h.rootfs},
		"no process":        {noProcess, h.rootfs},
		"no args":           {testSpec(), h.rootfs},
		"relative rootfs":   {testSpec("true"), "rootfs"},
		"missing rootfs":    {testSpec("true"), filepath.Join(h.rootfs, "nosuch")},
		"relative bind":     {relBind, h.rootfs},
		"cgroup path ..":    {withCgroupsPath(testSpec("true"), "/cocoon/../x"), h.rootfs},
		"missing namespace": {withNamespacePath(testSpec("true"), "/proc/self/ns/nosuch"), h.rootfs},
	} {
		if _, err := h.m.Create(h.ctx, "bad", tc.spec, tc.rootfs, ProcessIO{}); err == nil {
			t.Errorf("%s: Create succeeded", name)
		}
		assertGone(t, h, "bad")
	}
}

func withCgroupsPath(s *specs.Spec, p string) *specs.Spec {
	s.Linux.CgroupsPath = p
	return s
}

func withNamespacePath(s *specs.Spec, p string) *specs.Spec {
	for i, ns := range s.Linux.Namespaces {
		if ns.Type == specs.IPCNamespace {
			s.Linux.Namespaces[i].Path = p
		}
	}
	return s
}

// assertGone checks that nothing of container id is left.
func assertGone(t *testing.T, h *harness, id string) {
	t.Helper()
	if _, err := h.m.State(h.ctx, id); !errors.Is(err, ErrNotFound) {
		t.Errorf("State(%s): %v, want ErrNotFound", id, err)
	}
	if _, err := os.Stat(filepath.Join(h.root, id)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("state directory of %s: %v, want it gone", id, err)
	}
	if _, err := os.Stat(filepath.Join(cgroupRoot, cgroupParent, id)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("cgroup of %s: %v, want it gone", id, err)
	}
	mounts, err := mountinfo.GetMounts(mountinfo.PrefixFilter(h.rootfs))
	if err != nil {
		t.Fatal(err)
	}
	for _, mi := range mounts {
		t.Errorf("mount left under the rootfs: %s", mi.Mountpoint)
	}
}

func TestDeleteForce(t *testing.T) {
	h := newHarness(t)
	spec := testSpec("sh", "-c", "trap '' TERM; sleep 1000 & sleep 1000 & wait")
	spec.Mounts = append(spec.Mounts, specs.Mount{Destination: "/mnt", Type: "tmpfs", Source: "tmpfs"})
	p := h.run("del", spec, ProcessIO{})
	e := h.exec("del", "e", ProcessIO{}, "sleep", "1000")
	var pids []int
	waitFor(t, h.ctx, func() bool {
		var err error
		pids, err = h.m.Processes(h.ctx, "del")
		return err == nil && len(pids) == 4
	})
	if err := h.m.Delete(h.ctx, "del", false); !errors.Is(err, ErrRunning) {
		t.Fatalf("Delete without force of a running container: %v, want ErrRunning", err)
	}
	if err := h.m.Pause(h.ctx, "del"); err != nil {
		t.Fatal(err)
	}
	if err := h.m.Delete(h.ctx, "del", true); err != nil {
		t.Fatal(err)
	}
	for _, pid := range pids {
		if err := unix.Kill(pid, 0); !errors.Is(err, unix.ESRCH) {
			t.Errorf("process %d still exists after Delete: %v", pid, err)
		}
	}
	if st := h.wait(p); st.Code != 137 {
		t.Errorf("init exit status = %+v, want 137", st)
	}
	if st := h.wait(e); st.Code != 137 {
		t.Errorf("exec exit status = %+v, want 137", st)
	}
	assertGone(t, h, "del")
	if _, err := h.m.Process("del", ""); !errors.Is(err, ErrNotFound) {
		t.Errorf("Process after Delete: %v, want ErrNotFound", err)
	}
	if err := h.m.Delete(h.ctx, "del", true); !errors.Is(err, ErrNotFound) {
		t.Errorf("second Delete: %v, want ErrNotFound", err)
	}
}

func TestDeleteCreatedAndStopped(t *testing.T) {
	h := newHarness(t)
	h.create("created", testSpec("sleep", "1000"), ProcessIO{})
	if err := h.m.Delete(h.ctx, "created", false); err != nil {
		t.Fatalf("Delete of a created container: %v", err)
	}
	assertGone(t, h, "created")

	p := h.run("stopped", testSpec("true"), ProcessIO{})
	h.wait(p)
	if err := h.m.Delete(h.ctx, "stopped", false); err != nil {
		t.Fatalf("Delete of a stopped container: %v", err)
	}
	assertGone(t, h, "stopped")
}

func TestPauseResume(t *testing.T) {
	h := newHarness(t)
	h.run("pause", testSpec("sleep", "1000"), ProcessIO{})
	if err := h.m.Pause(h.ctx, "pause"); err != nil {
		t.Fatal(err)
	}
	if st, err := h.m.State(h.ctx, "pause"); err != nil || st.Status != libcontainer.Paused {
		t.Errorf("State after Pause = %+v, %v", st, err)
	}
	if _, err := h.m.Exec(h.ctx, "pause", "e", testSpec("true").Process, ProcessIO{}); !errors.Is(err, ErrNotRunning) {
		t.Errorf("Exec in a paused container: %v, want ErrNotRunning", err)
	}
	if err := h.m.Resume(h.ctx, "pause"); err != nil {
		t.Fatal(err)
	}
	if st, err := h.m.State(h.ctx, "pause"); err != nil || st.Status != libcontainer.Running {
		t.Errorf("State after Resume = %+v, %v", st, err)
	}
}

func TestProcessSettings(t *testing.T) {
	h := newHarness(t)
	spec := testSpec("sh", "-c", `id -u; id -g; id -G; echo "$FOO"; pwd; hostname; ulimit -n; grep NoNewPrivs /proc/self/status; touch /ro 2>/dev/null || echo readonly`)
	spec.Process.User = specs.User{UID: 1000, GID: 1000, AdditionalGids: []uint32{2000}}
	spec.Process.Env = append(spec.Process.Env, "FOO=bar baz")
	spec.Process.Cwd = "/tmp"
	spec.Root.Readonly = true
	out, errOut, st := h.run2("settings", spec)
	want := "1000\n1000\n1000 2000\nbar baz\n/tmp\ncocoon-test\n1024\nNoNewPrivs:\t1\nreadonly\n"
	if out != want || st.Code != 0 {
		t.Errorf("output = %q, stderr %q, status %+v; want %q", out, errOut, st, want)
	}
}

func TestMaskedPaths(t *testing.T) {
	h := newHarness(t)
	spec := testSpec("sh", "-c", "cat /proc/kcore | wc -c; echo x > /proc/sysrq-trigger 2>/dev/null || echo ro")
	out, _, _ := h.run2("masked", spec)
	if out != "0\nro\n" {
		t.Errorf("output = %q; want a masked /proc/kcore and a read-only /proc/sysrq-trigger", out)
	}
}

func TestStats(t *testing.T) {
	h := newHarness(t)
	h.run("stats", testSpec("sh", "-c", "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; sleep 1000"), ProcessIO{})
	h.exec("stats", "e", ProcessIO{}, "sleep", "1000")
	var st *Stats
	waitFor(t, h.ctx, func() bool {
		var err error
		st, err = h.m.Stats(h.ctx, "stats")
		if err != nil {
			t.Fatal(err)
		}
		return st.CPU.UsageNanos > 0 && st.Pids.Current == 2
	})
	if st.CPU.UserNanos+st.CPU.SystemNanos == 0 {
		t.Errorf("no user or system CPU time: %+v", st.CPU)
	}
	if hasController(t, "memory") && (st.Memory.Usage == 0 || st.Memory.Limit != 0) {
		t.Errorf("memory stats = %+v, want usage and no limit", st.Memory)
	}
}

// hasController reports whether cgroup v2 offers controller.
func hasController(t *testing.T, controller string) bool {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(cgroupRoot, "cgroup.controllers"))
	if err != nil {
		t.Fatal(err)
	}
	return slices.Contains(strings.Fields(string(data)), controller)
}

func TestMemoryLimitOOM(t *testing.T) {
	h := newHarness(t)
	if !hasController(t, "memory") {
		t.Skip("cgroup v2 has no memory controller here (hybrid cgroup host)")
	}
	limit := int64(32 << 20)
	spec := testSpec("dd", "if=/dev/zero", "of=/dev/null", "bs=200M", "count=1")
	spec.Linux.Resources = &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: &limit, Swap: &limit}}
	p := h.run("oom", spec, ProcessIO{})
	st := h.wait(p)
	if st.Code != 137 || !st.OOMKilled {
		t.Errorf("exit status = %+v, want 137 and OOMKilled", st)
	}
	stats, err := h.m.Stats(h.ctx, "oom")
	if err != nil {
		t.Fatal(err)
	}
	if stats.Memory.OOMKill == 0 || stats.Memory.Limit != uint64(limit) {
		t.Errorf("memory stats = %+v, want an OOM kill and limit %d", stats.Memory, limit)
	}
}

func TestUpdate(t *testing.T) {
	h := newHarness(t)
	if !hasController(t, "memory") || !hasController(t, "pids") {
		t.Skip("cgroup v2 has no memory or pids controller here (hybrid cgroup host)")
	}
	h.run("update", testSpec("sleep", "1000"), ProcessIO{})
	mem, pids := int64(64<<20), int64(50)
	if err := h.m.Update(h.ctx, "update", &specs.LinuxResources{
		Memory: &specs.LinuxMemory{Limit: &mem},
		Pids:   &specs.LinuxPids{Limit: &pids},
	}); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(cgroupRoot, cgroupParent, "update")
	for file, want := range map[string]string{"memory.max": strconv.FormatInt(mem, 10), "pids.max": "50"} {
		b, err := os.ReadFile(filepath.Join(dir, file))
		if err != nil || strings.TrimSpace(string(b)) != want {
			t.Errorf("%s = %q, %v; want %s", file, b, err, want)
		}
	}
	st, err := h.m.Stats(h.ctx, "update")
	if err != nil || st.Pids.Limit != 50 || st.Memory.Limit != uint64(mem) {
		t.Errorf("Stats after Update = %+v, %v", st, err)
	}
}

func TestSeccomp(t *testing.T) {
	h := newHarness(t)
	spec := testSpec("sh", "-c", "mkdir /tmp/denied 2>/dev/null && echo allowed || echo denied")
	spec.Linux.Seccomp = &specs.LinuxSeccomp{
		DefaultAction: specs.ActAllow,
		Syscalls: []specs.LinuxSyscall{{
			Names:  []string{"mkdir", "mkdirat"},
			Action: specs.ActErrno,
		}},
	}
	p, err := h.m.Create(h.ctx, "seccomp", spec, h.rootfs, ProcessIO{})
	if !seccompEnabled() {
		if !errors.Is(err, ErrSeccompUnsupported) {
			t.Fatalf("Create with seccomp in a build without it: %v, want ErrSeccompUnsupported", err)
		}
		return
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.m.Delete(context.Background(), "seccomp", true) })
	if err := h.m.Start(h.ctx, "seccomp"); err != nil {
		t.Fatal(err)
	}
	if out := h.output(p.Stdout()); out != "denied\n" {
		t.Errorf("mkdir under a seccomp profile denying it: %q", out)
	}
}

func TestConcurrentStarts(t *testing.T) {
	h := newHarness(t)
	h.run("many", testSpec("sleep", "1000"), ProcessIO{})
	var wg sync.WaitGroup
	errs := make(chan error, 40)
	for i := range 4 {
		wg.Go(func() {
			id := fmt.Sprintf("short%d", i)
			p, err := h.m.Create(h.ctx, id, testSpec("sh", "-c", fmt.Sprintf("exit %d", i)), h.rootfs, ProcessIO{})
			if err != nil {
				errs <- err
				return
			}
			defer h.m.Delete(context.Background(), id, true)
			if err := h.m.Start(h.ctx, id); err != nil {
				errs <- err
				return
			}
			if st, err := p.Wait(h.ctx); err != nil || st.Code != i {
				errs <- fmt.Errorf("%s: %+v, %v; want code %d", id, st, err, i)
			}
		})
		for j := range 5 {
			wg.Go(func() {
				execID := fmt.Sprintf("e%d-%d", i, j)
				p, err := h.m.Exec(h.ctx, "many", execID, testSpec("sh", "-c", "echo $0", execID).Process, ProcessIO{})
				if err != nil {
					errs <- err
					return
				}
				out, _ := io.ReadAll(p.Stdout())
				if st, err := p.Wait(h.ctx); err != nil || st.Code != 0 || string(out) != execID+"\n" {
					errs <- fmt.Errorf("%s: %+v, %v, output %q", execID, st, err, out)
				}
			})
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestRootDetection(t *testing.T) {
	inGuest := os.Getenv(vmEnv) != ""
	if got := rootIsInitramfs(); got != inGuest {
		t.Errorf("rootIsInitramfs() = %v, want %v (in the guest: %v)", got, inGuest, inGuest)
	}
}

// seccompEnabled reports whether this build supports seccomp.
func seccompEnabled() bool { return seccomp.Enabled }
