package container

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/opencontainers/runc/libcontainer"
	"golang.org/x/sys/unix"

	"github.com/cocoon-runtime/cocoon/internal/guest/reaper"
)

// ProcessIO configures the standard streams of a process. Without a
// terminal the process gets three pipes; with one, a pseudo-terminal whose
// master is both its input and its output.
type ProcessIO struct {
	Terminal bool
	// Width and Height are the initial terminal size in columns and rows;
	// zero leaves the size to the spec's consoleSize or the kernel default.
	Width, Height uint16
}

// ExitStatus is how a process ended.
type ExitStatus struct {
	// Code is the exit code, or 128 plus the signal number when a signal
	// killed the process, as a shell reports it.
	Code int
	// Signal is the number of the signal that killed the process, or 0.
	// It is derived from Code, so an exit code above 128 is reported as a
	// signal too, just as a shell cannot tell them apart either.
	Signal int
	// OOMKilled reports that the process ended with a non-zero code after
	// the kernel's OOM killer killed a process in the container's cgroup.
	OOMKilled bool
	// ExitedAt is when the agent learnt of the exit.
	ExitedAt time.Time
}

// Process is one process of a container: its init process or an exec'd
// one. Its methods are safe for concurrent use.
type Process struct {
	id, execID string
	pid        int
	terminal   bool

	stdin  io.WriteCloser
	stdout io.Reader
	stderr io.Reader
	files  []*os.File // the agent's ends of the streams
	tty    *os.File   // pseudo-terminal master, when terminal

	oom     *memoryEvents // the cgroup's memory.events, for oom_kill
	oomBase uint64        // oom_kill count when the process started

	mu     sync.Mutex // guards pidfd and closed
	pidfd  int        // -1 once the process has exited or when unavailable
	closed bool       // the streams are closed

	done chan struct{} // closed once exit is set
	exit ExitStatus
}

// lostExitCheck is how often a process watcher checks whether the exit it
// waits for was reaped without the reaper telling it, which happens only
// when its subscription overflowed.
const lostExitCheck = 5 * time.Second

// consoleTimeout bounds the wait for the pseudo-terminal master that a
// container's init helper sends once it created the terminal.
const consoleTimeout = 10 * time.Second

// ttyEOF is the character that signals end of input on a terminal in
// canonical mode (VEOF, ^D by default).
const ttyEOF = 0x04

// newProcess returns a Process that has not started yet.
func newProcess(id, execID string, terminal bool) *Process {
	return &Process{id: id, execID: execID, terminal: terminal, pidfd: -1, done: make(chan struct{})}
}

// Pid returns the process ID in the guest's PID namespace.
func (p *Process) Pid() int { return p.pid }

// Stdin returns the process's standard input. Closing it is CloseStdin.
func (p *Process) Stdin() io.WriteCloser { return p.stdin }

// Stdout returns the process's standard output: the pseudo-terminal when
// the process has a terminal. It delivers everything the process wrote,
// also after the process exited, and then io.EOF.
func (p *Process) Stdout() io.Reader { return p.stdout }

// Stderr returns the process's standard error, or nil when the process has
// a terminal.
func (p *Process) Stderr() io.Reader { return p.stderr }

// CloseStdin closes the process's standard input so that it reads end of
// file. On a terminal, which stays open for output, it sends the end of
// file character instead. Calling it again does nothing.
func (p *Process) CloseStdin() error {
	if p.stdin == nil {
		return nil
	}
	if err := p.stdin.Close(); err != nil {
		return fmt.Errorf("close stdin of %s: %w", p, err)
	}
	return nil
}

