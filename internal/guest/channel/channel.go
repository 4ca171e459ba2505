// Package channel provides the listeners the guest agent serves its API on:
// a virtio-serial port multiplexed with yamux, or AF_VSOCK.
//
// This code runs inside the sandbox VM.
package channel

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/cocoon-runtime/cocoon/agent/protocol"
	"github.com/hashicorp/yamux"
	"github.com/mdlayher/vsock"
	"golang.org/x/sys/unix"
)

// The virtio-serial ports the host connects to are named
// protocol.SerialPortName(0), (1), ...; each carries one host process's
// connection at a time. Over vsock the agent listens on protocol.VsockPort.

// ListenVsock listens for host connections on protocol.VsockPort. Only the host's
// connections are accepted: a process in this guest can reach the port
// too, over the local CID, and must not drive the agent.
func ListenVsock() (net.Listener, error) {
	l, err := vsock.Listen(protocol.VsockPort, nil)
	if err != nil {
		return nil, fmt.Errorf("listen vsock port %d: %w", protocol.VsockPort, err)
	}
	return hostOnly(l), nil
}

// hostOnly returns l accepting only connections from the host; it closes
// any other at once.
func hostOnly(l net.Listener) net.Listener { return hostListener{l} }

type hostListener struct{ net.Listener }

func (l hostListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil || fromHost(c.RemoteAddr()) {
			return c, err
		}
		c.Close()
	}
}

// fromHost reports whether a is the host's end of a vsock connection
// (VMADDR_CID_HOST).
func fromHost(a net.Addr) bool {
	va, ok := a.(*vsock.Addr)
	return ok && va != nil && va.ContextID == vsock.Host
}

// FindSerialPorts returns the /dev paths of the virtio-serial ports whose
// names start with prefix, looking them up in sysfs (there is no udev in
// the guest).
func FindSerialPorts(sysfs, dev, prefix string) ([]string, error) {
	dir := filepath.Join(sysfs, "class", "virtio-ports")
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("find serial ports %q: %w", prefix, err)
	}
	var out []string
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(dir, e.Name(), "name"))
		if err != nil || !strings.HasPrefix(strings.TrimSpace(string(b)), prefix) {
			continue
		}
		if _, err := os.Stat(filepath.Join(dev, e.Name())); err == nil {
			out = append(out, filepath.Join(dev, e.Name()))
		}
	}
	return out, nil
}

