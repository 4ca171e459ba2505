package container

// #cgo CFLAGS: -O2 -Wall
import "C" // builds zygote.c, whose constructor runs the zygote

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/opencontainers/runc/libcontainer"
	"github.com/opencontainers/runc/libcontainer/exeseal"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// Exec'd processes are forked by a zygote when one is ready.
//
// libcontainer starts every process by re-executing the agent as its init
// helper, which joins the container's namespaces and cgroup and sets up the
// user, capabilities, seccomp and the rest before it executes the program.
// Under TCG that costs about 200 ms of guest CPU per exec, most of it the
// Go runtime starting in the 9 MB helper. After the first exec into a
// container, the Manager has libcontainer start, with the same process spec
// but no arguments, a zygote: the agent binary again, whose C constructor
// (zygote.c) takes over before the Go runtime starts. It holds exactly the
// state that libcontainer gives an exec'd process and forks each later exec
// of the same spec from it: the fork inherits that state, so the program
// runs as it would have with libcontainer, in a few milliseconds.
//
// The protocol runs over a SOCK_SEQPACKET pair. The zygote sends "r" once
// it serves. A request is the program's arguments, each ending in a NUL
// byte, with the process's stdin, stdout and stderr attached (SCM_RIGHTS).
// The forked child sends "p" before it executes the program, and the agent
// learns its pid from the credentials the kernel attaches (SO_PASSCRED):
// nothing the zygote says is taken for a pid. The zygote then sends "s" and
// an int32: 0 once the program was executed, else the errno. The zygote's
// child is the agent's child (CLONE_PARENT), so the reaper learns its exit.
//
// The zygote runs in the container with the container's privileges: a
// container process that takes it over can do nothing it could not do
// before, and what it sends the agent is bounded and checked like all
// guest input. Whatever goes wrong, the exec falls back to libcontainer,
// which also gives the usual errors (a program not found, for example).

// zygoteArg is the zygote's first argument; zygote.c has it too.
const zygoteArg = "cocoon-zygote"

// Bounds on a request, as in zygote.c.
const (
	zygoteMaxRequest = 128 << 10
	zygoteMaxArgs    = 4096
)

// zygoteTimeout bounds each reply of a zygote.
const zygoteTimeout = 10 * time.Second

// maxZygotes bounds the zygotes started for one container: a new exec
// spec replaces the zygote, and one that keeps changing should not make
// every exec pay for a new one.
const maxZygotes = 4

// errExecFailed marks a request that the zygote served but whose program
// could not be started; the zygote stays usable.
var errExecFailed = errors.New("zygote could not start the program")

// zygote is a running zygote.
type zygote struct {
	pid   int
	pidfd int
	conn  *net.UnixConn
}

// zygoteSlot is a container's zygote, being started or ready.
type zygoteSlot struct {
	key     string        // the spec it serves, from zygoteKey
	cancel  chan struct{} // closed to drop a start not begun
	started atomic.Bool   // the start has begun
	ready   chan struct{} // closed once z is set, or the start failed
	z       *zygote       // nil if the start failed
}

// wait returns the zygote once started, or nil.
func (s *zygoteSlot) wait() *zygote {
	<-s.ready
	return s.z
}

// zygoteKey identifies the exec'd processes that one zygote can start: the
// whole process spec but its arguments. ok is false for a process that a
// zygote cannot start, one with a terminal.
func zygoteKey(p *specs.Process) (key string, ok bool) {
	if p.Terminal {
		return "", false
	}
	q := *p
	q.Args, q.ConsoleSize = nil, nil
	b, err := json.Marshal(&q)
	if err != nil {
		return "", false
	}
	return string(b), true
}

// zygoteRequest encodes args for the zygote, or fails if it cannot carry
// them; libcontainer then starts the process and reports what is wrong.
func zygoteRequest(args []string) ([]byte, error) {
	if len(args) == 0 || len(args) > zygoteMaxArgs {
		return nil, fmt.Errorf("%d arguments", len(args))
	}
	var b bytes.Buffer
	for _, a := range args {
		if strings.IndexByte(a, 0) >= 0 {
			return nil, errors.New("argument with a NUL byte")
		}
		b.WriteString(a)
		b.WriteByte(0)
	}
	if b.Len() > zygoteMaxRequest {
		return nil, fmt.Errorf("arguments of %d bytes", b.Len())
	}
	return b.Bytes(), nil
}

