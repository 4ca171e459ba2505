package container

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// withLibraries copies the shared libraries of this test binary into the
// rootfs: the zygote runs the binary in the container and, unlike the
// agent, the test binary is linked dynamically.
func (h *harness) withLibraries() {
	h.t.Helper()
	exe, err := os.Executable()
	if err != nil {
		h.t.Fatal(err)
	}
	libs, err := sharedLibraries(exe)
	if err != nil {
		h.t.Fatal(err)
	}
	for _, l := range libs {
		data, err := os.ReadFile(l)
		if err != nil {
			h.t.Fatal(err)
		}
		dst := filepath.Join(h.rootfs, l)
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			h.t.Fatal(err)
		}
		if err := os.WriteFile(dst, data, 0o755); err != nil {
			h.t.Fatal(err)
		}
	}
}

// zygoteOf waits until container id's zygote started and returns its pid,
// 0 if it could not start, and how many execs zygotes forked so far.
func (h *harness) zygoteOf(id string) (pid, forked int) {
	h.t.Helper()
	c, err := h.m.lookup(id)
	if err != nil {
		h.t.Fatal(err)
	}
	defer c.mu.Unlock()
	if s := c.zygote; s != nil {
		if z := s.wait(); z != nil {
			pid = z.pid
		}
	}
	return pid, c.forked
}

// execCollect runs proc as exec execID of id with input on stdin and
// returns its stdout, stderr and exit code.
func (h *harness) execCollect(id, execID string, proc *specs.Process, input string) (stdout, stderr string, code int) {
	h.t.Helper()
	p, err := h.m.Exec(h.ctx, id, execID, proc, ProcessIO{})
	if err != nil {
		h.t.Fatalf("Exec(%s, %s): %v", id, execID, err)
	}
	go func() {
		io.WriteString(p.Stdin(), input)
		p.CloseStdin()
	}()
	errc := make(chan string, 1)
	go func() {
		b, _ := io.ReadAll(p.Stderr())
		errc <- string(b)
	}()
	stdout = h.output(p.Stdout())
	stderr = <-errc
	return stdout, stderr, h.wait(p).Code
}

// TestZygoteMatchesLibcontainer checks that an exec forked by the zygote
// runs exactly as the same exec started by libcontainer: identity,
// privileges, namespaces, cgroup, limits, signals, environment and stdio.
func TestZygoteMatchesLibcontainer(t *testing.T) {
	h := newHarness(t)
	h.withLibraries()
	h.run("zyg", testSpec("sleep", "1000"), ProcessIO{})
	proc := testSpec().Process
	proc.User = specs.User{UID: 1000, GID: 1000, AdditionalGids: []uint32{2000}}
	proc.Env = append(proc.Env, "FOO=bar baz")
	proc.Cwd = "/tmp"
	proc.NoNewPrivileges = true
	proc.Rlimits = []specs.POSIXRlimit{{Type: "RLIMIT_NOFILE", Hard: 512, Soft: 256}}
	proc.Args = []string{"sh", "-c", `
		echo "args: $0 $1"; id; pwd; umask; ulimit -n; env | sort
		grep -E '^(Uid|Gid|Groups|Cap|NoNewPrivs|Seccomp|SigBlk|SigIgn)' /proc/self/status
		for ns in mnt pid ipc uts cgroup net; do readlink /proc/self/ns/$ns; done
		cat /proc/self/cgroup /proc/self/oom_score_adj
		read line; echo "stdin: $line"; echo to-stderr >&2; exit 3`, "one"}

	cold, coldErr, coldCode := h.execCollect("zyg", "cold", proc, "hello\n")
	zpid, forked := h.zygoteOf("zyg")
	if zpid == 0 {
		t.Fatal("no zygote after the first exec")
	}
	if forked != 0 {
		t.Fatalf("the first exec was forked by a zygote")
	}
	warm, warmErr, warmCode := h.execCollect("zyg", "warm", proc, "hello\n")
	if _, forked := h.zygoteOf("zyg"); forked != 1 {
		t.Fatalf("the second exec was not forked by the zygote (forked %d)", forked)
	}
	if !strings.Contains(cold, "stdin: hello\n") || !strings.Contains(cold, "uid=1000") || coldCode != 3 || coldErr != "to-stderr\n" {
		t.Fatalf("libcontainer's exec: code %d, stderr %q, stdout:\n%s", coldCode, coldErr, cold)
	}
	if warm != cold || warmErr != coldErr || warmCode != coldCode {
		t.Errorf("the zygote's exec differs from libcontainer's:\nlibcontainer (code %d, stderr %q):\n%s\nzygote (code %d, stderr %q):\n%s",
			coldCode, coldErr, cold, warmCode, warmErr, warm)
	}

	// The zygote is not one of the container's processes.
	pids, err := h.m.Processes(h.ctx, "zyg")
	if err != nil {
		t.Fatal(err)
	}
	if len(pids) != 1 {
		t.Errorf("Processes = %v, want the init process only (zygote %d)", pids, zpid)
	}
	if b, err := os.ReadFile("/proc/" + strconv.Itoa(zpid) + "/status"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, "VmRSS") {
				t.Logf("zygote %s", strings.Join(strings.Fields(l), " "))
			}
		}
	}
}

