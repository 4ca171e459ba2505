package ctrtest

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/cocoon-runtime/cocoon/internal/testutil"
)

// testOptions run the tests with containerd from PATH, or the one
// $COCOON_CONTAINERD names (a containerd 2.x build, say; its ctr and runc
// shim beside it).
func testOptions() Options {
	return Options{Containerd: os.Getenv("COCOON_CONTAINERD")}
}

// needRunc skips (or, with COCOON_REQUIRE_VM=1, fails) unless runc and
// containerd's runc shim are installed: these tests use the runc runtime.
func needRunc(t *testing.T) {
	t.Helper()
	Need(t, testOptions())
	for _, bin := range []string{"runc", "containerd-shim-runc-v2"} {
		if _, err := exec.LookPath(bin); err != nil {
			testutil.Unavailable(t, "containerd", "%v", err)
		}
	}
}

func TestCtrRunRunc(t *testing.T) {
	needRunc(t)
	c := ForTest(t, testOptions())
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	out, _, err := c.Ctr(ctx, "images", "ls", "-q")
	if err != nil {
		t.Fatal(err)
	}
	for _, img := range []string{BusyboxImage, PauseImage} {
		if !strings.Contains(out, img) {
			t.Errorf("image %s not in namespace %s: %q", img, c.Namespace, out)
		}
	}

	start := time.Now()
	stdout, stderr, err := c.Ctr(ctx, "run", "--rm", "--runtime", "io.containerd.runc.v2", BusyboxImage, "t1", "sh", "-c", "echo hi; exit 3")
	t.Logf("ctr run --rm: %v", time.Since(start).Round(time.Millisecond))
	var ce *CtrError
	if !errors.As(err, &ce) || ce.ExitCode() != 3 {
		t.Fatalf("ctr run: want exit status 3, got %v (stderr %q)", err, stderr)
	}
	if stdout != "hi\n" {
		t.Errorf("ctr run: stdout %q, want %q", stdout, "hi\n")
	}
	if out, _, err := c.Ctr(ctx, "containers", "ls", "-q"); err != nil || strings.TrimSpace(out) != "" {
		t.Errorf("containers after ctr run --rm: %q, %v", out, err)
	}
	// A detached container keeps its FIFOs and runc state under Dir.
	if _, _, err := c.Ctr(ctx, "run", "-d", BusyboxImage, "t2", "sleep", "1000"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(c.RuncRoot(), c.Namespace, "t2", "state.json")); err != nil {
		t.Errorf("runc state of t2 not under %s: %v", c.RuncRoot(), err)
	}
	if fifos, _ := filepath.Glob(filepath.Join(c.FIFODir(), "*", "t2-stdout")); len(fifos) != 1 {
		t.Errorf("FIFOs of t2 not under %s: %v", c.FIFODir(), fifos)
	}
	assertStopLeavesNothing(t, c)
}

