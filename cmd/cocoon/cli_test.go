package main

// End-to-end tests of the container commands: they run the cocoon binary,
// built once by TestMain, as a separate process against real sandbox VMs,
// as a user would.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/cocoon-runtime/cocoon"
	"github.com/cocoon-runtime/cocoon/internal/testutil"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cocoon-runtime/cocoon/internal/layout"
	"golang.org/x/sys/unix"
)

// binaryEnv names the environment variable through which TestMain hands
// the path of the cocoon binary it built to the tests.
const binaryEnv = "COCOON_TEST_BINARY"

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "cocoon-cli-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	bin := filepath.Join(dir, "cocoon")
	goTool, err := exec.LookPath("go")
	if err != nil {
		goTool = "/usr/local/go/bin/go"
	}
	build := exec.Command(goTool, "build", "-o", bin, ".")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build cocoon:", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	os.Setenv(binaryEnv, bin)
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// cli runs cocoon with a private state directory.
type cli struct {
	bin, root, dataDir string
}

// newCLI returns a cli whose state directory is removed, with anything a
// failed test left in it, when the test ends.
func newCLI(t *testing.T) *cli {
	t.Helper()
	c := &cli{bin: os.Getenv(binaryEnv), dataDir: dataDir()}
	// A short path: unix socket paths are limited to 108 bytes.
	root, err := os.MkdirTemp("/run", "cct-")
	if err != nil {
		t.Fatal(err)
	}
	c.root = root
	t.Cleanup(func() {
		for _, pid := range testutil.ProcessesMentioning(root + "/") {
			syscall.Kill(pid, syscall.SIGKILL)
		}
		mounts := mountsUnder(root)
		for i := len(mounts) - 1; i >= 0; i-- {
			unix.Unmount(mounts[i], unix.MNT_DETACH)
		}
		os.RemoveAll(root)
	})
	return c
}

func dataDir() string {
	if d := os.Getenv("COCOON_DATA_DIR"); d != "" {
		return d
	}
	return layout.DataDir
}

// needVM skips the test unless this host can boot sandbox VMs (see
// testutil.NeedVM).
func needVM(t *testing.T) *cli {
	t.Helper()
	testutil.NeedVM(t)
	return newCLI(t)
}

// result is how a cocoon command ended.
type result struct {
	stdout, stderr string
	code           int
}

func (r result) String() string {
	return fmt.Sprintf("exit %d, stdout %q, stderr %q", r.code, trunc(r.stdout), trunc(r.stderr))
}

func trunc(s string) string {
	if len(s) > 400 {
		return s[:400] + "..."
	}
	return s
}

// commandTimeout bounds one cocoon command (a VM boots in seconds, but
// TCG on a loaded machine is slow).
const commandTimeout = 4 * time.Minute

func (c *cli) command(ctx context.Context, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, c.bin, append([]string{"--root", c.root, "--data-dir", c.dataDir}, args...)...)
	cmd.WaitDelay = 10 * time.Second
	return cmd
}

// run runs cocoon with stdin (nil for none) and returns how it ended.
func (c *cli) run(t *testing.T, stdin io.Reader, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), commandTimeout)
	defer cancel()
	cmd := c.command(ctx, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdin, cmd.Stdout, cmd.Stderr = stdin, &stdout, &stderr
	err := cmd.Run()
	r := result{stdout: stdout.String(), stderr: stderr.String()}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		r.code = ee.ExitCode()
	default:
		t.Fatalf("cocoon %s: %v", strings.Join(args, " "), err)
	}
	if ctx.Err() != nil {
		t.Fatalf("cocoon %s: timed out after %v: %v", strings.Join(args, " "), commandTimeout, r)
	}
	return r
}

// ok runs cocoon and fails the test unless it succeeds.
func (c *cli) ok(t *testing.T, args ...string) string {
	t.Helper()
	r := c.run(t, nil, args...)
	if r.code != 0 {
		t.Fatalf("cocoon %s: %v", strings.Join(args, " "), r)
	}
	return r.stdout
}

// bundle writes a busybox bundle whose process runs args, with `cocoon
// spec --busybox`.
func (c *cli) bundle(t *testing.T, args ...string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "bundle")
	c.ok(t, append([]string{"spec", "--busybox", "--bundle", dir, "--"}, args...)...)
	return dir
}

