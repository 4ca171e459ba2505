// Package agent is the host side of the channel to the cocoon-agent that
// runs inside every sandbox VM.
//
// Dial connects over the VM's agent endpoint (a virtio-serial port
// multiplexed with yamux, or vsock) and returns a Client whose methods call
// the agent's ttrpc services. The guest is untrusted: every reply is
// checked and bounded before it is returned (ttrpc itself caps a message
// at 4 MiB, and replybound.go counts repeated fields before protobuf
// decodes them), the guest's text is sanitised, and the guest may open no
// stream of its own.
package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/cocoon-runtime/cocoon/agent/protocol"
	"github.com/cocoon-runtime/cocoon/hypervisor"
	"github.com/cocoon-runtime/cocoon/internal/guesttext"
	"github.com/containerd/ttrpc"
	"github.com/hashicorp/yamux"
	"github.com/mdlayher/vsock"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/status"
)

// Errors callers branch on.
var (
	// ErrGuestDied is returned when the VM exited while waiting for, or
	// talking to, the agent.
	ErrGuestDied = errors.New("guest died")
	// ErrTimeout is returned when the agent did not answer in time.
	ErrTimeout = errors.New("agent did not answer")
	// ErrProtocol is returned when the agent's reply is malformed or
	// speaks another protocol version.
	ErrProtocol = errors.New("agent protocol violation")
)

// DialOptions tune Dial.
type DialOptions struct {
	// Dead, when non-nil, is closed when the VM exits; Dial and calls then
	// fail with ErrGuestDied instead of waiting for their timeout.
	Dead <-chan struct{}
	// RetryInterval is the pause between connection attempts (default 10ms).
	RetryInterval time.Duration
	// AttemptTimeout bounds one connection attempt (default 3s, which
	// covers a guest that is still booting). Re-attaching to a booted guest
	// should use a short one: an attempt can only fail by landing in a
	// session the guest has not yet seen end, and then a retry succeeds.
	AttemptTimeout time.Duration
}

// Client talks to one guest agent. It is safe for concurrent use.
type Client struct {
	ep       hypervisor.AgentEndpoint
	conn     net.Conn       // the serial socket; nil for vsock
	sess     *yamux.Session // nil for vsock
	portLock *os.File       // flock held on the serial port we use
	ttrpc    *ttrpc.Client
	guard    *replyGuard // under ttrpc: checks reply envelopes
	health   protocol.HealthService
	agent    protocol.AgentService
	dead     <-chan struct{}

	closeOnce sync.Once
}

// Dial connects to the agent at ep and waits until it answers a health
// check. It retries until ctx is done, so callers bound the wait (the
// guest's boot time) with ctx.
func Dial(ctx context.Context, ep hypervisor.AgentEndpoint, opts DialOptions) (*Client, error) {
	if opts.RetryInterval == 0 {
		opts.RetryInterval = 10 * time.Millisecond
	}
	if opts.AttemptTimeout == 0 {
		opts.AttemptTimeout = attemptTimeout
	}
	var lastErr error
	for {
		c, err := dialOnce(ctx, ep, opts.Dead, opts.AttemptTimeout)
		if err == nil {
			return c, nil
		}
		lastErr = err
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("dial agent %s: %w (last attempt: %v)", describe(ep), ErrTimeout, lastErr)
		case <-opts.Dead:
			return nil, fmt.Errorf("dial agent %s: %w", describe(ep), ErrGuestDied)
		case <-time.After(opts.RetryInterval):
		}
	}
}

func describe(ep hypervisor.AgentEndpoint) string {
	if ep.Transport == hypervisor.TransportVsock {
		return fmt.Sprintf("vsock://%d:%d", ep.CID, ep.Port)
	}
	if len(ep.Sockets) > 0 {
		return "serial://" + filepath.Dir(ep.Sockets[0])
	}
	return "serial://"
}

