package qemu

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// process is a running QEMU that is not necessarily our child (QEMU
// daemonizes). It is tracked with a pidfd, so a recycled pid can never be
// signalled by mistake.
type process struct {
	pid   int
	start uint64 // start time in clock ticks since boot, from /proc/pid/stat
	pidfd int

	done     chan struct{} // closed when the process exited
	watched  chan struct{} // closed when the watcher returned
	stopOnce sync.Once
	stop     [2]int // pipe that wakes the watcher on close
}

// attach opens a pidfd for pid and checks that the process is the one we
// expect: its command line must contain marker (unless marker is empty,
// for a child of ours not yet reaped, whose pid cannot have been reused),
// and, when start is not zero, its start time must match.
func attach(pid int, marker string, start uint64) (*process, error) {
	if pid <= 0 {
		return nil, fmt.Errorf("attach to qemu: invalid pid %d", pid)
	}
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return nil, fmt.Errorf("attach to qemu pid %d: %w", pid, err)
	}
	st, err := startTime(pid)
	if err == nil && start != 0 && st != start {
		err = fmt.Errorf("pid %d was reused (start time %d, want %d)", pid, st, start)
	}
	if err == nil && marker != "" {
		var cmdline []byte
		cmdline, err = os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err == nil && !bytes.Contains(cmdline, []byte(marker)) {
			err = fmt.Errorf("pid %d is not this VM's qemu", pid)
		}
	}
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("attach to qemu: %w", err)
	}
	p := &process{pid: pid, start: st, pidfd: fd, done: make(chan struct{}), watched: make(chan struct{})}
	if err := unix.Pipe2(p.stop[:], unix.O_CLOEXEC); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("attach to qemu: pipe: %w", err)
	}
	go p.watch()
	return p, nil
}

// watch closes done when the process exits, and reaps it when it is our
// child (QEMU's daemon is re-parented to us when we are a subreaper).
func (p *process) watch() {
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

// alive reports whether the process still runs.
func (p *process) alive() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// signal sends sig through the pidfd.
func (p *process) signal(sig unix.Signal) error {
	err := unix.PidfdSendSignal(p.pidfd, sig, nil, 0)
	if errors.Is(err, unix.ESRCH) {
		return nil
	}
	return err
}

// release stops watching and closes the pidfd. The process keeps running.
func (p *process) release() {
	p.stopOnce.Do(func() {
		unix.Close(p.stop[1])
		<-p.watched
		unix.Close(p.stop[0])
		unix.Close(p.pidfd)
	})
}

// startTime reads a process's start time (field 22 of /proc/pid/stat).
func startTime(pid int) (uint64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name (field 2) may contain spaces and parentheses; the
	// fields after it start after the last ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("parse /proc/%d/stat", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state), so field 22 is f[19].
	if len(f) < 20 {
		return 0, fmt.Errorf("parse /proc/%d/stat: %d fields", pid, len(f))
	}
	return strconv.ParseUint(f[19], 10, 64)
}

// readPidFile reads a pid written by QEMU's -pidfile.
func readPidFile(path string) (int, error) {
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

// findByPidFile returns the pids of running processes whose command line
// names pidFile as an argument of its own: a QEMU launched for a VM whose
// start was cut short before its state was saved.
func findByPidFile(pidFile string) []int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	marker := []byte("\x00" + pidFile + "\x00")
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