// Resize sets the size of the process's terminal.
func (p *Process) Resize(width, height uint16) error {
	if !p.terminal || p.tty == nil {
		return fmt.Errorf("resize %s: %w", p, ErrNoTerminal)
	}
	rc, err := p.tty.SyscallConn()
	if err != nil {
		return fmt.Errorf("resize %s: %w", p, err)
	}
	var ioctlErr error
	err = rc.Control(func(fd uintptr) {
		ioctlErr = unix.IoctlSetWinsize(int(fd), unix.TIOCSWINSZ, &unix.Winsize{Col: width, Row: height})
	})
	if err == nil {
		err = ioctlErr
	}
	if err != nil {
		return fmt.Errorf("resize %s: %w", p, err)
	}
	return nil
}

// Signal sends sig to the process. It returns an error wrapping
// ErrNotRunning when the process has exited.
func (p *Process) Signal(sig syscall.Signal) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.done:
		return fmt.Errorf("signal %s: %w", p, ErrNotRunning)
	default:
	}
	var err error
	if p.pidfd >= 0 {
		err = unix.PidfdSendSignal(p.pidfd, sig, nil, 0)
	} else {
		err = unix.Kill(p.pid, sig)
	}
	if errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("signal %s: %w", p, ErrNotRunning)
	}
	if err != nil {
		return fmt.Errorf("signal %s with %v: %w", p, sig, err)
	}
	return nil
}

// Wait waits for the process to exit and returns its exit status. It may
// be called any number of times, also concurrently.
func (p *Process) Wait(ctx context.Context) (ExitStatus, error) {
	select {
	case <-p.done:
		return p.exit, nil
	case <-ctx.Done():
		return ExitStatus{}, fmt.Errorf("wait for %s: %w", p, ctx.Err())
	}
}

// exited reports whether the process has exited.
func (p *Process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// running reports whether the process has started and not exited. A
// zombie not yet reaped has exited.
func (p *Process) running() bool {
	if p.pid <= 0 || p.exited() {
		return false
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.pidfd < 0 {
		return !p.exited()
	}
	// A pidfd polls readable once its process has exited.
	fds := []unix.PollFd{{Fd: int32(p.pidfd), Events: unix.POLLIN}}
	n, err := unix.Poll(fds, 0)
	return err != nil || n == 0
}

// String names the process for errors and logs.
func (p *Process) String() string {
	if p.execID == "" {
		return "container " + p.id + " init process"
	}
	return "container " + p.id + " exec " + p.execID
}

// setStarted records the pid of a started process. Call it while the
// reaper is locked, so that the process cannot have been reaped yet.
func (p *Process) setStarted(pid int, oom *memoryEvents) {
	p.pid = pid
	if fd, err := unix.PidfdOpen(pid, 0); err == nil {
		unix.CloseOnExec(fd)
		p.pidfd = fd
	}
	p.oom = oom
	p.oomBase, _ = oom.count("oom_kill")
}

// watch waits for the process's exit on ch, a subscription taken before the
// process started, then unsubscribes.
func (p *Process) watch(r Reaper, ch chan reaper.Exit, log *slog.Logger) {
	defer r.Unsubscribe(ch)
	tick := time.NewTicker(lostExitCheck)
	defer tick.Stop()
	lost := 0
	for {
		select {
		case e := <-ch:
			if e.Pid == p.pid {
				p.finish(e.Status)
				return
			}
		case <-tick.C:
			if !p.reapedUnseen() {
				lost = 0
				continue
			}
			// The exit may still be on its way from the reaper; only give
			// up on it after a second check.
			if lost++; lost >= 2 {
				log.Warn("exit status of process lost; reporting 255", "process", p.String(), "pid", p.pid)
				p.finish(255)
				return
			}
		}
	}
}

// reapedUnseen reports whether the process has been reaped, which the
// watcher only notices this way when the reaper dropped its exit.
func (p *Process) reapedUnseen() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.pidfd < 0 {
		return false
	}
	return errors.Is(peekChild(p.pidfd), unix.ECHILD)
}

// peekChild checks, without waiting or reaping, on the process behind
// pidfd: it fails with ECHILD if that is not a child of this process, or
// one already reaped.
func peekChild(pidfd int) error {
	var info unix.Siginfo
	return unix.Waitid(unix.P_PIDFD, pidfd, &info, unix.WEXITED|unix.WNOHANG|unix.WNOWAIT, nil)
}

// finish records the exit status and wakes up waiters.
func (p *Process) finish(status int) {
	st := ExitStatus{Code: status, ExitedAt: time.Now()}
	if status > 128 && status <= 128+64 {
		st.Signal = status - 128
	}
	if status != 0 {
		if n, err := p.oom.count("oom_kill"); err == nil && n > p.oomBase {
			st.OOMKilled = true
		}
	}
	p.mu.Lock()
	if p.pidfd >= 0 {
		unix.Close(p.pidfd)
		p.pidfd = -1
	}
	p.exit = st
	close(p.done)
	p.mu.Unlock()
}

// closeIO closes the agent's ends of the process's streams.
func (p *Process) closeIO() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return
	}
	p.closed = true
	for _, f := range p.files {
		f.Close()
	}
}