// attemptTimeout bounds one connection attempt. Bytes sent before a
// booting guest opens its port wait in the socket, so one attempt normally
// covers a whole boot; a new attempt starts only when a session broke.
const attemptTimeout = 3 * time.Second

func dialOnce(ctx context.Context, ep hypervisor.AgentEndpoint, dead <-chan struct{}, timeout time.Duration) (*Client, error) {
	actx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	c := &Client{dead: dead, ep: ep}
	switch ep.Transport {
	case hypervisor.TransportVsock:
	case hypervisor.TransportSerial, "":
		conn, lock, err := dialFreePort(actx, ep.Sockets)
		if err != nil {
			return nil, err
		}
		if err := awaitHello(actx, conn); err != nil {
			conn.Close()
			lock.Close()
			return nil, err
		}
		sess, err := newSession(conn)
		if err != nil {
			conn.Close()
			lock.Close()
			return nil, fmt.Errorf("start yamux: %w", err)
		}
		c.conn, c.sess, c.portLock = conn, sess, lock
	default:
		return nil, fmt.Errorf("unknown agent transport %q", ep.Transport)
	}
	stream, err := c.openConn(protocol.ConnRPC)
	if err != nil {
		c.Close()
		return nil, err
	}
	c.startRPC(stream)
	if err := c.Check(actx); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// newSession starts the host's end of the yamux session on the serial
// port conn.
//
// Only the host opens streams. yamux would queue every stream the guest
// opens for an Accept that never comes, each buffering up to its window
// (a hostile guest grew the host heap by 128 MiB that way), so the session
// goes away at once: yamux then answers each stream the guest opens with a
// reset, before it allocates anything for it. The session reads nothing
// from the guest until then, so no stream can slip in first.
func newSession(conn net.Conn) (*yamux.Session, error) {
	gate := &gatedReads{ReadWriteCloser: protocol.BufferedReads(conn), open: make(chan struct{})}
	sess, err := yamux.Client(gate, protocol.YamuxConfig(io.Discard))
	if err != nil {
		return nil, err
	}
	err = sess.GoAway()
	close(gate.open) // before any Close: a session closes only once its reader returned
	if err != nil {
		sess.Close()
		return nil, fmt.Errorf("refuse guest streams: %w", err)
	}
	return sess, nil
}

// gatedReads holds back reads until open is closed.
type gatedReads struct {
	io.ReadWriteCloser
	open chan struct{}
}

func (g *gatedReads) Read(p []byte) (int, error) {
	<-g.open
	return g.ReadWriteCloser.Read(p)
}

// startRPC starts the ttrpc client on stream, the agent's RPC connection.
func (c *Client) startRPC(stream net.Conn) {
	c.guard = &replyGuard{Conn: stream}
	c.ttrpc = ttrpc.NewClient(c.guard, ttrpc.WithUnaryClientInterceptor(boundReplies(replyDescriptors())))
	c.health = protocol.NewHealthClient(c.ttrpc)
	c.agent = protocol.NewAgentClient(c.ttrpc)
}

// openConn opens a new connection to the agent and sends kind as its
// first byte.
func (c *Client) openConn(kind byte) (net.Conn, error) {
	var conn net.Conn
	var err error
	if c.sess != nil {
		conn, err = c.sess.Open()
	} else {
		conn, err = vsock.Dial(c.ep.CID, c.ep.Port, nil)
	}
	if err != nil {
		return nil, fmt.Errorf("open agent connection: %w", err)
	}
	if _, err := conn.Write([]byte{kind}); err != nil {
		conn.Close()
		return nil, fmt.Errorf("open agent connection: %w", err)
	}
	return conn, nil
}

// OpenStream attaches to one stdio stream of a process in the guest. For
// stdout and stderr, read the returned connection until EOF (the process
// closed its end and everything was delivered); for stdin, write to it and
// close it to close the process's stdin.
func (c *Client) OpenStream(ctx context.Context, h protocol.StreamHeader) (net.Conn, error) {
	conn, err := c.openConn(protocol.ConnIO)
	if err != nil {
		return nil, err
	}
	// The ConnIO byte was sent already; send the rest of the header.
	var hdr bytes.Buffer
	if err := protocol.WriteStreamHeader(&hdr, h); err != nil {
		conn.Close()
		return nil, err
	}
	if _, err := conn.Write(hdr.Bytes()[1:]); err != nil {
		conn.Close()
		return nil, fmt.Errorf("open %s stream of %s/%s: %w", h.Stream, h.ContainerID, h.ExecID, err)
	}
	return conn, nil
}

// Close closes the connection. The VM keeps running.
func (c *Client) Close() error {
	c.closeOnce.Do(func() {
		if c.ttrpc != nil {
			c.ttrpc.Close()
		}
		if c.sess != nil {
			c.sess.Close()
		}
		if c.conn != nil {
			c.conn.Close()
		}
		if c.portLock != nil {
			c.portLock.Close()
		}
	})
	return nil
}

// awaitHello reads until the guest's greeting, skipping (a bounded amount
// of) bytes left over from an earlier session.
func awaitHello(ctx context.Context, conn net.Conn) error {
	if dl, ok := ctx.Deadline(); ok {
		conn.SetReadDeadline(dl)
		defer conn.SetReadDeadline(time.Time{})
	}
	hello := []byte(protocol.SerialHello)
	var window []byte
	buf := make([]byte, 1)
	for skipped := 0; skipped < protocol.MaxHelloSkip; skipped++ {
		if _, err := io.ReadFull(conn, buf); err != nil {
			return fmt.Errorf("wait for agent greeting: %w", err)
		}
		window = append(window, buf[0])
		if len(window) > len(hello) {
			window = window[1:]
		}
		if bytes.Equal(window, hello) {
			return nil
		}
	}
	return fmt.Errorf("%w: no greeting in %d bytes", ErrProtocol, protocol.MaxHelloSkip)
}

// ErrBusy is returned when every agent port of the VM is in use by other
// host processes.
var ErrBusy = errors.New("all agent ports are in use")

// dialFreePort claims a serial port no other host process uses, by taking
// an exclusive flock on "<socket>.lock" (the kernel drops it when the
// process dies), and connects to it. It starts at a random port: the port
// another process just released is the one most likely to still carry a
// session the guest has not seen end.
func dialFreePort(ctx context.Context, sockets []string) (net.Conn, *os.File, error) {
	if len(sockets) == 0 {
		return nil, nil, errors.New("no agent sockets")
	}
	first := rand.IntN(len(sockets))
	for i := range sockets {
		sock := sockets[(first+i)%len(sockets)]
		lock, err := os.OpenFile(sock+".lock", os.O_CREATE|os.O_RDWR, 0o600)
		if err != nil {
			return nil, nil, fmt.Errorf("claim agent port: %w", err)
		}
		if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
			lock.Close()
			continue
		}
		var d net.Dialer
		conn, err := d.DialContext(ctx, "unix", sock)
		if err != nil {
			lock.Close()
			return nil, nil, fmt.Errorf("dial serial socket: %w", err)
		}
		return conn, lock, nil
	}
	return nil, nil, ErrBusy
}

