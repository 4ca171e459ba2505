// Package measure holds the figures every benchmark computes: medians of
// durations and the memory of host processes.
package measure

import (
	"bufio"
	"fmt"
	"github.com/cocoon-runtime/cocoon"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Median returns the median of d rounded to the millisecond, 0 for none.
func Median(d []time.Duration) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)/2].Round(time.Millisecond)
}

// MemoryKiB reads a process's RSS and PSS in KiB from smaps_rollup; zero
// for a process that is gone.
func MemoryKiB(pid int) (rss, pss uint64) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	if err != nil {
		return 0, 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 2 {
			continue
		}
		v, _ := strconv.ParseUint(fields[1], 10, 64)
		switch fields[0] {
		case "Rss:":
			rss = v
		case "Pss:":
			pss = v
		}
	}
	return rss, pss
}

// Processes lists the live processes whose command line contains s, with
// their command names.
func Processes(s string) map[int]string {
	out := map[int]string{}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err != nil || len(b) == 0 || !strings.Contains(string(b), s) {
			continue
		}
		name, _, _ := strings.Cut(string(b), "\x00")
		out[pid] = name
	}
	return out
}

// Children lists pid's descendants.
func Children(pid int) []int {
	var out []int
	tasks, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	for _, t := range tasks {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/children", pid, t.Name()))
		for _, f := range strings.Fields(string(b)) {
			if c, err := strconv.Atoi(f); err == nil {
				out = append(out, c)
				out = append(out, Children(c)...)
			}
		}
	}
	return out
}

// FileMappingsPss returns the PSS in KiB of pid's mappings of files whose
// path contains substr, and a path to stat each of those files by (under
// /proc/pid/map_files, which reaches unlinked files too).
func FileMappingsPss(pid int, substr string) (uint64, []string) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/smaps", pid))
	if err != nil {
		return 0, nil
	}
	defer f.Close()
	var total uint64
	var paths, names []string
	in := false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) == 0 {
			continue
		}
		if strings.Contains(fields[0], "-") && len(fields) >= 5 {
			// A mapping's header: address perms offset dev inode [path].
			in = len(fields) >= 6 && strings.Contains(fields[5], substr)
			if in && !slices.Contains(names, fields[5]) {
				// The file may be unlinked already (a restored VM's RAM is,
				// once mapped): map_files reaches it all the same.
				names = append(names, fields[5])
				paths = append(paths, fmt.Sprintf("/proc/%d/map_files/%s", pid, fields[0]))
			}
			continue
		}
		if in && fields[0] == "Pss:" {
			v, _ := strconv.ParseUint(fields[1], 10, 64)
			total += v
		}
	}
	return total, paths
}

// Runtime makes a Cocoon runtime whose state directory is a new one
// under /run (root-only, in RAM like the shim's); done removes it.
func Runtime(dataDir string) (rt *cocoon.Runtime, stateDir string, done func(), err error) {
	stateDir, err = os.MkdirTemp("/run", "cocoon-bench-")
	if err != nil {
		return nil, "", nil, err
	}
	done = func() { os.RemoveAll(stateDir) }
	rt, err = cocoon.New(cocoon.Options{StateDir: stateDir, DataDir: dataDir})
	if err != nil {
		done()
		return nil, "", nil, err
	}
	return rt, stateDir, done, nil
}
