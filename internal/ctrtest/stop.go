package ctrtest

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/cocoon-runtime/cocoon/internal/storage"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// Stop tears everything down and leaves nothing: while containerd still
// runs, it removes the CRI's pods and every namespace's tasks and
// containers (so shims clean up after themselves); then it stops
// containerd (SIGTERM, SIGKILL after 10s), kills any process left whose
// arguments mention Dir (shims; they name Address and State) together
// with their descendants (container processes), removes the cgroups those
// left empty, unmounts everything under Dir, deepest first, and removes
// Dir. Calling it again returns the first call's result.
func (c *Containerd) Stop(ctx context.Context) error {
	c.stopOnce.Do(func() { c.stopErr = c.stop(ctx) })
	return c.stopErr
}

func (c *Containerd) stop(ctx context.Context) error {
	var errs []error
	namespaces := []string{c.Namespace, CRINamespace}
	if c.running() {
		cleanCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
		seen, err := c.removeAll(cleanCtx)
		if err != nil {
			errs = append(errs, err)
		}
		namespaces = append(namespaces, seen...)
		cancel()
	}
	// Whatever the clean-up above missed, and the processes it forked.
	doomed := c.leftovers()
	if c.cmd != nil && c.cmd.Process != nil {
		if c.running() {
			c.cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-c.exited:
			case <-time.After(10 * time.Second):
				errs = append(errs, errors.New("containerd ignored SIGTERM for 10s; killed"))
				c.cmd.Process.Kill()
				<-c.exited
			}
		}
	}
	doomed = mergeProcs(doomed, c.leftovers())
	if len(doomed) > 0 {
		for _, p := range doomed {
			syscall.Kill(p.pid, syscall.SIGKILL)
		}
		if alive := waitGone(doomed, 5*time.Second); len(alive) > 0 {
			errs = append(errs, fmt.Errorf("processes still alive after SIGKILL: %v", alive))
		}
		removeCgroups(doomed)
	}
	removeNamespaceCgroups(namespaces)
	removeShimSockets(c.State)
	if err := storage.RemoveUnmounted(c.Dir); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("stop containerd in %s: %w", c.Dir, err)
	}
	return nil
}

func (c *Containerd) running() bool {
	if c.cmd == nil || c.cmd.Process == nil {
		return false
	}
	select {
	case <-c.exited:
		return false
	default:
		return true
	}
}