// WaitSerialPorts waits until want ports named prefix* appear (their driver
// may still be loading), or until at least one appeared and settle passed
// without more, and returns their /dev paths.
func WaitSerialPorts(ctx context.Context, sysfs, dev, prefix string, want int, settle time.Duration) ([]string, error) {
	var first time.Time
	for {
		ports, err := FindSerialPorts(sysfs, dev, prefix)
		if len(ports) >= want || (len(ports) > 0 && !first.IsZero() && time.Since(first) > settle) {
			return ports, nil
		}
		if len(ports) > 0 && first.IsZero() {
			first = time.Now()
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("wait for serial ports %q: %w (last error: %v)", prefix, ctx.Err(), err)
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// Merge returns a listener that accepts from all of ls.
func Merge(ls ...net.Listener) net.Listener {
	ctx, cancel := context.WithCancel(context.Background())
	m := &merged{ls: ls, conns: make(chan net.Conn), ctx: ctx, cancel: cancel}
	for _, l := range ls {
		go func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				select {
				case m.conns <- c:
				case <-ctx.Done():
					c.Close()
					return
				}
			}
		}()
	}
	return m
}

type merged struct {
	ls     []net.Listener
	conns  chan net.Conn
	ctx    context.Context
	cancel context.CancelFunc
}

func (m *merged) Accept() (net.Conn, error) {
	select {
	case c := <-m.conns:
		return c, nil
	case <-m.ctx.Done():
		return nil, net.ErrClosed
	}
}

func (m *merged) Close() error {
	m.cancel()
	for _, l := range m.ls {
		l.Close()
	}
	return nil
}

func (m *merged) Addr() net.Addr { return m.ls[0].Addr() }

// SerialListener accepts yamux streams opened by the host over a
// virtio-serial port. When the host end disconnects (for example because
// the host process restarted) it waits, without spinning, for the next host
// to connect and starts a fresh yamux session.
type SerialListener struct {
	path string
	log  *slog.Logger

	conns  chan net.Conn
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// ListenSerial starts accepting host sessions on the port at path.
func ListenSerial(path string, log *slog.Logger) (*SerialListener, error) {
	// Fail early when the port cannot be opened at all.
	fd, err := unix.Open(path, unix.O_RDWR|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("open serial port %s: %w", path, err)
	}
	unix.Close(fd)
	ctx, cancel := context.WithCancel(context.Background())
	l := &SerialListener{path: path, log: log, conns: make(chan net.Conn), ctx: ctx, cancel: cancel}
	l.wg.Add(1)
	go l.run()
	return l, nil
}

// Accept waits for the next stream the host opens.
func (l *SerialListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.ctx.Done():
		return nil, net.ErrClosed
	}
}

// Close stops accepting and ends the current session.
func (l *SerialListener) Close() error {
	l.cancel()
	l.wg.Wait()
	return nil
}

// Addr reports the port's path.
func (l *SerialListener) Addr() net.Addr { return serialAddr(l.path) }

type serialAddr string

func (a serialAddr) Network() string { return "virtio-serial" }
func (a serialAddr) String() string  { return string(a) }

func (l *SerialListener) run() {
	defer l.wg.Done()
	for l.ctx.Err() == nil {
		if err := l.session(); err != nil && l.ctx.Err() == nil {
			l.log.Warn("serial session ended", "port", l.path, "err", err)
			// Do not spin on a port that fails right away.
			select {
			case <-time.After(100 * time.Millisecond):
			case <-l.ctx.Done():
			}
		}
	}
}

// session serves one host connection: from the host opening its end to it
// closing it.
func (l *SerialListener) session() error {
	fd, err := unix.Open(l.path, unix.O_RDWR|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", l.path, err)
	}
	if err := waitHost(l.ctx, fd); err != nil {
		unix.Close(fd)
		return err
	}
	port := os.NewFile(uintptr(fd), l.path)
	if _, err := io.WriteString(port, protocol.SerialHello); err != nil {
		port.Close()
		return fmt.Errorf("greet host on %s: %w", l.path, err)
	}
	sess, err := yamux.Server(port, protocol.YamuxConfig(io.Discard))
	if err != nil {
		port.Close()
		return fmt.Errorf("start yamux session on %s: %w", l.path, err)
	}
	defer sess.Close()
	go func() {
		select {
		case <-l.ctx.Done():
			sess.Close()
		case <-sess.CloseChan():
		}
	}()
	l.log.Debug("host connected", "port", l.path)
	for {
		stream, err := sess.Accept()
		if err != nil {
			if errors.Is(err, io.EOF) || sess.IsClosed() {
				l.log.Debug("host disconnected", "port", l.path)
				return nil
			}
			return err
		}
		select {
		case l.conns <- stream:
		case <-l.ctx.Done():
			stream.Close()
			return nil
		}
	}
}

// hostPollInterval is how often a port without a host checks whether one
// connected. A port without a host reports POLLHUP at once, so blocking in
// poll is impossible, and neither an edge-triggered epoll wait nor SIGIO on
// an O_ASYNC port woke up when QEMU's host end connected (measured with
// QEMU 7.2 and Linux 6.1): a slow, cheap re-check is what works. It bounds
// how long a host process waits to re-attach to a running VM.
const hostPollInterval = 200 * time.Millisecond

// waitHost blocks until the host end of the port is connected. Every
// port's checks fall on the same instants (multiples of the interval), so
// the guest wakes once for all its waiting ports.
func waitHost(ctx context.Context, fd int) error {
	for {
		pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN | unix.POLLOUT}}
		if _, err := unix.Poll(pfd, 0); err != nil && err != unix.EINTR {
			return fmt.Errorf("poll: %w", err)
		}
		if pfd[0].Revents&unix.POLLHUP == 0 {
			return nil
		}
		now := time.Now()
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(now.Truncate(hostPollInterval).Add(hostPollInterval).Sub(now)):
		}
	}
}
