package agent

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"syscall"
	"time"

	"github.com/cocoon-runtime/cocoon/agent/protocol"
)

// maxPortConns bounds the port connections the agent serves at once: each
// holds a goroutine pair, ~200 KiB of buffers and a socket in the guest.
const maxPortConns = 128

// portDialTimeout bounds the guest's connect to its own loopback.
const portDialTimeout = 5 * time.Second

// ForwardPort serves a port connection: it connects to the port on the
// guest's loopback (the pod's localhost: containers share the VM's
// network namespace), answers the status byte and splices the two. Only
// 127.0.0.1 and ::1 are ever dialled, whatever the host asks: the family
// it named first, then the other, as containerd tries one family and
// then the other when it dials a runc pod's localhost.
func (a *Agent) ForwardPort(r protocol.PortRequest, c net.Conn) {
	select {
	case a.portSlots <- struct{}{}:
	default:
		a.log.Warn("port connection refused: too many at once", "port", r.Port)
		c.Write([]byte{protocol.PortFailed})
		c.Close()
		return
	}
	go func() {
		defer func() { <-a.portSlots }()
		tcp, status := dialLoopback(r)
		if _, err := c.Write([]byte{status}); err != nil || tcp == nil {
			if tcp != nil {
				tcp.Close()
			}
			c.Close()
			return
		}
		protocol.SplicePort(tcp, protocol.NewPortStream(c))
	}()
}

// dialLoopback connects to r's port on the loopback address of r's
// family, then of the other; the status says how it went.
func dialLoopback(r protocol.PortRequest) (*net.TCPConn, byte) {
	addrs := []netip.Addr{netip.AddrFrom4([4]byte{127, 0, 0, 1}), netip.IPv6Loopback()}
	if r.Family == protocol.PortIPv6 {
		addrs[0], addrs[1] = addrs[1], addrs[0]
	}
	status := protocol.PortRefused
	for _, addr := range addrs {
		ctx, cancel := context.WithTimeout(context.Background(), portDialTimeout)
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp", netip.AddrPortFrom(addr, r.Port).String())
		cancel()
		if err == nil {
			return c.(*net.TCPConn), protocol.PortOK
		}
		if !errors.Is(err, syscall.ECONNREFUSED) && !errors.Is(err, syscall.EADDRNOTAVAIL) && !errors.Is(err, syscall.ENETUNREACH) {
			status = protocol.PortFailed
		}
	}
	return nil, status
}