// removeAll removes the CRI's pods, then every task and container in every
// namespace, through containerd. It returns the namespaces it found.
func (c *Containerd) removeAll(ctx context.Context) ([]string, error) {
	var errs []error
	if rs, _, closeConn, err := c.CRI(ctx); err == nil {
		if resp, err := rs.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{}); err == nil {
			for _, p := range resp.Items {
				if _, err := rs.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: p.Id}); err != nil {
					errs = append(errs, fmt.Errorf("stop pod %s: %w", p.Id, err))
				}
				if _, err := rs.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: p.Id}); err != nil {
					errs = append(errs, fmt.Errorf("remove pod %s: %w", p.Id, err))
				}
			}
		}
		closeConn()
	}
	out, err := c.ctrIn(ctx, "default", "namespaces", "ls", "-q").Output()
	if err != nil {
		return nil, errors.Join(append(errs, fmt.Errorf("ctr namespaces ls: %w", err))...)
	}
	run := func(ns string, args ...string) (string, error) {
		var stderr bytes.Buffer
		cmd := c.ctrIn(ctx, ns, args...)
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			return "", fmt.Errorf("ctr -n %s %s: %w: %s", ns, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
		}
		return string(out), nil
	}
	namespaces := strings.Fields(string(out))
	for _, ns := range namespaces {
		tasks, err := run(ns, "tasks", "ls", "-q")
		if err != nil {
			errs = append(errs, err)
		}
		for _, id := range strings.Fields(tasks) {
			run(ns, "tasks", "kill", "-a", "-s", "SIGKILL", id)
			if _, err := run(ns, "tasks", "delete", "-f", id); err != nil {
				errs = append(errs, err)
			}
		}
		containers, err := run(ns, "containers", "ls", "-q")
		if err != nil {
			errs = append(errs, err)
		}
		for _, id := range strings.Fields(containers) {
			if _, err := run(ns, "containers", "delete", id); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return namespaces, errors.Join(errs...)
}

// proc is a process found in /proc.
type proc struct {
	pid, ppid int
	args      []string
	cgroups   []string // its cgroup directories under /sys/fs/cgroup
	root      bool     // it mentions Dir (else: a descendant of one that does)
}

// leftovers are the live processes whose arguments mention Dir, other than
// containerd and this process, and all their descendants.
func (c *Containerd) leftovers() map[int]proc {
	all := listProcs()
	byPid := map[int]proc{}
	for _, p := range all {
		byPid[p.pid] = p
	}
	// Never this process or its ancestors (a shell that started the test
	// may well mention Dir), nor a running containerd.
	spared := map[int]bool{}
	for pid := os.Getpid(); pid > 1 && !spared[pid]; pid = byPid[pid].ppid {
		spared[pid] = true
	}
	if c.running() {
		spared[c.cmd.Process.Pid] = true
	}
	found := map[int]proc{}
	for _, p := range all {
		if !spared[p.pid] && mentions(p.args, c.Dir) {
			p.root = true
			found[p.pid] = p
		}
	}
	// Descendants: a shim's children are the container processes (it is
	// their subreaper), a VMM's its helpers.
	for grew := true; grew; {
		grew = false
		for _, p := range all {
			if _, ok := found[p.pid]; ok || spared[p.pid] {
				continue
			}
			if _, ok := found[p.ppid]; ok {
				found[p.pid] = p
				grew = true
			}
		}
	}
	return found
}

// mergeProcs adds to the fresh scan b the processes of the earlier scan a
// that still run the same command line (not a new process with a reused
// pid).
func mergeProcs(a, b map[int]proc) map[int]proc {
	for pid, p := range a {
		if _, ok := b[pid]; ok {
			continue
		}
		cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err == nil && slices.Equal(strings.Split(strings.TrimRight(string(cmdline), "\x00"), "\x00"), p.args) {
			b[pid] = p
		}
	}
	return b
}

// mentions reports whether an argument names dir or a path below it.
func mentions(args []string, dir string) bool {
	for _, a := range args {
		for i := 0; ; {
			j := strings.Index(a[i:], dir)
			if j < 0 {
				break
			}
			j += i
			end := j + len(dir)
			before := j == 0 || strings.ContainsRune("/=:,;'\" ", rune(a[j-1]))
			after := end == len(a) || strings.ContainsRune("/=:,;'\" ", rune(a[end]))
			if before && after {
				return true
			}
			i = j + 1
		}
	}
	return false
}

// listProcs reads the live (not zombie) processes from /proc.
func listProcs() []proc {
	entries, _ := os.ReadDir("/proc")
	var out []proc
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...: comm may hold spaces and parentheses.
		s := string(stat)
		i := strings.LastIndexByte(s, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(s[i+1:])
		if len(f) < 2 || f[0] == "Z" || f[0] == "X" {
			continue
		}
		ppid, _ := strconv.Atoi(f[1])
		cmdline, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		out = append(out, proc{
			pid: pid, ppid: ppid,
			args:    strings.Split(strings.TrimRight(string(cmdline), "\x00"), "\x00"),
			cgroups: cgroupDirs(pid),
		})
	}
	return out
}

// cgroupDirs lists pid's cgroup directories, for every hierarchy.
func cgroupDirs(pid int) []string {
	f, err := os.Open(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		return nil
	}
	defer f.Close()
	var dirs []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// hierarchy-id:controllers:path
		parts := strings.SplitN(sc.Text(), ":", 3)
		if len(parts) != 3 || parts[2] == "/" {
			continue
		}
		var base string
		switch ctrl := parts[1]; {
		case parts[0] == "0" && ctrl == "":
			base = "/sys/fs/cgroup/unified"
			if _, err := os.Stat(base); err != nil {
				base = "/sys/fs/cgroup"
			}
		case strings.HasPrefix(ctrl, "name="):
			base = "/sys/fs/cgroup/" + strings.TrimPrefix(ctrl, "name=")
		default:
			base = "/sys/fs/cgroup/" + ctrl
		}
		dirs = append(dirs, filepath.Join(base, parts[2]))
	}
	return dirs
}

