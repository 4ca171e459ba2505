// Package storage shares host directories with sandbox VMs: one virtiofsd
// per sandbox exports the sandbox's shared directory, into which container
// root filesystems and volumes are bind-mounted.
package storage

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/cocoon-runtime/cocoon/internal/boundedfs"
	"golang.org/x/sys/unix"
)

// DefaultVirtiofsd is where Debian's QEMU package installs virtiofsd.
const DefaultVirtiofsd = "/usr/lib/qemu/virtiofsd"

// VirtiofsdCandidates are the places distributions install virtiofsd,
// tried in order before PATH.
func VirtiofsdCandidates() []string {
	return []string{DefaultVirtiofsd, "/usr/libexec/virtiofsd"}
}

// FindVirtiofsd returns path if set, else the first virtiofsd found.
func FindVirtiofsd(path string) (string, error) {
	if path != "" {
		return exec.LookPath(path)
	}
	for _, p := range VirtiofsdCandidates() {
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() {
			return p, nil
		}
	}
	return exec.LookPath("virtiofsd")
}

// Virtiofsd is a running virtiofsd. It is not a child of the caller: it
// outlives the process that started it, exits by itself when QEMU
// disconnects, and is found again from its pid file.
type Virtiofsd struct {
	Pid     int
	Socket  string
	PidFile string
}

// virtiofsdLogLimit caps virtiofsd's log.
const virtiofsdLogLimit = 1 << 20

// StartVirtiofsd exports dir on the vhost-user socket sock and returns
// once the socket exists.
func StartVirtiofsd(ctx context.Context, binary, dir, sock, pidFile, logFile string) (*Virtiofsd, error) {
	bin, err := FindVirtiofsd(binary)
	if err != nil {
		return nil, fmt.Errorf("start virtiofsd: %w", err)
	}
	// A guest can make virtiofsd log without end: the log has a cap (a
	// tmpfs of its own beside logFile, which links to it).
	logf, err := boundedfs.OpenLog(logFile, virtiofsdLogLimit)
	if err != nil {
		return nil, fmt.Errorf("start virtiofsd: %w", err)
	}
	defer logf.Close()
	// cache=always keeps file data in the guest's page cache across opens
	// (with cache=auto every open drops it, and every exec re-reads its
	// binary through the queue: 80 ms for busybox under TCG, against 8 ms),
	// and timeout=1 still revalidates attributes within a second, when the
	// kernel also drops the data of a file whose size or mtime changed, so
	// that a volume the host changes does not go stale.
	cmd := exec.Command(bin,
		"--socket-path="+sock,
		"-o", "source="+dir,
		"-o", "cache=always",
		"-o", "timeout=1",
		"-o", "sandbox=namespace",
		"-o", "announce_submounts",
		"--thread-pool-size=1",
	)
	cmd.Stdout, cmd.Stderr = logf, logf
	// Its own session: a Ctrl-C at the terminal that started the sandbox
	// must not kill the sandbox's file server.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start virtiofsd: %w", err)
	}
	v := &Virtiofsd{Pid: cmd.Process.Pid, Socket: sock, PidFile: pidFile}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }() // reaps it while we live
	if err := os.WriteFile(pidFile, []byte(strconv.Itoa(v.Pid)), 0o600); err != nil {
		cmd.Process.Kill()
		return nil, fmt.Errorf("start virtiofsd: %w", err)
	}
	for {
		if _, err := os.Stat(sock); err == nil {
			return v, nil
		}
		select {
		case err := <-exited:
			out, _ := os.ReadFile(logFile)
			return nil, fmt.Errorf("start virtiofsd: exited (%v): %s", err, bytes.TrimSpace(out))
		case <-ctx.Done():
			cmd.Process.Kill()
			return nil, fmt.Errorf("start virtiofsd: %w", ctx.Err())
		case <-time.After(2 * time.Millisecond):
		}
	}
}

// LoadVirtiofsd finds the virtiofsd whose pid file is pidFile. It returns
// nil when none runs.
func LoadVirtiofsd(pidFile, sock string) *Virtiofsd {
	b, err := os.ReadFile(pidFile)
	if err != nil {
		return nil
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || !isVirtiofsd(pid, sock) {
		return nil
	}
	return &Virtiofsd{Pid: pid, Socket: sock, PidFile: pidFile}
}

// isVirtiofsd reports whether pid runs virtiofsd on sock (so a recycled
// pid is never killed).
func isVirtiofsd(pid int, sock string) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	return err == nil && bytes.Contains(b, []byte("--socket-path="+sock))
}

// pidfd opens a pidfd on v's process, or returns -1 when it no longer
// runs (its pid gone, or now another process's).
func (v *Virtiofsd) pidfd() int {
	fd, err := unix.PidfdOpen(v.Pid, 0)
	if err != nil {
		return -1
	}
	if !isVirtiofsd(v.Pid, v.Socket) {
		unix.Close(fd)
		return -1
	}
	return fd
}

// Exited returns a channel closed when virtiofsd exits (at once when v is
// nil: none runs). It is watched through a pidfd, so a recycled pid is
// never mistaken for it.
func (v *Virtiofsd) Exited() <-chan struct{} {
	ch := make(chan struct{})
	if v == nil {
		close(ch)
		return ch
	}
	fd := v.pidfd()
	if fd < 0 {
		close(ch)
		return ch
	}
	go func() {
		defer close(ch)
		defer unix.Close(fd)
		for {
			_, err := unix.Poll([]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}, -1)
			if err != unix.EINTR {
				return
			}
		}
	}()
	return ch
}

// Stop kills virtiofsd (it holds no state worth a graceful exit) and waits
// for it to be gone.
func (v *Virtiofsd) Stop(ctx context.Context) error {
	if v == nil {
		return nil
	}
	fd := v.pidfd()
	if fd < 0 {
		return nil // already gone
	}
	defer unix.Close(fd)
	if err := unix.PidfdSendSignal(fd, unix.SIGKILL, nil, 0); err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("stop virtiofsd %d: %w", v.Pid, err)
	}
	for {
		n, _ := unix.Poll([]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}, 50)
		if n > 0 {
			// Reap it if it is our child; otherwise its parent (or init) does.
			var ws unix.WaitStatus
			unix.Wait4(v.Pid, &ws, unix.WNOHANG, nil)
			os.Remove(v.Socket)
			os.Remove(v.PidFile)
			return nil
		}
		if ctx.Err() != nil {
			return fmt.Errorf("stop virtiofsd %d: %w", v.Pid, ctx.Err())
		}
	}
}