func TestZygoteFailures(t *testing.T) {
	h := newHarness(t)
	h.withLibraries()
	h.run("zygfail", testSpec("sleep", "1000"), ProcessIO{})
	if st := h.wait(h.exec("zygfail", "first", ProcessIO{}, "true")); st.Code != 0 {
		t.Fatalf("first exec: %+v", st)
	}
	zpid, _ := h.zygoteOf("zygfail")
	if zpid == 0 {
		t.Fatal("no zygote after the first exec")
	}

	// A program that is not there: the same error as without a zygote,
	// and the zygote stays.
	_, err := h.m.Exec(h.ctx, "zygfail", "missing", testSpec("nosuch").Process, ProcessIO{})
	if err == nil || !strings.Contains(err.Error(), `exec: "nosuch": executable file not found in $PATH`) {
		t.Errorf("Exec of a missing program: %v", err)
	}
	if pid, _ := h.zygoteOf("zygfail"); pid != zpid {
		t.Errorf("zygote %d after a missing program, want %d", pid, zpid)
	}
	if st := h.wait(h.exec("zygfail", "again", ProcessIO{}, "sh", "-c", "exit 5")); st.Code != 5 {
		t.Errorf("exec after the missing program: %+v", st)
	}
	_, forked := h.zygoteOf("zygfail")
	if forked != 1 {
		t.Errorf("forked %d execs, want 1", forked)
	}

	// A zygote killed from inside the container: execs go on, started by
	// libcontainer, which starts a new zygote.
	if err := unix.Kill(zpid, unix.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitFor(t, h.ctx, func() bool { return unix.Kill(zpid, 0) != nil })
	for _, id := range []string{"after-kill", "after-kill-2"} {
		if st := h.wait(h.exec("zygfail", id, ProcessIO{}, "sh", "-c", "exit 4")); st.Code != 4 {
			t.Errorf("exec %s after the zygote was killed: %+v", id, st)
		}
	}
	npid, _ := h.zygoteOf("zygfail")
	if npid == 0 || npid == zpid {
		t.Errorf("zygote after the kill: pid %d (the killed one was %d)", npid, zpid)
	}

	// Another user: libcontainer starts it, and the zygote follows.
	proc := testSpec("id", "-u").Process
	proc.User = specs.User{UID: 1000, GID: 1000}
	if out, _, code := h.execCollect("zygfail", "user", proc, ""); out != "1000\n" || code != 0 {
		t.Errorf("exec as another user: %q, code %d", out, code)
	}
	if pid, _ := h.zygoteOf("zygfail"); pid == 0 || pid == npid {
		t.Errorf("zygote after an exec of another spec: pid %d, was %d", pid, npid)
	}

	// Delete takes the zygote along.
	last, _ := h.zygoteOf("zygfail")
	if err := h.m.Delete(h.ctx, "zygfail", true); err != nil {
		t.Fatal(err)
	}
	assertGone(t, h, "zygfail")
	waitFor(t, h.ctx, func() bool { return errors.Is(unix.Kill(last, 0), unix.ESRCH) })
}

// A terminal exec is never forked by a zygote.
func TestZygoteKey(t *testing.T) {
	p := testSpec("a", "b").Process
	k1, ok := zygoteKey(p)
	if !ok {
		t.Fatal("no key for a process without a terminal")
	}
	q := *p
	q.Args = []string{"c"}
	q.ConsoleSize = &specs.Box{Height: 1, Width: 2}
	if k2, _ := zygoteKey(&q); k2 != k1 {
		t.Error("the key depends on the arguments")
	}
	q.Env = append(q.Env, "X=1")
	if k3, _ := zygoteKey(&q); k3 == k1 {
		t.Error("the key ignores the environment")
	}
	q.Terminal = true
	if _, ok := zygoteKey(&q); ok {
		t.Error("a terminal process has a key")
	}
	if _, err := zygoteRequest([]string{"a\x00b"}); err == nil {
		t.Error("an argument with a NUL byte was encoded")
	}
	if _, err := zygoteRequest([]string{strings.Repeat("x", zygoteMaxRequest)}); err == nil {
		t.Error("an oversized request was encoded")
	}
	if b, err := zygoteRequest([]string{"sh", "-c", ""}); err != nil || string(b) != "sh\x00-c\x00\x00" {
		t.Errorf("zygoteRequest = %q, %v", b, err)
	}
}

// An exec forked by the zygote is under the container's seccomp profile.
func TestZygoteSeccomp(t *testing.T) {
	if !seccompEnabled() {
		t.Skip("seccomp support not compiled in")
	}
	h := newHarness(t)
	h.withLibraries()
	spec := testSpec("sleep", "1000")
	spec.Linux.Seccomp = &specs.LinuxSeccomp{
		DefaultAction: specs.ActAllow,
		Syscalls:      []specs.LinuxSyscall{{Names: []string{"mkdir", "mkdirat"}, Action: specs.ActErrno}},
	}
	h.run("zygsec", spec, ProcessIO{})
	proc := testSpec("sh", "-c", "mkdir /tmp/d 2>/dev/null && echo allowed || echo denied; grep Seccomp: /proc/self/status").Process
	for _, id := range []string{"cold", "warm"} {
		if out, _, code := h.execCollect("zygsec", id, proc, ""); out != "denied\nSeccomp:\t2\n" || code != 0 {
			t.Errorf("exec %s: %q, code %d", id, out, code)
		}
		if id == "cold" {
			if pid, _ := h.zygoteOf("zygsec"); pid == 0 {
				t.Fatal("no zygote under a seccomp profile")
			}
		}
	}
	if _, forked := h.zygoteOf("zygsec"); forked != 1 {
		t.Errorf("forked %d execs, want 1", forked)
	}
}

// Pausing right after an exec, while the zygote may be starting, neither
// blocks nor leaves the zygote behind; execs after Resume still work.
func TestZygotePause(t *testing.T) {
	h := newHarness(t)
	h.withLibraries()
	h.run("zygpause", testSpec("sleep", "1000"), ProcessIO{})
	for i := range 3 {
		id := strconv.Itoa(i)
		if st := h.wait(h.exec("zygpause", "e"+id, ProcessIO{}, "true")); st.Code != 0 {
			t.Fatalf("exec %d: %+v", i, st)
		}
		if err := h.m.Pause(h.ctx, "zygpause"); err != nil {
			t.Fatal(err)
		}
		if pid, _ := h.zygoteOf("zygpause"); pid != 0 {
			t.Errorf("zygote %d kept while paused", pid)
		}
		if err := h.m.Resume(h.ctx, "zygpause"); err != nil {
			t.Fatal(err)
		}
	}
	if err := h.m.Delete(h.ctx, "zygpause", true); err != nil {
		t.Fatal(err)
	}
	assertGone(t, h, "zygpause")
}