// removeCgroups removes the cgroups the killed container processes among
// ps were in (not those of the processes naming Dir: shims share the
// cgroup of containerd and of this process), deepest first. rmdir fails
// on a cgroup still in use, which is then left alone.
func removeCgroups(ps map[int]proc) {
	mine := map[string]bool{}
	for _, d := range cgroupDirs(os.Getpid()) {
		mine[d] = true
	}
	var dirs []string
	for _, p := range ps {
		if p.root {
			continue
		}
		for _, d := range p.cgroups {
			if !mine[d] && !slices.Contains(dirs, d) {
				dirs = append(dirs, d)
			}
		}
	}
	sort.Slice(dirs, func(i, j int) bool { return len(dirs[i]) > len(dirs[j]) })
	for _, d := range dirs {
		os.Remove(d)
	}
}

// removeNamespaceCgroups removes the cgroup each namespace's containers
// were put under: runc makes /<namespace>/<container> by default (ctr) or
// when the CRI gets no cgroup parent, and removes only the container's.
// A cgroup still in use, by another containerd's containers of the same
// namespace, is not empty, and rmdir leaves it alone.
func removeNamespaceCgroups(namespaces []string) {
	hierarchies, _ := filepath.Glob("/sys/fs/cgroup/*")
	hierarchies = append(hierarchies, "/sys/fs/cgroup")
	for _, ns := range namespaces {
		if ns == "" || ns == "." || ns == ".." || strings.Contains(ns, "/") {
			continue
		}
		for _, h := range hierarchies {
			os.Remove(filepath.Join(h, ns))
		}
	}
}

// removeShimSockets removes the sockets of the shims of State's task
// bundles that are left: a bundle outlives its task only if the shim did
// not shut down (it was killed above), and a shim's socket may be outside
// Dir (the runc shim's is in /run/containerd/s).
func removeShimSockets(state string) {
	bundles, _ := filepath.Glob(filepath.Join(state, "io.containerd.runtime.v2.task", "*", "*"))
	for _, b := range bundles {
		var addrs []string
		if a, err := os.ReadFile(filepath.Join(b, "address")); err == nil {
			addrs = append(addrs, string(a))
		}
		if j, err := os.ReadFile(filepath.Join(b, "bootstrap.json")); err == nil {
			var params struct{ Address string }
			if json.Unmarshal(j, &params) == nil {
				addrs = append(addrs, params.Address)
			}
		}
		for _, a := range addrs {
			path := strings.TrimPrefix(strings.TrimSpace(a), "unix://")
			if fi, err := os.Lstat(path); err == nil && fi.Mode()&os.ModeSocket != 0 {
				os.Remove(path)
			}
		}
	}
}

// waitGone waits until none of ps is alive, and returns those that are.
func waitGone(ps map[int]proc, timeout time.Duration) []int {
	deadline := time.Now().Add(timeout)
	for {
		var alive []int
		live := map[int]bool{}
		for _, p := range listProcs() {
			live[p.pid] = true
		}
		for pid := range ps {
			if live[pid] {
				alive = append(alive, pid)
			}
		}
		if len(alive) == 0 || time.Now().After(deadline) {
			return alive
		}
		time.Sleep(20 * time.Millisecond)
	}
}