// zygoteExe returns the agent binary sealed as libcontainer seals it for
// its init helper, made once: the zygote executes it from inside the
// container, which must not be able to change it.
func (m *Manager) zygoteExe() (*os.File, error) {
	m.exeOnce.Do(func() {
		m.exe, m.exeErr = exeseal.CloneSelfExe(m.root)
	})
	return m.exe, m.exeErr
}

// startZygote starts a zygote in c for the exec'd processes like pr.
func (m *Manager) startZygote(c *ctr, pr specs.Process) (_ *zygote, err error) {
	exe, err := m.zygoteExe()
	if err != nil {
		return nil, fmt.Errorf("seal the agent binary: %w", err)
	}
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("zygote socket pair: %w", err)
	}
	if err := unix.SetsockoptInt(fds[0], unix.SOL_SOCKET, unix.SO_PASSCRED, 1); err != nil {
		unix.Close(fds[0])
		unix.Close(fds[1])
		return nil, fmt.Errorf("zygote socket: %w", err)
	}
	ours, theirs := os.NewFile(uintptr(fds[0]), "zygote"), os.NewFile(uintptr(fds[1]), "zygote-child")
	defer ours.Close()
	defer theirs.Close()
	conn, err := net.FileConn(ours)
	if err != nil {
		return nil, fmt.Errorf("zygote socket: %w", err)
	}
	uc := conn.(*net.UnixConn)

	pr.Args = nil
	lp, err := libcontainerProcess(&pr, false)
	if err != nil {
		uc.Close()
		return nil, err
	}
	// ExtraFiles are fds 3 and 4 in the container, where libcontainer
	// looks the program up and executes it.
	lp.Args = []string{"/proc/self/fd/3", zygoteArg, "4", "3"}
	lp.ExtraFiles = []*os.File{exe, theirs}
	m.lock.Lock()
	if err := c.lc.Start(lp); err != nil {
		m.lock.Unlock()
		uc.Close()
		return nil, err
	}
	z := &zygote{conn: uc, pidfd: -1}
	z.pid, err = lp.Pid()
	if err == nil {
		z.pidfd, err = unix.PidfdOpen(z.pid, 0)
	}
	m.lock.Unlock()
	if err != nil {
		uc.Close()
		return nil, fmt.Errorf("zygote pid: %w", err)
	}
	theirs.Close()
	defer func() {
		if err != nil {
			z.close()
		}
	}()
	msg, pid, err := z.recv()
	if err != nil {
		return nil, err
	}
	if msg != "r" || pid != z.pid {
		return nil, fmt.Errorf("zygote pid %d: unexpected message %q from pid %d", z.pid, msg, pid)
	}
	return z, nil
}

// start has z fork args with stdio as their stdin, stdout and stderr, and
// returns the program's pid once it was executed. The caller holds the
// reaper's lock, so that the program, the caller's child, is not reaped
// before its exit can be watched. An error wrapping errExecFailed leaves z
// usable; after any other, close it.
func (z *zygote) start(args []string, stdio []*os.File) (int, error) {
	req, err := zygoteRequest(args)
	if err != nil {
		return 0, fmt.Errorf("%w: %v", errExecFailed, err)
	}
	if err := z.quiet(); err != nil {
		return 0, err
	}
	fds := make([]int, len(stdio))
	for i, f := range stdio {
		fds[i] = int(f.Fd())
	}
	z.conn.SetWriteDeadline(time.Now().Add(zygoteTimeout))
	if _, _, err := z.conn.WriteMsgUnix(req, unix.UnixRights(fds...), nil); err != nil {
		return 0, fmt.Errorf("zygote pid %d: send request: %w", z.pid, err)
	}
	msg, from, err := z.recv()
	if err != nil {
		return 0, err
	}
	child := 0
	if msg == "p" && from != z.pid {
		child = from
		if msg, from, err = z.recv(); err != nil {
			killChild(child)
			return 0, err
		}
	}
	if len(msg) != 5 || msg[0] != 's' || from != z.pid {
		killChild(child)
		return 0, fmt.Errorf("zygote pid %d: unexpected message %q from pid %d", z.pid, msg, from)
	}
	if errno := int32(binary.NativeEndian.Uint32([]byte(msg[1:]))); errno != 0 {
		return 0, fmt.Errorf("%w: %v", errExecFailed, syscall.Errno(errno))
	}
	if child == 0 {
		return 0, fmt.Errorf("zygote pid %d: program started without telling its pid", z.pid)
	}
	// The reaper is held: the program is still this process's child, or
	// a zombie, unless the pid was not the zygote's child at all.
	if !isChild(child) {
		return 0, fmt.Errorf("zygote pid %d: pid %d is not a child of the agent", z.pid, child)
	}
	return child, nil
}