// runDetached starts container id from bundle with `run -d`, and deletes
// it when the test ends.
func (c *cli) runDetached(t *testing.T, id, bundle string) {
	t.Helper()
	c.deleteAtEnd(t, id)
	c.ok(t, "run", "-d", "--boot-timeout", "2m", "--bundle", bundle, id)
}

func (c *cli) deleteAtEnd(t *testing.T, id string) {
	t.Cleanup(func() { c.run(t, nil, "delete", "-f", id) })
}

// containerState is the part of `state` and `list --json` the tests read.
type containerState struct {
	ID             string `json:"id"`
	Status         string `json:"status"`
	PID            int    `json:"pid"`
	Bundle         string `json:"bundle"`
	HypervisorPIDs []int  `json:"hypervisor_pids"`
	VM             struct {
		VCPUs     uint32 `json:"vcpus"`
		MemoryMiB uint32 `json:"memory_mib"`
	} `json:"vm"`
}

func (c *cli) state(t *testing.T, id string) containerState {
	t.Helper()
	var st containerState
	out := c.ok(t, "state", id)
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("state %s: %v: %q", id, err, out)
	}
	return st
}

// waitStatus waits until container id has the status.
func (c *cli) waitStatus(t *testing.T, id, status string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		st := c.state(t, id)
		if st.Status == status {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("container %s is %s, want %s", id, st.Status, status)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func (c *cli) list(t *testing.T) []containerState {
	t.Helper()
	var list []containerState
	out := c.ok(t, "list", "--json")
	if err := json.Unmarshal([]byte(out), &list); err != nil {
		t.Fatalf("list --json: %v: %q", err, out)
	}
	return list
}

// assertGone fails unless nothing of container id is left on the host:
// no process (QEMU, virtiofsd) naming the state directory, no mount below
// it, no files of the sandbox, no state record.
func (c *cli) assertGone(t *testing.T, id string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		procs := testutil.ProcessesMentioning(c.root + "/")
		if len(procs) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("processes left behind: %s", describeProcesses(procs))
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if m := mountsUnder(c.root); len(m) > 0 {
		t.Errorf("mounts left behind: %q", m)
	}
	for _, p := range []string{
		filepath.Join(c.root, "sandboxes", id),
		filepath.Join(c.root, "vm", id),
		filepath.Join(c.root, "state", id+".json"),
	} {
		if _, err := os.Lstat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s left behind (%v)", p, err)
		}
	}
	for _, st := range c.list(t) {
		if st.ID == id {
			t.Errorf("container %s still listed: %+v", id, st)
		}
	}
}

func describeProcesses(pids []int) string {
	var out []string
	for _, pid := range pids {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		out = append(out, fmt.Sprintf("%d: %s", pid, trunc(strings.ReplaceAll(string(b), "\x00", " "))))
	}
	return strings.Join(out, "; ")
}

// mountsUnder lists the mount points at or below dir, in mount order.
func mountsUnder(dir string) []string {
	b, _ := os.ReadFile("/proc/self/mountinfo")
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && (f[4] == dir || strings.HasPrefix(f[4], dir+"/")) {
			out = append(out, f[4])
		}
	}
	return out
}

// assertOneLineError fails unless r is a failure reported on one line of
// standard error that contains want.
func assertOneLineError(t *testing.T, r result, want string) {
	t.Helper()
	if r.code == 0 {
		t.Errorf("succeeded, want an error: %v", r)
		return
	}
	lines := strings.Split(strings.TrimRight(r.stderr, "\n"), "\n")
	if len(lines) != 1 || !strings.HasPrefix(lines[0], "cocoon: ") {
		t.Errorf("want a single 'cocoon: ...' error line, got %q", r.stderr)
	}
	if !strings.Contains(r.stderr, want) {
		t.Errorf("error %q does not mention %q", r.stderr, want)
	}
}