func TestCRIRunc(t *testing.T) {
	needRunc(t)
	c := ForTest(t, testOptions())
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	rs, is, closeConn, err := c.CRI(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer closeConn()

	v, err := rs.Version(ctx, &runtimeapi.VersionRequest{})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("CRI: %s %s, API %s", v.RuntimeName, v.RuntimeVersion, v.RuntimeApiVersion)
	for _, img := range []string{PauseImage, BusyboxImage} {
		st, err := is.ImageStatus(ctx, &runtimeapi.ImageStatusRequest{Image: &runtimeapi.ImageSpec{Image: img}})
		if err != nil || st.Image == nil {
			t.Fatalf("CRI image status %s: %v, %v", img, st, err)
		}
	}

	logDir := filepath.Join(c.Dir, "pod-logs")
	if err := os.MkdirAll(logDir, 0o755); err != nil {
		t.Fatal(err)
	}
	podConfig := &runtimeapi.PodSandboxConfig{
		Metadata:     &runtimeapi.PodSandboxMetadata{Name: "p1", Uid: "uid-p1", Namespace: "ctrtest", Attempt: 0},
		Hostname:     "p1",
		LogDirectory: logDir,
		Linux: &runtimeapi.LinuxPodSandboxConfig{
			SecurityContext: &runtimeapi.LinuxSandboxSecurityContext{
				NamespaceOptions: &runtimeapi.NamespaceOption{
					Network: runtimeapi.NamespaceMode_POD,
					Pid:     runtimeapi.NamespaceMode_CONTAINER,
					Ipc:     runtimeapi.NamespaceMode_POD,
				},
			},
		},
	}
	start := time.Now()
	pod, err := rs.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: podConfig, RuntimeHandler: "runc"})
	if err != nil {
		t.Fatalf("RunPodSandbox: %v", err)
	}
	podTime := time.Since(start)
	podID := pod.PodSandboxId

	start = time.Now()
	created, err := rs.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{
		PodSandboxId: podID,
		Config: &runtimeapi.ContainerConfig{
			Metadata: &runtimeapi.ContainerMetadata{Name: "sleeper"},
			Image:    &runtimeapi.ImageSpec{Image: BusyboxImage},
			Command:  []string{"sleep", "1000"},
			LogPath:  "sleeper.log",
		},
		SandboxConfig: podConfig,
	})
	if err != nil {
		t.Fatalf("CreateContainer: %v", err)
	}
	if _, err := rs.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: created.ContainerId}); err != nil {
		t.Fatalf("StartContainer: %v", err)
	}
	containerTime := time.Since(start)

	start = time.Now()
	res, err := rs.ExecSync(ctx, &runtimeapi.ExecSyncRequest{ContainerId: created.ContainerId, Cmd: []string{"echo", "ok"}, Timeout: 10})
	if err != nil {
		t.Fatalf("ExecSync: %v", err)
	}
	execTime := time.Since(start)
	if res.ExitCode != 0 || string(res.Stdout) != "ok\n" {
		t.Errorf("ExecSync echo ok: exit %d, stdout %q, stderr %q", res.ExitCode, res.Stdout, res.Stderr)
	}
	// The pod's network namespace has a loopback, set up by CNI.
	res, err = rs.ExecSync(ctx, &runtimeapi.ExecSyncRequest{ContainerId: created.ContainerId, Cmd: []string{"ip", "-o", "addr"}, Timeout: 10})
	if err != nil || !strings.Contains(string(res.Stdout), "127.0.0.1") {
		t.Errorf("ip addr in the pod: %v, %q %q", err, res.GetStdout(), res.GetStderr())
	}
	res, err = rs.ExecSync(ctx, &runtimeapi.ExecSyncRequest{ContainerId: created.ContainerId, Cmd: []string{"sh", "-c", "ulimit -Hn; ulimit -Sn"}, Timeout: 10})
	if err != nil {
		t.Fatalf("ExecSync ulimit: %v", err)
	}
	t.Logf("open files limit in the container (hard, soft): %q", strings.Fields(string(res.Stdout)))
	t.Logf("CRI with runc: RunPodSandbox %v, CreateContainer+StartContainer %v, ExecSync %v",
		podTime.Round(time.Millisecond), containerTime.Round(time.Millisecond), execTime.Round(time.Millisecond))

	start = time.Now()
	if _, err := rs.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: podID}); err != nil {
		t.Fatalf("StopPodSandbox: %v", err)
	}
	if _, err := rs.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: podID}); err != nil {
		t.Fatalf("RemovePodSandbox: %v", err)
	}
	t.Logf("StopPodSandbox+RemovePodSandbox: %v", time.Since(start).Round(time.Millisecond))
	list, err := rs.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{})
	if err != nil || len(list.Items) != 0 {
		t.Errorf("pods after RemovePodSandbox: %v, %v", list, err)
	}
	closeConn()
	assertStopLeavesNothing(t, c)
}

