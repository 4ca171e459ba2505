package integration

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cocoon-runtime/cocoon/internal/ctrtest"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// stopContainer calls StopContainer with a grace period of timeout
// seconds and returns how long the call took.
func (p *criPod) stopContainer(t *testing.T, ctx context.Context, cid string, timeout int64) time.Duration {
	t.Helper()
	start := time.Now()
	if _, err := p.rs.StopContainer(ctx, &runtimeapi.StopContainerRequest{ContainerId: cid, Timeout: timeout}); err != nil {
		t.Fatalf("StopContainer %s (after %v): %v", cid, time.Since(start), err)
	}
	return time.Since(start)
}

// containerState returns the CRI's state of container cid.
func (p *criPod) containerState(t *testing.T, ctx context.Context, cid string) *runtimeapi.ContainerStatus {
	t.Helper()
	st, err := p.rs.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: cid})
	if err != nil {
		t.Fatalf("ContainerStatus %s: %v", cid, err)
	}
	return st.Status
}

// removePod stops and removes the pod, failing the test on error.
func (p *criPod) remove(t *testing.T, ctx context.Context, stop bool) {
	t.Helper()
	if stop {
		if _, err := p.rs.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: p.id}); err != nil {
			t.Fatalf("StopPodSandbox: %v", err)
		}
	}
	if _, err := p.rs.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: p.id}); err != nil {
		t.Fatalf("RemovePodSandbox: %v", err)
	}
}

// runPodWith runs a pod named name with runtime handler handler.
func runPodWith(t *testing.T, ctx context.Context, e *env, rs runtimeapi.RuntimeServiceClient, handler, name string) (*criPod, error) {
	t.Helper()
	return runPodConfig(t, ctx, e, rs, handler, e.podConfig(t, name))
}

// stopBound is far below the grace periods the tests give StopContainer
// and far above what ending a process on SIGTERM takes: a call that takes
// longer waited out the grace period.
const stopBound = 20 * time.Second

// StopContainer ends a container whose program exits on SIGTERM without
// waiting out the grace period; stopping it again returns at once; the
// stopped container can be removed; the pod then leaves nothing.
func TestCRIStopContainerTERM(t *testing.T) { testStopContainerTERM(t, "cocoon") }

// The same with runc, for reference.
func TestCRIStopContainerTERMRunc(t *testing.T) { testStopContainerTERM(t, "runc") }

