package cocoon

import (
	"context"
	"fmt"
	"net"

	"github.com/cocoon-runtime/cocoon/agent/protocol"
	"github.com/cocoon-runtime/cocoon/internal/portforward"
)

// DialPort connects to TCP port on the pod's localhost, inside the VM:
// 127.0.0.1, or ::1 when nothing listens there. The connection carries
// half-closes (its CloseWrite) and resets across the VM's boundary. A
// port nobody listens on gives an error wrapping syscall.ECONNREFUSED.
// The guest only ever dials its own loopback: no address is asked for.
func (s *Sandbox) DialPort(ctx context.Context, port int) (net.Conn, error) {
	if port < 1 || port > 65535 {
		return nil, fmt.Errorf("sandbox %s: dial port %d: %w: port out of range", s.id, port, ErrInvalidConfig)
	}
	ps, err := s.dialPort(ctx, protocol.PortIPv4, uint16(port))
	if err != nil {
		return nil, err
	}
	return ps, nil
}

// dialPort is DialPort with the family to try first.
func (s *Sandbox) dialPort(ctx context.Context, family byte, port uint16) (*protocol.PortStream, error) {
	ag, err := s.agentClient()
	if err != nil {
		return nil, err
	}
	ps, err := ag.DialPort(ctx, family, port)
	if err != nil {
		return nil, fmt.Errorf("sandbox %s: %w", s.id, err)
	}
	return ps, nil
}

// ServePort carries every connection l accepts to port on the pod's
// localhost in the VM (see DialPort), until ctx is done or l fails; then
// l is closed and the connections in flight are reset. A connection the
// guest refuses is reset at once. It is what `cocoon port-forward` runs.
func (s *Sandbox) ServePort(ctx context.Context, l *net.TCPListener, port int) error {
	if port < 1 || port > 65535 {
		return fmt.Errorf("sandbox %s: serve port %d: %w: port out of range", s.id, port, ErrInvalidConfig)
	}
	if err := portforward.Serve(ctx, l, portGuest{s}, uint16(port), s.rt.log.With("sandbox", s.id)); err != nil {
		return fmt.Errorf("sandbox %s: serve port %d: %w", s.id, port, err)
	}
	return nil
}

// ForwardLocalhost makes the pod's localhost reachable from its network
// namespace on the host, as containerd's CRI expects when it serves
// kubectl port-forward (it dials localhost:<port> in that netns): until
// the returned Forwarder is closed, a TCP connection made there to
// 127.0.0.1 or ::1, on any port, is carried to the same port in the VM
// (see DialPort). It is served by this process, which must live as long
// as the pod does (a shim); what it adds to the netns goes with Close or
// with the netns. A sandbox without a network namespace gets ErrState.
func (s *Sandbox) ForwardLocalhost(ctx context.Context) (*Forwarder, error) {
	s.mu.Lock()
	var path string
	if s.state.Network != nil {
		path = s.state.Network.NetNS
	}
	s.mu.Unlock()
	if path == "" {
		return nil, fmt.Errorf("sandbox %s: forward localhost: %w: the sandbox has no network namespace", s.id, ErrState)
	}
	f, err := portforward.Start(path, portGuest{s}, s.rt.log.With("sandbox", s.id))
	if err != nil {
		return nil, fmt.Errorf("sandbox %s: %w", s.id, err)
	}
	return &Forwarder{f: f}, nil
}

// Forwarder serves a sandbox's localhost in its network namespace.
type Forwarder struct{ f *portforward.Forwarder }

// Close stops forwarding: the listeners and what was added to the netns
// go, and connections in flight are reset.
func (f *Forwarder) Close() error { return f.f.Close() }

// portGuest is a Sandbox as the forwarder's guest.
type portGuest struct{ s *Sandbox }

func (g portGuest) DialPort(ctx context.Context, family byte, port uint16) (*protocol.PortStream, error) {
	return g.s.dialPort(ctx, family, port)
}