// TestPauseImageAsPID1 runs the pause image with runc: as PID 1 of its PID
// namespace it keeps running, reaps the orphans it inherits, and exits 0
// on SIGTERM.
func TestPauseImageAsPID1(t *testing.T) {
	needRunc(t)
	c := ForTest(t, testOptions())
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	run := c.CtrCommand(ctx, "run", "--rm", PauseImage, "pause")
	if err := run.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- run.Wait() }()
	for {
		if pids := taskPids(t, c, c.Namespace); len(pids) == 1 {
			break
		}
		select {
		case err := <-exited:
			t.Fatalf("pause exited: %v", err)
		case <-time.After(20 * time.Millisecond):
		}
	}
	// An orphan: the exec's shell exits before its sleep, which the
	// kernel hands to PID 1.
	if _, _, err := c.Ctr(ctx, "tasks", "exec", "--exec-id", "orphan", "pause", "sh", "-c", "sleep 0.2 & exit 0"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(700 * time.Millisecond)
	ps, _, err := c.Ctr(ctx, "tasks", "exec", "--exec-id", "ps", "pause", "ps", "-o", "pid,stat,args")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("in the pause container:\n%s", ps)
	for _, line := range strings.Split(ps, "\n")[1:] {
		f := strings.Fields(line)
		if len(f) >= 2 && f[0] == "1" && !strings.Contains(line, "trap 'exit 0' TERM INT") {
			t.Errorf("PID 1 is not the pause script: %q", line)
		}
		if len(f) >= 2 && strings.HasPrefix(f[1], "Z") {
			t.Errorf("zombie left in the pause container: %q", line)
		}
	}
	if _, _, err := c.Ctr(ctx, "tasks", "kill", "-s", "SIGTERM", "pause"); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Errorf("pause on SIGTERM: %v, want exit status 0", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("pause ignored SIGTERM for 10s")
	}
	assertStopLeavesNothing(t, c)
}

// TestStopRemovesWhatRuns leaves a CRI pod and a ctr container running:
// Stop removes them through containerd.
func TestStopRemovesWhatRuns(t *testing.T) {
	needRunc(t)
	c := ForTest(t, testOptions())
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if _, _, err := c.Ctr(ctx, "run", "-d", BusyboxImage, "bg", "sleep", "1000"); err != nil {
		t.Fatal(err)
	}
	rs, _, closeConn, err := c.CRI(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer closeConn()
	if _, err := rs.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{RuntimeHandler: "runc", Config: &runtimeapi.PodSandboxConfig{
		Metadata: &runtimeapi.PodSandboxMetadata{Name: "left", Uid: "uid-left", Namespace: "ctrtest"},
	}}); err != nil {
		t.Fatal(err)
	}
	pids := append(taskPids(t, c, c.Namespace), taskPids(t, c, CRINamespace)...)
	if len(pids) != 2 {
		t.Fatalf("want 2 tasks, got pids %v", pids)
	}
	assertStopLeavesNothing(t, c)
	assertDead(t, pids)
}

// TestStopAfterContainerdDied kills containerd, leaving a shim and its
// container behind: Stop kills them and unmounts their rootfs.
func TestStopAfterContainerdDied(t *testing.T) {
	needRunc(t)
	c := ForTest(t, testOptions())
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if _, _, err := c.Ctr(ctx, "run", "-d", BusyboxImage, "orphan", "sleep", "1000"); err != nil {
		t.Fatal(err)
	}
	pids := taskPids(t, c, c.Namespace)
	socket := shimSocket(c, c.Namespace, "orphan")
	if _, err := os.Stat(socket); err != nil {
		t.Logf("the runc shim's socket is not where expected: %v", err)
	}
	syscall.Kill(c.Pid(), syscall.SIGKILL)
	<-c.exited
	if len(c.leftovers()) == 0 || len(testutil.MountsUnder(c.Dir)) == 0 {
		t.Fatalf("want a shim and a rootfs mount left by the dead containerd; got %v, %v", pidsOf(c.leftovers()), testutil.MountsUnder(c.Dir))
	}
	assertStopLeavesNothing(t, c)
	assertDead(t, pids)
	if _, err := os.Lstat(socket); !os.IsNotExist(err) {
		t.Errorf("the killed runc shim's socket %s is left (%v)", socket, err)
	}
}