// assertEmptyRoot fails if anything of any sandbox is in the state
// directory.
func (c *cli) assertEmptyRoot(t *testing.T) {
	t.Helper()
	for _, d := range []string{"sandboxes", "vm", "state"} {
		entries, _ := os.ReadDir(filepath.Join(c.root, d))
		var names []string
		for _, e := range entries {
			if !strings.HasPrefix(e.Name(), ".") {
				names = append(names, e.Name())
			}
		}
		if len(names) > 0 {
			t.Errorf("%s/%s holds %q", c.root, d, names)
		}
	}
	if p := testutil.ProcessesMentioning(c.root + "/"); len(p) > 0 {
		t.Errorf("processes left behind: %s", describeProcesses(p))
	}
	if m := mountsUnder(c.root); len(m) > 0 {
		t.Errorf("mounts left behind: %q", m)
	}
}

// TestRunForeground checks `run` in the foreground: input reaches the
// process, its outputs arrive complete and apart, and cocoon exits with
// its exit code, leaving nothing behind.
func TestRunForeground(t *testing.T) {
	c := needVM(t)
	const size = 10_000_000
	b := c.bundle(t, "sh", "-c", fmt.Sprintf("cat; head -c %d /dev/zero; echo err >&2; exit 7", size))
	c.deleteAtEnd(t, "fg")
	input := "hello from the host\n"
	r := c.run(t, strings.NewReader(input), "run", "--boot-timeout", "2m", "--bundle", b, "fg")

	if r.code != 7 {
		t.Errorf("exit code %d, want 7 (stderr %q)", r.code, trunc(r.stderr))
	}
	out, ok := strings.CutPrefix(r.stdout, input)
	if !ok {
		t.Errorf("stdout does not start with the input echoed by cat: %q", trunc(r.stdout))
	}
	if len(out) != size || strings.Trim(out, "\x00") != "" {
		t.Errorf("stdout after the input: %d bytes (%d non-zero), want %d zero bytes", len(out), len(strings.Trim(out, "\x00")), size)
	}
	if r.stderr != "err\n" {
		t.Errorf("stderr %q, want %q", trunc(r.stderr), "err\n")
	}
	c.assertGone(t, "fg")
}

// TestRunTTY checks that `run -t` gives the process a terminal of cocoon's
// terminal's size.
func TestRunTTY(t *testing.T) {
	c := needVM(t)
	b := c.bundle(t, "sh", "-c", "tty; stty size")
	c.deleteAtEnd(t, "tty")
	ctx, cancel := context.WithTimeout(context.Background(), commandTimeout)
	defer cancel()
	cmd := c.command(ctx, "run", "-t", "--boot-timeout", "2m", "--bundle", b, "tty")
	out, code, err := runOnTerminal(cmd, 100, 40)
	if err != nil {
		t.Fatalf("run -t: %v (output %q)", err, out)
	}
	if code != 0 {
		t.Errorf("run -t exited with %d: %q", code, out)
	}
	if !regexp.MustCompile(`(?m)^/dev/pts/\d+\r?$`).MatchString(out) {
		t.Errorf("tty printed %q, want /dev/pts/N", out)
	}
	if !regexp.MustCompile(`(?m)^40 100\r?$`).MatchString(out) {
		t.Errorf("stty size printed %q, want 40 100 (rows columns)", out)
	}
	c.assertGone(t, "tty")
}

// runOnTerminal runs cmd on a new pseudo-terminal of width x height and
// returns what it printed there and its exit code.
func runOnTerminal(cmd *exec.Cmd, width, height uint16) (string, int, error) {
	master, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		return "", 0, err
	}
	defer master.Close()
	fd := int(master.Fd())
	if err := unix.IoctlSetPointerInt(fd, unix.TIOCSPTLCK, 0); err != nil {
		return "", 0, fmt.Errorf("unlock pty: %w", err)
	}
	n, err := unix.IoctlGetUint32(fd, unix.TIOCGPTN)
	if err != nil {
		return "", 0, fmt.Errorf("pty number: %w", err)
	}
	if err := unix.IoctlSetWinsize(fd, unix.TIOCSWINSZ, &unix.Winsize{Col: width, Row: height}); err != nil {
		return "", 0, fmt.Errorf("set pty size: %w", err)
	}
	slave, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		return "", 0, err
	}
	cmd.Stdin, cmd.Stdout, cmd.Stderr = slave, slave, slave
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
	err = cmd.Start()
	slave.Close()
	if err != nil {
		return "", 0, err
	}
	var out bytes.Buffer
	copied := make(chan struct{})
	go func() {
		// Ends with EIO once the last slave descriptor is closed.
		io.Copy(&out, master)
		close(copied)
	}()
	err = cmd.Wait()
	select {
	case <-copied:
	case <-time.After(10 * time.Second):
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return out.String(), ee.ExitCode(), nil
	}
	return out.String(), 0, err
}