// quiet checks that nothing waits on z's socket: between requests nobody
// has anything to say, and whoever does is not to be trusted with the next.
func (z *zygote) quiet() error {
	rc, err := z.conn.SyscallConn()
	if err != nil {
		return err
	}
	var n int
	var rerr error
	if err := rc.Read(func(fd uintptr) bool {
		n, _, rerr = unix.Recvfrom(int(fd), make([]byte, 1), unix.MSG_PEEK|unix.MSG_DONTWAIT)
		return true
	}); err != nil {
		return fmt.Errorf("zygote pid %d: %w", z.pid, err)
	}
	switch {
	case errors.Is(rerr, unix.EAGAIN):
		return nil
	case rerr != nil:
		return fmt.Errorf("zygote pid %d: %w", z.pid, rerr)
	case n == 0:
		return fmt.Errorf("zygote pid %d: closed", z.pid)
	default:
		return fmt.Errorf("zygote pid %d: message out of turn", z.pid)
	}
}

// recv reads one message from the zygote, and the pid of its sender.
func (z *zygote) recv() (msg string, pid int, err error) {
	buf := make([]byte, 16)
	oob := make([]byte, unix.CmsgSpace(unix.SizeofUcred))
	z.conn.SetReadDeadline(time.Now().Add(zygoteTimeout))
	n, oobn, flags, _, err := z.conn.ReadMsgUnix(buf, oob)
	if err != nil {
		return "", 0, fmt.Errorf("zygote pid %d: %w", z.pid, err)
	}
	if n == 0 {
		return "", 0, fmt.Errorf("zygote pid %d: closed", z.pid)
	}
	if flags&(unix.MSG_TRUNC|unix.MSG_CTRUNC) != 0 {
		return "", 0, fmt.Errorf("zygote pid %d: oversized message", z.pid)
	}
	cmsgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil || len(cmsgs) != 1 {
		return "", 0, fmt.Errorf("zygote pid %d: no credentials (%v)", z.pid, err)
	}
	cred, err := unix.ParseUnixCredentials(&cmsgs[0])
	if err != nil {
		return "", 0, fmt.Errorf("zygote pid %d: credentials: %w", z.pid, err)
	}
	return string(buf[:n]), int(cred.Pid), nil
}

// close stops the zygote: closing the socket ends it, and SIGKILL makes
// sure of it.
func (z *zygote) close() {
	z.conn.Close()
	if z.pidfd >= 0 {
		_ = unix.PidfdSendSignal(z.pidfd, unix.SIGKILL, nil, 0)
		unix.Close(z.pidfd)
		z.pidfd = -1
	}
}

// killChild kills pid if it is a child of the agent, which cannot have been
// reaped while the caller holds the reaper's lock; any other process may
// be gone and its pid reused.
func killChild(pid int) {
	if isChild(pid) {
		_ = unix.Kill(pid, unix.SIGKILL)
	}
}

// isChild reports whether pid is a child of this process, running or not
// yet reaped: waitid(2) on its pidfd fails with ECHILD for any other
// process. Cheaper than reading /proc/<pid>/stat, which takes ~1.5 ms
// under TCG.
func isChild(pid int) bool {
	if pid <= 0 {
		return false
	}
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return false
	}
	defer unix.Close(fd)
	return peekChild(fd) == nil
}