// call runs fn, turning a VM exit into ErrGuestDied.
func (c *Client) call(ctx context.Context, name string, fn func(ctx context.Context) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if c.dead != nil {
		go func() {
			select {
			case <-c.dead:
				cancel()
			case <-ctx.Done():
			}
		}()
	}
	err := fn(ctx)
	if err == nil {
		return nil
	}
	err = sanitizeStatus(err)
	select {
	case <-c.dead:
		return fmt.Errorf("agent %s: %w", name, ErrGuestDied)
	default:
	}
	if v := c.guard.err(); v != nil {
		// The guard ended the connection; ttrpc may report only that.
		return fmt.Errorf("agent %s: %w", name, v)
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("agent %s: %w: %w", name, ErrTimeout, err)
	}
	return fmt.Errorf("agent %s: %w", name, err)
}

// maxErrorText bounds the message of an error the agent returns.
const maxErrorText = 1024

// sanitizeStatus makes an error status the agent returned safe to log
// and display: its message, the guest's text, loses escape sequences and
// control characters and is bounded. The status code stays.
func sanitizeStatus(err error) error {
	se, ok := err.(interface{ GRPCStatus() *status.Status })
	if !ok {
		return err
	}
	st := se.GRPCStatus()
	return status.Error(st.Code(), guesttext.Line(st.Message(), maxErrorText))
}