// TestDetached checks a container left running by `run -d` as other
// cocoon processes see and drive it: exec, ps, list, state, stats,
// update, pause and resume, a duplicate ID, delete refused, kill with
// SIGTERM seen by events, and delete.
func TestDetached(t *testing.T) {
	c := needVM(t)
	const id = "det"
	init := `trap "exit 3" TERM; while :; do sleep 1; done`
	b := c.bundle(t, "sh", "-c", init)
	c.runDetached(t, id, b)

	t.Run("state", func(t *testing.T) {
		st := c.state(t, id)
		if st.ID != id || st.Status != "running" || st.PID <= 0 || st.Bundle != b || len(st.HypervisorPIDs) == 0 {
			t.Errorf("state %+v, want %s running with a pid, bundle %s and hypervisor pids", st, id, b)
		}
	})
	t.Run("list", func(t *testing.T) {
		list := c.list(t)
		if len(list) != 1 || list[0].ID != id || list[0].Status != "running" || len(list[0].HypervisorPIDs) == 0 {
			t.Errorf("list --json: %+v, want %s running", list, id)
		}
		out := c.ok(t, "list")
		if !regexp.MustCompile(`(?m)^ID\s+STATE\s+CREATED\s+BUNDLE\s+PIDS$`).MatchString(out) ||
			!regexp.MustCompile(`(?m)^det\s+running\s+\S+\s+`+regexp.QuoteMeta(b)+`\s+\d+`).MatchString(out) {
			t.Errorf("list printed %q", out)
		}
	})
	t.Run("exec shares the filesystem", func(t *testing.T) {
		c.ok(t, "exec", id, "sh", "-c", "echo written-by-exec > /tmp/shared")
		if out := c.ok(t, "exec", id, "cat", "/tmp/shared"); out != "written-by-exec\n" {
			t.Errorf("second exec read %q", out)
		}
	})
	t.Run("exec shares the pid namespace", func(t *testing.T) {
		out := c.ok(t, "exec", id, "ps", "-o", "pid,args")
		if !regexp.MustCompile(`(?m)^\s*1\s+sh -c trap`).MatchString(out) {
			t.Errorf("ps in the container shows no PID 1 running the init command:\n%s", out)
		}
	})
	t.Run("exec exit code", func(t *testing.T) {
		if r := c.run(t, nil, "exec", id, "sh", "-c", "echo out; echo err >&2; exit 9"); r.code != 9 || r.stdout != "out\n" || r.stderr != "err\n" {
			t.Errorf("exec: %v, want exit 9, out, err", r)
		}
	})
	t.Run("exec options", func(t *testing.T) {
		out := c.ok(t, "exec", "--env", "FOO=bar", "--cwd", "/tmp", "--user", "65534:65534", id, "sh", "-c", `echo "$(id -u):$(id -g) $(pwd) $FOO $PATH"`)
		if want := "65534:65534 /tmp bar /usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n"; out != want {
			t.Errorf("exec printed %q, want %q", out, want)
		}
	})
	t.Run("exec stdin", func(t *testing.T) {
		r := c.run(t, strings.NewReader("line1\nline2\n"), "exec", id, "wc", "-l")
		if r.code != 0 || strings.TrimSpace(r.stdout) != "2" {
			t.Errorf("exec wc -l: %v, want 2", r)
		}
	})
	t.Run("exec -t", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), commandTimeout)
		defer cancel()
		cmd := c.command(ctx, "exec", "-t", "--console-size", "120x50", id, "sh", "-c", "tty; stty size; exit 4")
		out, code, err := runOnTerminal(cmd, 80, 24)
		if err != nil {
			t.Fatal(err)
		}
		if code != 4 || !regexp.MustCompile(`(?m)^/dev/pts/\d+\r?$`).MatchString(out) || !regexp.MustCompile(`(?m)^50 120\r?$`).MatchString(out) {
			t.Errorf("exec -t: exit %d, printed %q; want 4, /dev/pts/N and 50 120", code, out)
		}
	})
	t.Run("ps", func(t *testing.T) {
		out := c.ok(t, "ps", id)
		if !regexp.MustCompile(`(?m)^PID\s+PPID\s+STATE\s+CMD$`).MatchString(out) || !strings.Contains(out, "sh -c "+init) {
			t.Errorf("ps printed %q", out)
		}
		var procs []struct {
			PID int    `json:"pid"`
			Cmd string `json:"cmd"`
		}
		if err := json.Unmarshal([]byte(c.ok(t, "ps", "--json", id)), &procs); err != nil {
			t.Fatal(err)
		}
		found := false
		for _, p := range procs {
			found = found || (p.PID > 0 && p.Cmd == "sh -c "+init)
		}
		if !found {
			t.Errorf("ps --json: %+v has no init process", procs)
		}
	})
	t.Run("update and stats", func(t *testing.T) {
		c.ok(t, "update", "--memory", "64m", "--pids-limit", "50", id)
		var st cocoon.ContainerStats
		if err := json.Unmarshal([]byte(c.ok(t, "stats", "--json", id)), &st); err != nil {
			t.Fatal(err)
		}
		if st.Memory.LimitBytes != 64<<20 || st.Pids.Limit != 50 || st.Pids.Current == 0 || st.Memory.UsageBytes == 0 {
			t.Errorf("stats after update: %+v", st)
		}
		if out := c.ok(t, "stats", id); !strings.Contains(out, "limit 50") {
			t.Errorf("stats printed %q", out)
		}
	})
	t.Run("pause and resume", func(t *testing.T) {
		c.ok(t, "pause", id)
		if st := c.state(t, id); st.Status != "paused" {
			t.Errorf("after pause: %s", st.Status)
		}
		assertOneLineError(t, c.run(t, nil, "exec", id, "true"), "paused")
		c.ok(t, "resume", id)
		if st := c.state(t, id); st.Status != "running" {
			t.Errorf("after resume: %s", st.Status)
		}
		c.ok(t, "exec", id, "true")
	})
	t.Run("duplicate id", func(t *testing.T) {
		assertOneLineError(t, c.run(t, nil, "run", "-d", "--bundle", b, id), "already exists")
		if st := c.state(t, id); st.Status != "running" {
			t.Errorf("the first container is %s after the attempt", st.Status)
		}
	})
	t.Run("delete refuses a running container", func(t *testing.T) {
		assertOneLineError(t, c.run(t, nil, "delete", id), "running")
		if st := c.state(t, id); st.Status != "running" {
			t.Errorf("after delete without --force: %s", st.Status)
		}
	})
	t.Run("kill TERM and events", func(t *testing.T) {
		events := watchEvents(t, c, id)
		c.ok(t, "kill", id) // SIGTERM by default
		c.waitStatus(t, id, "stopped")
		last := events.wait(t)
		if last.Type != "exit" || last.Data.ExitCode != 3 {
			t.Errorf("last event %+v, want exit with code 3", last)
		}
	})
	t.Run("delete stopped", func(t *testing.T) {
		c.ok(t, "delete", id)
		c.assertGone(t, id)
	})
}