// outputPipeSize is the capacity of a process's stdout and stderr pipes.
const outputPipeSize = 1 << 20

// pendingIO holds what prepareIO set up until the process has started.
type pendingIO struct {
	child   []*os.File // the process's ends, closed once it started
	console *os.File   // the agent's end of the console socket
}

// prepareIO creates the streams of p and attaches them to lp.
func (p *Process) prepareIO(pio ProcessIO, lp *libcontainer.Process) (_ *pendingIO, err error) {
	pend := new(pendingIO)
	defer func() {
		if err != nil {
			pend.close()
			p.closeIO()
		}
	}()
	if pio.Terminal {
		fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return nil, fmt.Errorf("console socket pair: %w", err)
		}
		pend.console = os.NewFile(uintptr(fds[0]), "console-socket")
		child := os.NewFile(uintptr(fds[1]), "console-socket-child")
		pend.child = append(pend.child, child)
		lp.ConsoleSocket = child
		if pio.Width != 0 || pio.Height != 0 {
			lp.ConsoleWidth, lp.ConsoleHeight = pio.Width, pio.Height
		}
		return pend, nil
	}
	var r, w [3]*os.File
	for i := range r {
		if r[i], w[i], err = os.Pipe(); err != nil {
			return nil, fmt.Errorf("create pipe: %w", err)
		}
		if i > 0 {
			// A roomy output pipe lets the process write ahead while the
			// agent sends, and the agent send it in large frames: the
			// channel to the host pays per frame, not per byte. Best
			// effort: the default 64 KiB works too.
			unix.FcntlInt(w[i].Fd(), unix.F_SETPIPE_SZ, outputPipeSize)
		}
		if i == 0 { // the process reads stdin and writes the others
			pend.child = append(pend.child, r[i])
			p.files = append(p.files, w[i])
		} else {
			pend.child = append(pend.child, w[i])
			p.files = append(p.files, r[i])
		}
	}
	lp.Stdin, lp.Stdout, lp.Stderr = r[0], w[1], w[2]
	p.stdin = &closeOnce{File: w[0]}
	p.stdout, p.stderr = r[1], r[2]
	return pend, nil
}

// started closes the process's ends of its streams and, for a terminal,
// receives the pseudo-terminal master that the init helper created.
func (p *Process) started(pend *pendingIO) error {
	for _, f := range pend.child {
		f.Close()
	}
	pend.child = nil
	if pend.console == nil {
		return nil
	}
	defer pend.close()
	tty, err := recvConsole(pend.console)
	if err != nil {
		return fmt.Errorf("receive terminal of %s: %w", p, err)
	}
	p.tty = tty
	p.files = []*os.File{tty}
	p.stdin = &ttyInput{f: tty}
	p.stdout = ttyOutput{tty}
	return nil
}

// close releases everything not yet handed over.
func (pend *pendingIO) close() {
	for _, f := range pend.child {
		f.Close()
	}
	pend.child = nil
	if pend.console != nil {
		pend.console.Close()
		pend.console = nil
	}
}

