package agent

import (
	"bytes"
	"context"
	"fmt"
	"syscall"
	"time"

	"github.com/cocoon-runtime/cocoon/agent/protocol"
)

// portAnswerTimeout bounds the wait for the guest's status byte when ctx
// has no earlier deadline: the guest's own connect gives up after 5 s.
const portAnswerTimeout = 10 * time.Second

// DialPort connects to port on the guest's loopback: 127.0.0.1 or ::1,
// family (protocol.PortIPv4 or PortIPv6) first. The guest only answers
// one status byte before the connection carries frames: a refusal comes
// back as an error wrapping syscall.ECONNREFUSED, a VM that died as
// ErrGuestDied, a guest that does not answer in time as ErrTimeout.
func (c *Client) DialPort(ctx context.Context, family byte, port uint16) (*protocol.PortStream, error) {
	req := protocol.PortRequest{Family: family, Port: port}
	conn, err := c.openConn(protocol.ConnPort)
	if err != nil {
		return nil, fmt.Errorf("connect to guest port %d: %w", port, err)
	}
	// The ConnPort byte was sent already; send the rest of the request.
	var b bytes.Buffer
	if err := protocol.WritePortRequest(&b, req); err != nil {
		conn.Close()
		return nil, err
	}
	deadline := time.Now().Add(portAnswerTimeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	conn.SetDeadline(deadline)
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Now()) })
	defer stop()
	var status [1]byte
	_, err = conn.Write(b.Bytes()[1:])
	if err == nil {
		_, err = conn.Read(status[:])
	}
	if err != nil {
		conn.Close()
		select {
		case <-c.dead:
			return nil, fmt.Errorf("connect to guest port %d: %w", port, ErrGuestDied)
		default:
		}
		if ctx.Err() != nil {
			return nil, fmt.Errorf("connect to guest port %d: %w", port, ctx.Err())
		}
		return nil, fmt.Errorf("connect to guest port %d: %w: %w", port, ErrTimeout, err)
	}
	if !stop() {
		conn.Close()
		return nil, fmt.Errorf("connect to guest port %d: %w", port, ctx.Err())
	}
	conn.SetDeadline(time.Time{})
	switch status[0] {
	case protocol.PortOK:
		return protocol.NewPortStream(conn), nil
	case protocol.PortRefused:
		conn.Close()
		return nil, fmt.Errorf("connect to guest port %d: %w", port, syscall.ECONNREFUSED)
	case protocol.PortFailed:
		conn.Close()
		return nil, fmt.Errorf("connect to guest port %d: the guest could not connect", port)
	default:
		conn.Close()
		return nil, fmt.Errorf("connect to guest port %d: %w: status %d", port, ErrProtocol, status[0])
	}
}