// eventLine is a line of `cocoon events` as the tests read it.
type eventLine struct {
	Type string `json:"type"`
	ID   string `json:"id"`
	Data struct {
		ExitCode int `json:"exit_code"`
	} `json:"data"`
}

type eventWatch struct {
	cmd   *exec.Cmd
	lines chan eventLine
	done  chan error
}

// watchEvents starts `cocoon events` on id and returns once it printed its
// first statistics.
func watchEvents(t *testing.T, c *cli, id string) *eventWatch {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), commandTimeout)
	t.Cleanup(cancel)
	cmd := c.command(ctx, "events", "--interval", "300ms", id)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	w := &eventWatch{cmd: cmd, lines: make(chan eventLine, 1000), done: make(chan error, 1)}
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			var e eventLine
			if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
				e.Type = "unparsable: " + sc.Text()
			}
			w.lines <- e
		}
		close(w.lines)
		err := cmd.Wait()
		if err != nil {
			err = fmt.Errorf("%w: %s", err, stderr.String())
		}
		w.done <- err
	}()
	select {
	case e, ok := <-w.lines:
		if !ok || e.Type != "stats" || e.ID != id {
			t.Fatalf("first event %+v (more: %v), want stats of %s; %v", e, ok, id, <-w.done)
		}
	case <-time.After(time.Minute):
		t.Fatal("events printed nothing for a minute")
	}
	return w
}