// shimSocket is where containerd's runc shim (1.6 to 2.x) puts its socket
// for container id in namespace ns: outside containerd's directories.
func shimSocket(c *Containerd, ns, id string) string {
	sum := sha256.Sum256([]byte(filepath.Join(c.Address, ns, id)))
	return fmt.Sprintf("/run/containerd/s/%x", sum)
}

// taskPids lists the pids of the tasks in namespace ns.
func taskPids(t *testing.T, c *Containerd, ns string) []int {
	t.Helper()
	out, err := c.ctrIn(context.Background(), ns, "tasks", "ls").Output()
	if err != nil {
		t.Fatal(err)
	}
	var pids []int
	for _, line := range strings.Split(string(out), "\n")[1:] {
		var id string
		var pid int
		if _, err := fmt.Sscan(line, &id, &pid); err == nil {
			pids = append(pids, pid)
		}
	}
	return pids
}

func assertDead(t *testing.T, pids []int) {
	t.Helper()
	for _, pid := range pids {
		if !isZombie(pid) {
			t.Errorf("container process %d still alive after Stop", pid)
		}
	}
}

// assertStopLeavesNothing stops c and checks that no containerd or shim
// process, no mount under its directory and not the directory is left.
func assertStopLeavesNothing(t *testing.T, c *Containerd) {
	t.Helper()
	pid := c.Pid()
	shims := c.leftovers()
	if len(shims) > 0 {
		t.Logf("processes of the containerd in %s before Stop: %v", c.Dir, pidsOf(shims))
	}
	start := time.Now()
	if err := c.Stop(context.Background()); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	t.Logf("Stop: %v", time.Since(start).Round(time.Millisecond))
	if err := syscall.Kill(pid, 0); err == nil {
		t.Errorf("containerd (pid %d) still alive after Stop", pid)
	}
	for _, p := range shims {
		if err := syscall.Kill(p.pid, 0); err == nil && !isZombie(p.pid) {
			t.Errorf("process %d %q still alive after Stop", p.pid, p.args)
		}
	}
	if left := c.leftovers(); len(left) > 0 {
		t.Errorf("processes naming %s after Stop: %v", c.Dir, pidsOf(left))
	}
	for _, p := range listProcs() {
		if strings.Contains(strings.Join(p.args, " "), c.Address) {
			t.Errorf("process %d naming the socket after Stop: %q", p.pid, p.args)
		}
	}
	if m := testutil.MountsUnder(c.Dir); len(m) > 0 {
		t.Errorf("mounts under %s after Stop: %v", c.Dir, m)
	}
	if _, err := os.Stat(c.Dir); !os.IsNotExist(err) {
		t.Errorf("%s still there after Stop (%v)", c.Dir, err)
	}
	if err := c.Stop(context.Background()); err != nil {
		t.Errorf("second Stop: %v", err)
	}
}

func pidsOf(ps map[int]proc) []string {
	var out []string
	for _, p := range ps {
		out = append(out, strings.Join(p.args, " "))
	}
	return out
}

func isZombie(pid int) bool {
	for _, p := range listProcs() {
		if p.pid == pid {
			return false
		}
	}
	return true
}

func TestMentions(t *testing.T) {
	dir := "/tmp/ctrtest-1"
	for _, tc := range []struct {
		args []string
		want bool
	}{
		{[]string{"x", "/tmp/ctrtest-1"}, true},
		{[]string{"-address", "/tmp/ctrtest-1/containerd.sock"}, true},
		{[]string{"--root=/tmp/ctrtest-1/root"}, true},
		{[]string{"/tmp/ctrtest-12/containerd.sock"}, false},
		{[]string{"/var/tmp/ctrtest-1/x"}, false},
		{[]string{"unix:///tmp/ctrtest-1/s"}, true},
		{[]string{"a:/tmp/ctrtest-1"}, true},
		{nil, false},
	} {
		if got := mentions(tc.args, dir); got != tc.want {
			t.Errorf("mentions(%q, %q) = %v, want %v", tc.args, dir, got, tc.want)
		}
	}
}