// Check asks the agent whether it is serving.
func (c *Client) Check(ctx context.Context) error {
	return c.call(ctx, "check", func(ctx context.Context) error {
		r, err := c.health.Check(ctx, &protocol.CheckRequest{})
		if err != nil {
			return err
		}
		if r.Status != protocol.CheckResponse_SERVING {
			return fmt.Errorf("agent not serving: %v", r.Status)
		}
		return nil
	})
}

// VersionInfo is the agent's version.
type VersionInfo struct {
	Agent    string
	Protocol uint32
}

// Version asks the agent for its version and checks that it speaks our
// protocol.
func (c *Client) Version(ctx context.Context) (VersionInfo, error) {
	var v VersionInfo
	err := c.call(ctx, "version", func(ctx context.Context) error {
		r, err := c.health.Version(ctx, &protocol.VersionRequest{})
		if err != nil {
			return err
		}
		v, err = validateVersion(r)
		return err
	})
	return v, err
}

// validateVersion checks that the agent speaks our protocol. The version
// it reports comes back even when it does not, for the error messages.
func validateVersion(r *protocol.VersionResponse) (VersionInfo, error) {
	v := VersionInfo{Agent: guesttext.Line(r.AgentVersion, maxVersion), Protocol: r.ProtocolVersion}
	if v.Protocol != protocol.Version {
		return v, fmt.Errorf("%w: agent speaks protocol %d, host %d", ErrProtocol, v.Protocol, protocol.Version)
	}
	return v, nil
}

// GuestDetails describes a guest, as reported (and not to be trusted
// beyond display and sizing decisions) by its agent.
type GuestDetails struct {
	KernelRelease string
	KernelVersion string
	Machine       string
	Hostname      string
	OnlineCPUs    uint32
	MemTotal      uint64
	MemFree       uint64
	Uptime        time.Duration
	Modules       []string
	BootToServe   time.Duration
	AgentVersion  string
	MemBlockSize  uint64
	BlockDevices  []string
}

// GuestDetails asks the agent to describe its guest.
func (c *Client) GuestDetails(ctx context.Context) (GuestDetails, error) {
	var d GuestDetails
	err := c.call(ctx, "get guest details", func(ctx context.Context) error {
		r, err := c.agent.GetGuestDetails(ctx, &protocol.GetGuestDetailsRequest{})
		if err != nil {
			return err
		}
		d, err = validateDetails(r)
		return err
	})
	return d, err
}

// Limits on what a guest may report.
const (
	maxModules   = 256
	maxCPUs      = 4096
	maxMemory    = 16 << 40 // 16 TiB
	maxFieldSize = 256
	maxVersion   = 64
)

