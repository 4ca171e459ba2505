// Package vmmproc is the host-side plumbing every hypervisor driver
// needs for its VMM process, which daemonizes and so is not necessarily
// the caller's child: tracking it by pidfd (a recycled pid is never
// signalled by mistake), finding one whose start was cut short, and the
// VM's state file that lets another process re-attach.
package vmmproc

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// Process is a running VMM that is not necessarily our child. It is
// tracked with a pidfd, so a recycled pid can never be signalled by
// mistake.
type Process struct {
	pid   int
	start uint64 // start time in clock ticks since boot, from /proc/pid/stat
	pidfd int

	done     chan struct{} // closed when the process exited
	watched  chan struct{} // closed when the watcher returned
	stopOnce sync.Once
	stop     [2]int // pipe that wakes the watcher on close
}

// Attach opens a pidfd for pid and checks that the process is the one we
// expect: its command line must contain marker (unless marker is empty,
// for a child of ours not yet reaped, whose pid cannot have been reused),
// and, when start is not zero, its start time must match.
func Attach(pid int, marker string, start uint64) (*Process, error) {
	if pid <= 0 {
		return nil, fmt.Errorf("attach to vmm: invalid pid %d", pid)
	}
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return nil, fmt.Errorf("attach to vmm pid %d: %w", pid, err)
	}
	st, err := StartTime(pid)
	if err == nil && start != 0 && st != start {
		err = fmt.Errorf("pid %d was reused (start time %d, want %d)", pid, st, start)
	}
	if err == nil && marker != "" {
		var cmdline []byte
		cmdline, err = os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err == nil && !bytes.Contains(cmdline, []byte(marker)) {
			err = fmt.Errorf("pid %d is not this VM's vmm", pid)
		}
	}
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("attach to vmm: %w", err)
	}
	p := &Process{pid: pid, start: st, pidfd: fd, done: make(chan struct{}), watched: make(chan struct{})}
	if err := unix.Pipe2(p.stop[:], unix.O_CLOEXEC); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("attach to vmm: pipe: %w", err)
	}
	go p.watch()
	return p, nil
}

// watch closes done when the process exits, and reaps it when it is our
// child (a daemonized VMM is re-parented to us when we are a subreaper).
func (p *Process) watch() {
	defer close(p.watched)
	fds := []unix.PollFd{{Fd: int32(p.pidfd), Events: unix.POLLIN}, {Fd: int32(p.stop[0]), Events: unix.POLLIN}}
	for {
		_, err := unix.Poll(fds, -1)
		if err == unix.EINTR {
			continue
		}
		if fds[1].Revents != 0 {
			return // released without waiting for the exit
		}
		if fds[0].Revents != 0 || err != nil {
			break
		}
	}
	var ws unix.WaitStatus
	unix.Wait4(p.pid, &ws, unix.WNOHANG, nil)
	close(p.done)
}

// Pid is the process's pid.
func (p *Process) Pid() int { return p.pid }

// StartTime is the process's start time, in clock ticks since boot.
func (p *Process) StartTime() uint64 { return p.start }

// Pidfd is the process's pidfd, valid until Release.
func (p *Process) Pidfd() int { return p.pidfd }

// Done returns a channel closed when the process exited.
func (p *Process) Done() <-chan struct{} { return p.done }

// Alive reports whether the process still runs.
func (p *Process) Alive() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// Signal sends sig through the pidfd; a process that is gone is not an
// error.
func (p *Process) Signal(sig unix.Signal) error {
	err := unix.PidfdSendSignal(p.pidfd, sig, nil, 0)
	if errors.Is(err, unix.ESRCH) {
		return nil
	}
	return err
}

// Release stops watching and closes the pidfd. The process keeps
// running; Done's channel stays open unless it had exited.
func (p *Process) Release() {
	p.stopOnce.Do(func() {
		unix.Close(p.stop[1])
		<-p.watched
		unix.Close(p.stop[0])
		unix.Close(p.pidfd)
	})
}

// statFields returns the fields of /proc/<pid>/stat from field 3 (the
// state) on.
func statFields(pid int) ([]string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return nil, err
	}
	// The command name (field 2) may contain spaces and parentheses; the
	// fields after it start after the last ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return nil, fmt.Errorf("parse /proc/%d/stat", pid)
	}
	return strings.Fields(string(b[i+1:])), nil
}

// StartTime reads a process's start time (field 22 of /proc/pid/stat).
func StartTime(pid int) (uint64, error) {
	f, err := statFields(pid)
	if err != nil {
		return 0, err
	}
	// f[0] is field 3 (state), so field 22 is f[19].
	if len(f) < 20 {
		return 0, fmt.Errorf("parse /proc/%d/stat: %d fields", pid, len(f))
	}
	return strconv.ParseUint(f[19], 10, 64)
}

// Running reports whether process pid exists and is neither a zombie nor
// dead: a zombie holds nothing but its pid.
func Running(pid int) bool {
	f, err := statFields(pid)
	return err == nil && len(f) > 0 && f[0] != "Z" && f[0] != "X"
}

// ReadPidFile reads a pid file as VMMs write them.
func ReadPidFile(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return 0, fmt.Errorf("parse pid file %s: %w", path, err)
	}
	return pid, nil
}

// FindByArg returns the pids of running processes that have arg as an
// argument of its own (a VM's pid file, say): a VMM launched for a VM
// whose start was cut short before its state was saved.
func FindByArg(arg string) []int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	marker := []byte("\x00" + arg + "\x00")
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err == nil && bytes.Contains(b, marker) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// WriteState writes v as JSON to path atomically (a temporary file
// renamed over it), readable by root only.
func WriteState(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("save vm state: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("save vm state: %w", err)
	}
	return nil
}

// MaxStateSize bounds a state file ReadState reads.
const MaxStateSize = 1 << 20

// ReadState reads the JSON state file at path into v.
func ReadState(path string, v any) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, MaxStateSize+1))
	if err != nil {
		return err
	}
	if len(b) > MaxStateSize {
		return fmt.Errorf("state file %s: over %d bytes", path, MaxStateSize)
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("parse state file %s: %w", path, err)
	}
	return nil
}