// recvConsole receives a file descriptor sent over sock.
func recvConsole(sock *os.File) (*os.File, error) {
	conn, err := net.FileConn(sock)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	uc, ok := conn.(*net.UnixConn)
	if !ok {
		return nil, fmt.Errorf("console socket is a %T", conn)
	}
	if err := uc.SetReadDeadline(time.Now().Add(consoleTimeout)); err != nil {
		return nil, err
	}
	buf := make([]byte, 4096)
	oob := make([]byte, unix.CmsgSpace(4*4))
	_, oobn, _, _, err := uc.ReadMsgUnix(buf, oob)
	if err != nil {
		return nil, err
	}
	msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil {
		return nil, fmt.Errorf("parse control message: %w", err)
	}
	var fds []int
	for i := range msgs {
		rights, err := unix.ParseUnixRights(&msgs[i])
		if err == nil {
			fds = append(fds, rights...)
		}
	}
	if len(fds) == 0 {
		return nil, errors.New("no file descriptor received")
	}
	for _, fd := range fds[1:] {
		unix.Close(fd)
	}
	fd := fds[0]
	unix.CloseOnExec(fd)
	// Non-blocking, so that Go's poller serves reads and Close interrupts them.
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, err
	}
	return os.NewFile(uintptr(fd), "pty-master"), nil
}

// closeOnce is a file that may be closed more than once.
type closeOnce struct {
	*os.File
	once sync.Once
	err  error
}

// Close closes the file the first time it is called.
func (c *closeOnce) Close() error {
	c.once.Do(func() { c.err = c.File.Close() })
	return c.err
}

// ttyInput writes to a pseudo-terminal master. Closing it sends the end of
// file character, since the master also carries the output.
type ttyInput struct {
	f    *os.File
	once sync.Once
	err  error
}

// Write writes to the terminal.
func (t *ttyInput) Write(b []byte) (int, error) { return t.f.Write(b) }

// Close sends the end of file character once.
func (t *ttyInput) Close() error {
	t.once.Do(func() { _, t.err = t.f.Write([]byte{ttyEOF}) })
	return t.err
}

// ttyOutput reads from a pseudo-terminal master. Linux fails such reads
// with EIO once no process holds the terminal open and its buffer is
// drained; ttyOutput reports that as io.EOF.
type ttyOutput struct{ f *os.File }

// Read reads from the terminal.
func (t ttyOutput) Read(b []byte) (int, error) {
	n, err := t.f.Read(b)
	if err != nil && errors.Is(err, unix.EIO) {
		err = io.EOF
	}
	return n, err
}

// memoryEvents is a cgroup's memory.events file, kept open: opening it
// for every process start and exit costs a path walk through kernfs,
// ~1 ms under TCG. A nil *memoryEvents has no counters.
type memoryEvents struct{ f *os.File }

// openMemoryEvents opens the memory.events of cgroup directory dir, or
// returns nil without one.
func openMemoryEvents(dir string) *memoryEvents {
	if dir == "" {
		return nil
	}
	f, err := os.Open(dir + "/memory.events")
	if err != nil {
		return nil
	}
	return &memoryEvents{f: f}
}

// count returns one counter.
func (e *memoryEvents) count(key string) (uint64, error) {
	if e == nil {
		return 0, errors.New("no memory.events")
	}
	buf := make([]byte, 512)
	n, err := e.f.ReadAt(buf, 0)
	if err != nil && !errors.Is(err, io.EOF) {
		return 0, err
	}
	for line := range strings.SplitSeq(string(buf[:n]), "\n") {
		k, v, ok := strings.Cut(line, " ")
		if ok && k == key {
			return strconv.ParseUint(strings.TrimSpace(v), 10, 64)
		}
	}
	return 0, fmt.Errorf("memory.events has no %s", key)
}

// close closes the file.
func (e *memoryEvents) close() {
	if e != nil {
		e.f.Close()
	}
}
