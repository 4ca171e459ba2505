package main

// The kill test: a cocoon process, QEMU or virtiofsd is SIGKILLed at each
// moment of a sandbox's life, the documented cleanup runs (delete -f, or
// gc), and then nothing of the sandbox may be left on the host, and the
// same ID must work again.

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cocoon-runtime/cocoon/internal/failpoint"
	"github.com/cocoon-runtime/cocoon/internal/testutil"
)

// runKilled runs cocoon with the failpoint set and requires that it died
// by SIGKILL there.
func (c *cli) runKilled(t *testing.T, at failpoint.Point, args ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), commandTimeout)
	defer cancel()
	cmd := c.command(ctx, args...)
	cmd.Env = append(os.Environ(), failpoint.Env+"="+string(at))
	out, err := cmd.CombinedOutput()
	ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus)
	if err == nil || !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("cocoon %s was not killed at %s: %v: %s", strings.Join(args, " "), at, err, out)
	}
}

// assertClean fails if anything of any sandbox is left: processes naming
// the state directory, mounts, and any file below it except complete VM
// templates (a cache, reused by the next sandbox: their directory and
// their RAM on the memory tmpfs); lock files and tmpfs files (VM memory,
// consoles, logs) count.
func (c *cli) assertClean(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for len(testutil.ProcessesMentioning(c.root+"/")) > 0 && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	if p := testutil.ProcessesMentioning(c.root + "/"); len(p) > 0 {
		t.Errorf("processes left behind: %s", describeProcesses(p))
	}
	for _, d := range []string{"sandboxes", "vm", "state", "mem/vms"} {
		entries, _ := os.ReadDir(filepath.Join(c.root, d))
		for _, e := range entries {
			t.Errorf("left behind: %s/%s", d, e.Name())
		}
	}
	mem := filepath.Join(c.root, "mem")
	for _, m := range mountsUnder(c.root) {
		if m != mem {
			t.Errorf("mount left behind: %s", m)
		}
	}
	filepath.WalkDir(c.root, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return nil
		}
		rel, _ := filepath.Rel(c.root, p)
		parts := strings.Split(rel, "/")
		switch {
		case len(parts) >= 2 && parts[0] == "factory" && c.completeTemplate(parts[1]):
		case len(parts) == 3 && parts[0] == "mem" && parts[1] == "templates" && c.completeTemplate(strings.TrimSuffix(parts[2], ".guest.mem")):
		case rel == "mem/.lock" || rel == ".mem.lock":
		default:
			t.Errorf("left behind: %s", p)
		}
		return nil
	})
	// Cocoon makes no host cgroup of its own; QEMU must not be in one.
	if m, _ := filepath.Glob("/sys/fs/cgroup/*" + filepath.Base(c.root) + "*"); len(m) > 0 {
		t.Errorf("cgroups left behind: %v", m)
	}
}

// completeTemplate reports whether template key was finished: its
// directory has the saved state.
func (c *cli) completeTemplate(key string) bool {
	_, err := os.Stat(filepath.Join(c.root, "factory", key, "state"))
	return err == nil
}

// reuse checks that id works again after the cleanup.
func (c *cli) reuse(t *testing.T, id string, global ...string) {
	t.Helper()
	b := c.bundle(t, "sh", "-c", "exit 3")
	r := c.run(t, nil, append(global, "run", "--bundle", b, id)...)
	if r.code != 3 {
		t.Fatalf("run %s after the cleanup: %v", id, r)
	}
	c.ok(t, "delete", "-f", id)
}

func TestKillCocoonAtEveryPhase(t *testing.T) {
	c := needVM(t)
	sleeper := c.bundle(t, "sleep", "600")
	for _, tc := range []struct {
		at      failpoint.Point
		cleanup string // the documented command that cleans up
		global  []string
	}{
		{failpoint.CreateBeforeBoot, "delete", nil},
		{failpoint.CreateBeforeBoot, "gc", nil},
		{failpoint.CreateAfterBoot, "delete", nil},
		{failpoint.CreateAfterBoot, "gc", nil},
		{failpoint.ContainerCreate, "delete", nil},
		{failpoint.TemplateMake, "gc", []string{"--vm-templates"}},
		{failpoint.Exec, "delete", nil},
		{failpoint.Delete, "delete", nil},
	} {
		t.Run(string(tc.at)+"-"+tc.cleanup, func(t *testing.T) {
			id := "k-" + string(tc.at)
			args := append(append([]string{}, tc.global...), "create", "--bundle", sleeper, id)
			switch tc.at {
			case failpoint.Exec:
				c.ok(t, "run", "-d", "--bundle", sleeper, id)
				c.runKilled(t, tc.at, "exec", id, "sleep", "300")
			case failpoint.Delete:
				c.ok(t, "run", "-d", "--bundle", sleeper, id)
				c.runKilled(t, tc.at, "delete", "-f", id)
			default:
				c.runKilled(t, tc.at, args...)
			}
			if tc.cleanup == "gc" {
				c.ok(t, append(append([]string{}, tc.global...), "gc")...)
			} else {
				c.ok(t, "delete", "-f", id)
			}
			c.assertClean(t)
			c.reuse(t, id, tc.global...)
			c.assertClean(t)
		})
	}
}