// wait waits for events to exit and returns the last line it printed.
func (w *eventWatch) wait(t *testing.T) eventLine {
	t.Helper()
	var last eventLine
	timeout := time.After(time.Minute)
	for {
		select {
		case e, ok := <-w.lines:
			if !ok {
				if err := <-w.done; err != nil {
					t.Errorf("events: %v", err)
				}
				return last
			}
			last = e
		case <-timeout:
			t.Fatalf("events did not exit a minute after the container stopped (last line %+v)", last)
		}
	}
}

// TestRunSignals checks that `run` passes the signals it receives on to
// the container's process, and exits with its status.
func TestRunSignals(t *testing.T) {
	c := needVM(t)
	b := c.bundle(t, "sh", "-c", `trap "echo got-usr1" USR1; trap "echo got-int; exit 5" INT; echo ready; while :; do sleep 1; done`)
	c.deleteAtEnd(t, "sig")
	ctx, cancel := context.WithTimeout(context.Background(), commandTimeout)
	defer cancel()
	cmd := c.command(ctx, "run", "--boot-timeout", "2m", "--bundle", b, "sig")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := make(chan string, 10)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	expect := func(want string) {
		t.Helper()
		select {
		case line := <-lines:
			if line != want {
				t.Fatalf("container printed %q, want %q (stderr %q)", line, want, stderr.String())
			}
		case <-time.After(2 * time.Minute):
			t.Fatalf("container did not print %q (stderr %q)", want, stderr.String())
		}
	}
	expect("ready")
	cmd.Process.Signal(syscall.SIGUSR1)
	expect("got-usr1")
	cmd.Process.Signal(syscall.SIGINT)
	expect("got-int")
	for range lines {
	}
	err = cmd.Wait()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 5 {
		t.Errorf("run exited with %v, want status 5 (stderr %q)", err, stderr.String())
	}
	c.assertGone(t, "sig")
}

// TestDeleteForceRunning checks that `delete -f` of a running container,
// with an extra process in it, leaves nothing behind.
func TestDeleteForceRunning(t *testing.T) {
	c := needVM(t)
	const id = "delf"
	c.runDetached(t, id, c.bundle(t, "sleep", "1000000"))
	c.ok(t, "exec", "-d", id, "sleep", "999999")
	r := c.run(t, nil, "delete", "--force", id)
	if r.code != 0 {
		t.Fatalf("delete -f: %v", r)
	}
	c.assertGone(t, id)
	assertOneLineError(t, c.run(t, nil, "state", id), "not found")
}

// TestCreateStartKillDeadVM checks create and start, SIGKILL of the
// container's process, and that `delete -f` cleans up a sandbox whose QEMU
// was killed.
func TestCreateStartKillDeadVM(t *testing.T) {
	c := needVM(t)
	const id = "dead"
	c.deleteAtEnd(t, id)
	b := c.bundle(t, "sleep", "1000000")
	c.ok(t, "create", "--boot-timeout", "2m", "--bundle", b, id)
	if st := c.state(t, id); st.Status != "created" {
		t.Errorf("after create: %s, want created", st.Status)
	}
	c.ok(t, "start", id)
	if st := c.state(t, id); st.Status != "running" {
		t.Errorf("after start: %s, want running", st.Status)
	}
	// sleep, as PID 1 of its namespace, ignores SIGTERM but not SIGKILL.
	c.ok(t, "kill", id, "KILL")
	c.waitStatus(t, id, "stopped")

	list := c.list(t)
	if len(list) != 1 || len(list[0].HypervisorPIDs) == 0 {
		t.Fatalf("list --json: %+v, want %s with its QEMU pid", list, id)
	}
	qemu := list[0].HypervisorPIDs[0]
	if err := syscall.Kill(qemu, syscall.SIGKILL); err != nil {
		t.Fatalf("kill QEMU %d: %v", qemu, err)
	}
	for i := 0; i < 100 && syscall.Kill(qemu, 0) == nil; i++ {
		time.Sleep(50 * time.Millisecond)
	}
	if st := c.state(t, id); st.Status != "stopped" {
		t.Errorf("after QEMU was killed: %s, want stopped", st.Status)
	}
	if r := c.run(t, nil, "delete", "-f", id); r.code != 0 {
		t.Fatalf("delete -f: %v", r)
	}
	c.assertGone(t, id)
}