func testStopContainerTERM(t *testing.T, handler string) {
	e := needContainerd(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	rs := criAPI(t, ctx, e)
	pod, err := runPodWith(t, ctx, e, rs, handler, "pod-stop-term-"+handler)
	if err != nil {
		t.Fatalf("RunPodSandbox: %v\n%s", err, e.ctrd.LogTail(40))
	}
	for _, tc := range []struct {
		name string
		cmd  []string
	}{
		{"top", []string{"top"}},
		{"trap", []string{"sh", "-c", "trap 'echo got TERM; exit 7' TERM; echo ready; while :; do sleep 0.2; done"}},
	} {
		for _, settle := range []time.Duration{0, 2 * time.Second} {
			t.Run(fmt.Sprintf("%s/after-%v", tc.name, settle), func(t *testing.T) {
				if handler == "runc" && settle == 0 {
					// runc signals a PID 1 that may not handle SIGTERM yet,
					// and the kernel drops it (seen once in CI: 60 s for
					// top): a race of runc's, not a reference for ours.
					t.Skip("runc: SIGTERM at once races the program's handler")
				}
				// The kubelet's default: a PID namespace of the
				// container's own, where the program is its init.
				name := fmt.Sprintf("%s-%d", tc.name, settle.Milliseconds())
				cid := pod.createIn(t, ctx, &runtimeapi.ContainerConfig{
					Metadata: &runtimeapi.ContainerMetadata{Name: name}, Command: tc.cmd,
					Linux: nsOptions(runtimeapi.NamespaceMode_CONTAINER),
				})
				// At once (the signal may come before the program handles
				// it) and once the program runs.
				time.Sleep(settle)
				if d := pod.stopContainer(t, ctx, cid, 60); d > stopBound {
					t.Errorf("StopContainer with a 60 s grace period took %v: the SIGTERM did not end %v", d, tc.cmd)
				} else {
					t.Logf("StopContainer took %v", d)
				}
				st := pod.containerState(t, ctx, cid)
				if st.State != runtimeapi.ContainerState_CONTAINER_EXITED {
					t.Errorf("state after StopContainer: %v, want exited", st.State)
				}
				if tc.name == "trap" && st.ExitCode != 7 {
					t.Errorf("exit code %d, want 7 (the trap's)\n%s", st.ExitCode, e.ctrd.LogTail(80))
				}
				if d := pod.stopContainer(t, ctx, cid, 60); d > stopBound {
					t.Errorf("StopContainer of a stopped container took %v", d)
				}
				if _, err := rs.RemoveContainer(ctx, &runtimeapi.RemoveContainerRequest{ContainerId: cid}); err != nil {
					t.Fatalf("RemoveContainer of a stopped container: %v", err)
				}
			})
		}
	}
	pod.remove(t, ctx, true)
	if handler == "cocoon" {
		e.assertNoLeaks(t, pod.id)
	}
}

// ignoreTERM is a program that survives SIGTERM.
var ignoreTERM = []string{"sh", "-c", "trap '' TERM; while :; do sleep 0.2; done"}

// A container that ignores SIGTERM is SIGKILLed after a short grace
// period; the pod then stops and goes leaving nothing.
func TestCRIStopTimeoutThenRemovePod(t *testing.T) {
	e := needContainerd(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	rs := criAPI(t, ctx, e)
	pod, err := runPod(t, ctx, e, rs, "pod-stop-timeout", nil)
	if err != nil {
		t.Fatalf("RunPodSandbox: %v\n%s", err, e.ctrd.LogTail(40))
	}
	cid := pod.start(t, ctx, "stubborn", ignoreTERM...)
	time.Sleep(time.Second)
	d := pod.stopContainer(t, ctx, cid, 1)
	t.Logf("StopContainer with a 1 s grace period took %v", d)
	if st := pod.containerState(t, ctx, cid); st.State != runtimeapi.ContainerState_CONTAINER_EXITED {
		t.Errorf("state after StopContainer: %v, want exited", st.State)
	}
	pod.remove(t, ctx, true)
	e.assertNoLeaks(t, pod.id)
}

// RemovePodSandbox of a pod whose containers still run (no StopContainer,
// no StopPodSandbox) leaves nothing.
func TestCRIRemoveRunningPod(t *testing.T) {
	e := needContainerd(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	rs := criAPI(t, ctx, e)
	pod, err := runPod(t, ctx, e, rs, "pod-remove-running", nil)
	if err != nil {
		t.Fatalf("RunPodSandbox: %v\n%s", err, e.ctrd.LogTail(40))
	}
	pod.start(t, ctx, "stubborn", ignoreTERM...)
	pod.start(t, ctx, "sleeper", "sleep", "1000")
	pod.remove(t, ctx, false)
	e.assertNoLeaks(t, pod.id)
}

// One container of a pod is stopped and removed while another runs; the
// other keeps running; then the pod goes leaving nothing.
func TestCRIStopOneOfTwo(t *testing.T) {
	e := needContainerd(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	rs := criAPI(t, ctx, e)
	pod, err := runPod(t, ctx, e, rs, "pod-stop-one", nil)
	if err != nil {
		t.Fatalf("RunPodSandbox: %v\n%s", err, e.ctrd.LogTail(40))
	}
	first := pod.start(t, ctx, "first", ignoreTERM...)
	second := pod.start(t, ctx, "second", "sleep", "1000")
	pod.stopContainer(t, ctx, first, 1)
	if _, err := rs.RemoveContainer(ctx, &runtimeapi.RemoveContainerRequest{ContainerId: first}); err != nil {
		t.Fatalf("RemoveContainer: %v", err)
	}
	if st := pod.containerState(t, ctx, second); st.State != runtimeapi.ContainerState_CONTAINER_RUNNING {
		t.Errorf("the other container is %v, want running", st.State)
	}
	if got := pod.exec(t, ctx, second, "echo", "alive"); got != "alive" {
		t.Errorf("exec in the other container: %q", got)
	}
	pod.remove(t, ctx, true)
	e.assertNoLeaks(t, pod.id)
}

// ReopenContainerLog (the kubelet's log rotation: rename the file, then
// reopen) works, and the old and new files together hold every line the
// container wrote, once.
func TestCRIReopenContainerLog(t *testing.T) {
	e := needContainerd(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	rs := criAPI(t, ctx, e)
	pod, err := runPod(t, ctx, e, rs, "pod-reopen-log", nil)
	if err != nil {
		t.Fatalf("RunPodSandbox: %v\n%s", err, e.ctrd.LogTail(40))
	}
	const n = 1500
	cid := pod.start(t, ctx, "counter", "sh", "-c",
		fmt.Sprintf("i=0; while [ $i -lt %d ]; do echo line-$i; i=$((i+1)); [ $((i %% 20)) = 0 ] && usleep 20000; done; echo end; exec sleep 1000", n))
	path := filepath.Join(pod.config.LogDirectory, "counter.log")
	waitLog := func(file, want string) {
		t.Helper()
		for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
			if b, _ := os.ReadFile(file); strings.Contains(string(b), want) {
				return
			}
		}
		t.Fatalf("%s never held %q", file, want)
	}
	waitLog(path, "line-100\n")
	if err := os.Rename(path, path+".1"); err != nil {
		t.Fatal(err)
	}
	if _, err := rs.ReopenContainerLog(ctx, &runtimeapi.ReopenContainerLogRequest{ContainerId: cid}); err != nil {
		t.Fatalf("ReopenContainerLog: %v", err)
	}
	waitLog(path, " end\n")
	old := readCRILog(t, path+".1")
	cur := readCRILog(t, path)
	t.Logf("%d lines before the reopen, %d after", len(old), len(cur))
	if len(cur) == 0 {
		t.Errorf("nothing reached the reopened log")
	}
	seen := map[int]int{}
	for _, l := range append(old, cur...) {
		if l == "end" {
			continue
		}
		i, err := strconv.Atoi(strings.TrimPrefix(l, "line-"))
		if err != nil || !strings.HasPrefix(l, "line-") {
			t.Errorf("unexpected log line %q", l)
			continue
		}
		seen[i]++
	}
	var missing, doubled []int
	for i := range n {
		switch seen[i] {
		case 0:
			missing = append(missing, i)
		case 1:
		default:
			doubled = append(doubled, i)
		}
	}
	if len(missing)+len(doubled) > 0 {
		t.Errorf("lines missing: %v; lines seen more than once: %v", missing, doubled)
	}
	pod.remove(t, ctx, true)
	e.assertNoLeaks(t, pod.id)
}

// readCRILog returns the lines of a CRI log file, partial lines joined.
func readCRILog(t *testing.T, path string) []string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []string
	var partial strings.Builder
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// <timestamp> <stream> <P|F> <content>
		parts := strings.SplitN(sc.Text(), " ", 4)
		if len(parts) < 3 {
			t.Errorf("%s: malformed line %q", path, sc.Text())
			continue
		}
		content := ""
		if len(parts) == 4 {
			content = parts[3]
		}
		partial.WriteString(content)
		if parts[2] == "F" {
			out = append(out, partial.String())
			partial.Reset()
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// A container that fails to create (its program is not in the image) and
// one that fails at once after starting leave the pod removable, leaving
// nothing.
func TestCRIFailedContainerThenRemovePod(t *testing.T) {
	e := needContainerd(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	rs := criAPI(t, ctx, e)
	pod, err := runPod(t, ctx, e, rs, "pod-failed-ctr", nil)
	if err != nil {
		t.Fatalf("RunPodSandbox: %v\n%s", err, e.ctrd.LogTail(40))
	}
	c, err := rs.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{
		PodSandboxId: pod.id, SandboxConfig: pod.config,
		Config: &runtimeapi.ContainerConfig{
			Metadata: &runtimeapi.ContainerMetadata{Name: "missing"},
			Image:    &runtimeapi.ImageSpec{Image: ctrtest.BusyboxImage},
			Command:  []string{"/no/such/program"},
			LogPath:  "missing.log",
		},
	})
	if err != nil {
		t.Fatalf("CreateContainer: %v", err)
	}
	// The CRI creates the task, where the program is looked for, here.
	if _, err := rs.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: c.ContainerId}); err == nil {
		t.Errorf("StartContainer of a missing program succeeded")
	}
	pod.start(t, ctx, "quitter", "sh", "-c", "exit 3")
	pod.start(t, ctx, "sleeper", "sleep", "1000")
	pod.remove(t, ctx, true)
	e.assertNoLeaks(t, pod.id)
}

// The kubelet gives up on a StopContainer (its context ends) while the
// container ignores SIGTERM; the pod is then stopped and removed at once,
// and leaves nothing.
func TestCRIStopAbandonedThenRemovePod(t *testing.T) {
	e := needContainerd(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	rs := criAPI(t, ctx, e)
	pod, err := runPod(t, ctx, e, rs, "pod-stop-abandoned", nil)
	if err != nil {
		t.Fatalf("RunPodSandbox: %v\n%s", err, e.ctrd.LogTail(40))
	}
	cid := pod.start(t, ctx, "stubborn", ignoreTERM...)
	pod.start(t, ctx, "sleeper", "sleep", "1000")
	sctx, scancel := context.WithTimeout(ctx, 3*time.Second)
	_, err = rs.StopContainer(sctx, &runtimeapi.StopContainerRequest{ContainerId: cid, Timeout: 60})
	scancel()
	t.Logf("StopContainer abandoned after 3 s: %v", err)
	pod.remove(t, ctx, true)
	e.assertNoLeaks(t, pod.id)
}

// The kubelet gives up on RunPodSandbox while the pod's VM boots (its
// context ends); containerd cleans up, and nothing of the pod is left.
func TestCRIRunPodAbandoned(t *testing.T) {
	e := needContainerd(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	rs := criAPI(t, ctx, e)
	for _, after := range []time.Duration{500 * time.Millisecond, 1500 * time.Millisecond} {
		name := fmt.Sprintf("pod-abandoned-%d", after.Milliseconds())
		rctx, rcancel := context.WithTimeout(ctx, after)
		_, err := runPod(t, rctx, e, rs, name, nil)
		rcancel()
		t.Logf("RunPodSandbox abandoned after %v: %v", after, err)
		// What containerd still lists, the kubelet removes.
		list, err := rs.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{})
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range list.Items {
			if p.Metadata.Name == name {
				(&criPod{rs: rs, id: p.Id}).remove(t, ctx, true)
			}
		}
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		left := append(pidsMentioning(e.stateDir, "qemu-system"), pidsMentioning(e.stateDir, "virtiofsd")...)
		left = append(left, pidsMentioning(e.dir, "containerd-shim-cocoon-v2")...)
		entries, _ := os.ReadDir(filepath.Join(e.stateDir, "sandboxes"))
		if len(left) == 0 && len(entries) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("left behind: processes %v, sandboxes %d\n%s", left, len(entries), e.ctrd.LogTail(60))
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// The kubelet gives up on StopPodSandbox and on RemovePodSandbox while
// the pod's VM is being removed (their contexts end); removing it again
// then works, and the pod leaves nothing.
func TestCRIRemovePodAbandoned(t *testing.T) {
	e := needContainerd(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	rs := criAPI(t, ctx, e)
	pod, err := runPod(t, ctx, e, rs, "pod-remove-abandoned", nil)
	if err != nil {
		t.Fatalf("RunPodSandbox: %v\n%s", err, e.ctrd.LogTail(40))
	}
	pod.start(t, ctx, "stubborn", ignoreTERM...)
	for _, after := range []time.Duration{100 * time.Millisecond, 300 * time.Millisecond} {
		sctx, scancel := context.WithTimeout(ctx, after)
		_, err := rs.StopPodSandbox(sctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: pod.id})
		scancel()
		t.Logf("StopPodSandbox abandoned after %v: %v", after, err)
	}
	rctx, rcancel := context.WithTimeout(ctx, 200*time.Millisecond)
	_, err = rs.RemovePodSandbox(rctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: pod.id})
	rcancel()
	t.Logf("RemovePodSandbox abandoned after 200ms: %v", err)
	if err != nil {
		pod.remove(t, ctx, true)
	}
	e.assertNoLeaks(t, pod.id)
}