// Killing QEMU or virtiofsd under a running container (or in the middle
// of an exec) leaves a sandbox that delete -f removes completely.
func TestKillHypervisorAndFileServer(t *testing.T) {
	c := needVM(t)
	sleeper := c.bundle(t, "sleep", "600")
	for _, tc := range []struct {
		name   string
		victim func(t *testing.T, id string) int
		exec   bool
	}{
		{"qemu", c.qemuPid, false},
		{"qemu-during-exec", c.qemuPid, true},
		{"virtiofsd", c.virtiofsdPid, false},
		{"virtiofsd-during-exec", c.virtiofsdPid, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id := "kh-" + tc.name
			c.ok(t, "run", "-d", "--bundle", sleeper, id)
			var exec *execHandle
			if tc.exec {
				exec = c.startExec(t, id, "sleep", "300")
			}
			pid := tc.victim(t, id)
			if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			c.ok(t, "delete", "-f", id)
			// The exec ends with an error (at the latest when its VM goes)
			// instead of hanging.
			if exec != nil {
				exec.wait(t)
			}
			c.assertClean(t)
			c.reuse(t, id)
			c.assertClean(t)
		})
	}
}

// Killing the template VM's QEMU, or the new sandbox's virtiofsd, while
// the first sandbox of a configuration makes its template: the create
// fails with an error, and gc and delete -f leave nothing, not even a
// half-made template; the next sandbox makes the template anew.
func TestKillDuringTemplateMaking(t *testing.T) {
	for _, victim := range []string{"qemu", "virtiofsd"} {
		t.Run(victim, func(t *testing.T) {
			c := needVM(t) // a state directory of its own: no template yet
			b := c.bundle(t, "true")
			id := "kt-" + victim
			match := map[string]string{"qemu": c.root + "/factory/", "virtiofsd": c.root + "/sandboxes/" + id + "/"}[victim]
			ctx, cancel := context.WithTimeout(context.Background(), commandTimeout)
			defer cancel()
			cmd := c.command(ctx, "--vm-templates", "run", "--bundle", b, id)
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			killed := false
			for deadline := time.Now().Add(time.Minute); !killed && time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
				for _, pid := range testutil.ProcessesMentioning(match) {
					b, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
					if strings.Contains(string(b), victim) && syscall.Kill(pid, syscall.SIGKILL) == nil {
						killed = true
					}
				}
			}
			err := cmd.Wait()
			if !killed {
				t.Fatalf("no %s to kill while the template was made (run: %v)", victim, err)
			}
			if err == nil {
				t.Fatalf("run succeeded although its %s was killed while the template was made", victim)
			}
			c.ok(t, "--vm-templates", "gc")
			c.run(t, nil, "delete", "-f", id)
			c.assertClean(t)
			c.reuse(t, id, "--vm-templates")
			c.assertClean(t)
		})
	}
}

func (c *cli) qemuPid(t *testing.T, id string) int {
	t.Helper()
	st := c.state(t, id)
	if len(st.HypervisorPIDs) == 0 {
		t.Fatalf("no hypervisor pid in %+v", st)
	}
	return st.HypervisorPIDs[0]
}

func (c *cli) virtiofsdPid(t *testing.T, id string) int {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(c.root, "sandboxes", id, "virtiofsd.pid"))
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	return pid
}

// execHandle is an exec running in the background.
type execHandle struct {
	done chan error
}

func (c *cli) startExec(t *testing.T, id string, args ...string) *execHandle {
	t.Helper()
	cmd := c.command(context.Background(), append([]string{"exec", id}, args...)...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	h := &execHandle{done: make(chan error, 1)}
	go func() { h.done <- cmd.Wait() }()
	// Give the exec time to reach the guest.
	time.Sleep(time.Second)
	return h
}

// wait requires the exec to end (with an error: its VM died) in bounded
// time rather than hang.
func (h *execHandle) wait(t *testing.T) {
	t.Helper()
	select {
	case err := <-h.done:
		if err == nil {
			t.Error("exec succeeded although its VM was killed")
		}
	case <-time.After(time.Minute):
		t.Error("exec still waits a minute after its VM was killed")
	}
}