// TestBadInput checks that bad input fails with one clear line and
// leaves nothing behind.
func TestBadInput(t *testing.T) {
	c := needVM(t)
	good := c.bundle(t, "true")

	t.Run("missing config.json", func(t *testing.T) {
		assertOneLineError(t, c.run(t, nil, "run", "--bundle", t.TempDir(), "nocfg"), "config.json")
	})
	t.Run("missing rootfs", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "b")
		c.ok(t, "spec", "--bundle", dir)
		assertOneLineError(t, c.run(t, nil, "run", "--bundle", dir, "norootfs"), "rootfs")
	})
	t.Run("invalid id", func(t *testing.T) {
		r := c.run(t, nil, "run", "--bundle", good, "../x")
		assertOneLineError(t, r, "invalid")
		if _, err := os.Lstat(filepath.Join(c.root, "x")); err == nil {
			t.Errorf("%s/x was created", c.root)
		}
	})
	t.Run("spec refuses to overwrite", func(t *testing.T) {
		before, _ := os.ReadFile(filepath.Join(good, "config.json"))
		assertOneLineError(t, c.run(t, nil, "spec", "--bundle", good), "exists")
		after, _ := os.ReadFile(filepath.Join(good, "config.json"))
		if !bytes.Equal(before, after) {
			t.Error("config.json changed")
		}
	})
	t.Run("command not found", func(t *testing.T) {
		c.deleteAtEnd(t, "nocmd")
		r := c.run(t, nil, "run", "--boot-timeout", "2m", "--bundle", c.bundle(t, "nosuchcmd"), "nocmd")
		assertOneLineError(t, r, "nosuchcmd")
		c.assertGone(t, "nocmd")
	})
	t.Run("unknown container", func(t *testing.T) {
		for _, args := range [][]string{{"state", "nope"}, {"exec", "nope", "true"}, {"kill", "nope"}, {"delete", "nope"}, {"ps", "nope"}} {
			assertOneLineError(t, c.run(t, nil, args...), "not found")
		}
		if r := c.run(t, nil, "delete", "-f", "nope"); r.code != 0 {
			t.Errorf("delete -f of an unknown container: %v, want success", r)
		}
	})
	c.assertEmptyRoot(t)
}

// TestHelp checks that every command documents itself.
func TestHelp(t *testing.T) {
	c := &cli{bin: os.Getenv(binaryEnv), root: t.TempDir(), dataDir: t.TempDir()}
	cmds := []string{"spec", "create", "start", "run", "exec", "ps", "list", "state", "kill", "pause", "resume", "delete", "stats", "events", "update"}
	sort.Strings(cmds)
	for _, name := range cmds {
		if out := c.ok(t, name, "--help"); !strings.Contains(out, "Usage:") || !strings.Contains(out, name) {
			t.Errorf("%s --help printed %q", name, out)
		}
	}
}

// TestSpec checks `spec`: a default config.json, and a busybox rootfs.
func TestSpec(t *testing.T) {
	if _, err := os.Stat("/bin/busybox"); err != nil {
		t.Skip("no /bin/busybox (install busybox-static)")
	}
	c := &cli{bin: os.Getenv(binaryEnv), root: t.TempDir(), dataDir: t.TempDir()}
	dir := filepath.Join(t.TempDir(), "b")
	c.ok(t, "spec", "--busybox", "--bundle", dir, "--", "echo", "-n", "hi")
	var spec struct {
		Process struct{ Args []string } `json:"process"`
		Root    struct{ Path string }   `json:"root"`
	}
	b, err := os.ReadFile(filepath.Join(dir, "config.json"))
	if err == nil {
		err = json.Unmarshal(b, &spec)
	}
	if err != nil || strings.Join(spec.Process.Args, " ") != "echo -n hi" || spec.Root.Path != "rootfs" {
		t.Errorf("config.json: %+v, %v", spec, err)
	}
	if target, err := os.Readlink(filepath.Join(dir, "rootfs", "bin", "sh")); err != nil || target != "busybox" {
		t.Errorf("rootfs/bin/sh: %q, %v", target, err)
	}
}