func validateDetails(r *protocol.GuestDetails) (GuestDetails, error) {
	if len(r.Modules) > maxModules || len(r.BlockDevices) > maxModules {
		return GuestDetails{}, fmt.Errorf("%w: %d modules reported (max %d)", ErrProtocol, len(r.Modules), maxModules)
	}
	if r.OnlineCpus > maxCPUs || r.MemTotalBytes > maxMemory || r.MemFreeBytes > r.MemTotalBytes {
		return GuestDetails{}, fmt.Errorf("%w: implausible resources (cpus %d, memory %d/%d)", ErrProtocol, r.OnlineCpus, r.MemFreeBytes, r.MemTotalBytes)
	}
	mods := sanitizeAll(r.Modules, 64)
	return GuestDetails{
		KernelRelease: guesttext.Line(r.KernelRelease, maxFieldSize),
		KernelVersion: guesttext.Line(r.KernelVersion, maxFieldSize),
		Machine:       guesttext.Line(r.Machine, 32),
		Hostname:      guesttext.Line(r.Hostname, 64),
		OnlineCPUs:    r.OnlineCpus,
		MemTotal:      r.MemTotalBytes,
		MemFree:       r.MemFreeBytes,
		Uptime:        time.Duration(min(r.UptimeNs, uint64(1<<62))),
		Modules:       mods,
		BootToServe:   time.Duration(min(r.BootToServeNs, uint64(1<<62))),
		AgentVersion:  guesttext.Line(r.AgentVersion, maxVersion),
		MemBlockSize:  r.MemBlockSizeBytes,
		BlockDevices:  sanitizeAll(r.BlockDevices, 32),
	}, nil
}

func sanitizeAll(in []string, max int) []string {
	out := make([]string, len(in))
	for i, s := range in {
		out[i] = guesttext.Line(s, max)
	}
	return out
}

// DestroySandbox asks the agent to power the VM off. The VM may go away
// before the reply arrives, so ErrGuestDied counts as success. synced
// says the guest flushed its file systems before replying, so that the
// host may end the VM without waiting for the guest's power-off (a guest
// that lies only loses its own writes; an older agent says false).
func (c *Client) DestroySandbox(ctx context.Context) (synced bool, err error) {
	err = c.call(ctx, "destroy sandbox", func(ctx context.Context) error {
		r, err := c.agent.DestroySandbox(ctx, &protocol.DestroySandboxRequest{})
		if err == nil {
			synced = r.GetSynced()
		}
		return err
	})
	if errors.Is(err, ErrGuestDied) {
		return false, nil
	}
	return synced, err
}

// ReclaimMemory asks the agent to drop its caches and zero its free
// memory, and returns how much it says it zeroed: a figure to log, not to
// trust.
func (c *Client) ReclaimMemory(ctx context.Context) (zeroed uint64, err error) {
	err = c.call(ctx, "reclaim memory", func(ctx context.Context) error {
		r, err := c.agent.ReclaimMemory(ctx, &protocol.ReclaimMemoryRequest{})
		if err != nil {
			return err
		}
		zeroed = r.ZeroedBytes
		return nil
	})
	return zeroed, err
}

// GuestResources is what a guest says it has online.
type GuestResources struct {
	OnlineCPUs  uint32
	MemoryBytes uint64
}

// OnlineResources asks the agent to online the vCPUs and memory the host
// hot-plugged (waiting up to wait for the guest kernel to see vcpus
// vCPUs) and returns what it says is online then. The host gave the VM
// vcpus vCPUs and memBytes of memory: a guest that claims more is lying,
// an ErrProtocol error.
func (c *Client) OnlineResources(ctx context.Context, vcpus uint32, memBytes uint64, wait time.Duration) (GuestResources, error) {
	var out GuestResources
	err := c.call(ctx, "online resources", func(ctx context.Context) error {
		r, err := c.agent.OnlineResources(ctx, &protocol.OnlineResourcesRequest{Vcpus: vcpus, TimeoutMs: uint32(wait.Milliseconds())})
		if err != nil {
			return err
		}
		if r.OnlineCpus == 0 || r.OnlineCpus > vcpus || r.MemTotalBytes > memBytes {
			return fmt.Errorf("%w: the guest reports %d vCPUs and %d bytes online; it was given %d and %d",
				ErrProtocol, r.OnlineCpus, r.MemTotalBytes, vcpus, memBytes)
		}
		out = GuestResources{OnlineCPUs: r.OnlineCpus, MemoryBytes: r.MemTotalBytes}
		return nil
	})
	return out, err
}