// execZygote starts pr, exec execID of c, with c's zygote for key, pr's
// zygoteKey, if it has one. ok is false when libcontainer must start it
// instead. The caller holds c.mu.
func (m *Manager) execZygote(c *ctr, execID, key string, pr *specs.Process, pio ProcessIO) (_ *Process, ok bool) {
	z := c.zygoteFor(key)
	if z == nil {
		return nil, false
	}
	p := newProcess(c.id, execID, false)
	var lp libcontainer.Process
	pend, err := p.prepareIO(pio, &lp)
	if err != nil {
		return nil, false
	}
	defer pend.close()
	m.lock.Lock()
	ch := m.reaper.Subscribe()
	pid, err := z.start(pr.Args, pend.child)
	if err != nil {
		m.lock.Unlock()
		m.reaper.Unsubscribe(ch)
		p.closeIO()
		if !errors.Is(err, errExecFailed) {
			m.log.Warn("zygote failed; execs start with libcontainer", "container", c.id, "err", err)
			c.dropZygote(z)
		}
		return nil, false
	}
	p.setStarted(pid, c.oom)
	m.lock.Unlock()
	go p.watch(m.reaper, ch, m.log)
	if err := p.started(pend); err != nil { // cannot fail without a terminal
		_ = p.Signal(unix.SIGKILL)
	}
	return p, true
}

// zygoteFor returns c's zygote for key, waiting while it starts, or nil.
// The caller holds c.mu.
func (c *ctr) zygoteFor(key string) *zygote {
	s := c.zygote
	if s == nil || s.key != key || !s.started.Load() {
		return nil
	}
	return s.wait()
}

// dropZygote stops c's zygote after it failed. The caller holds c.mu.
func (c *ctr) dropZygote(z *zygote) {
	if c.zygote != nil && c.zygote.z == z {
		c.zygote = nil
	}
	z.close()
}

// stopZygote stops c's zygote, waiting for one being started. The caller
// holds c.mu.
func (c *ctr) stopZygote() {
	if s := c.zygote; s != nil {
		c.zygote = nil
		close(s.cancel)
		if z := s.wait(); z != nil {
			z.close()
		}
	}
}

// zygotePid returns the pid of c's zygote, 0 without a ready one. The
// caller holds c.mu.
func (c *ctr) zygotePid() int {
	if s := c.zygote; s != nil {
		select {
		case <-s.ready:
			if s.z != nil {
				return s.z.pid
			}
		default:
		}
	}
	return 0
}

// zygoteDelay is the longest a zygote's start waits for the exec that
// asked for it to exit: the start takes the guest's CPU for as long as an
// exec through libcontainer, and should not slow down that exec.
const zygoteDelay = time.Second

// prepareZygote starts, in the background, a zygote for the exec'd
// processes like pr, whose zygoteKey is key, unless c has one. The start
// waits until p exited, or for zygoteDelay; execs meanwhile start with
// libcontainer. The caller holds c.mu.
func (m *Manager) prepareZygote(c *ctr, key string, pr *specs.Process, p *Process) {
	if (c.zygote != nil && c.zygote.key == key) || c.zygotes >= maxZygotes || c.noZygote.Load() {
		return
	}
	c.stopZygote()
	c.zygotes++
	s := &zygoteSlot{key: key, cancel: make(chan struct{}), ready: make(chan struct{})}
	c.zygote = s
	spec := *pr
	go func() {
		defer close(s.ready)
		delay := time.NewTimer(zygoteDelay)
		defer delay.Stop()
		select {
		case <-p.done:
		case <-delay.C:
		case <-s.cancel:
			return
		}
		s.started.Store(true)
		z, err := m.startZygote(c, spec)
		if err != nil {
			// What failed once (no /proc in the container, a seccomp
			// profile that kills the zygote) fails again.
			m.log.Info("no zygote; execs keep starting with libcontainer", "container", c.id, "err", err)
			c.noZygote.Store(true)
			return
		}
		m.log.Debug("zygote ready", "container", c.id, "pid", z.pid)
		s.z = z
	}()
}

// sealedExe is the agent binary that zygotes execute, sealed once.
type sealedExe struct {
	exeOnce sync.Once
	exe     *os.File
	exeErr  error
}
