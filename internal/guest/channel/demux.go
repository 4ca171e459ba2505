package channel

import (
	"context"
	"io"
	"net"
	"sync"
	"time"

	"github.com/cocoon-runtime/cocoon/agent/protocol"
)

// Handlers take the connections that are not ttrpc, their header already
// read and checked.
type Handlers struct {
	// Stream takes a process IO stream.
	Stream func(protocol.StreamHeader, net.Conn)
	// Port takes a port connection: it must answer the status byte.
	Port func(protocol.PortRequest, net.Conn)
}

// Demux splits the connections accepted by l by their first byte: ttrpc
// connections come out of the returned listener, process IO streams and
// port connections go to h. A connection that sends anything else, or
// nothing within a few seconds, is closed.
func Demux(l net.Listener, h Handlers) net.Listener {
	ctx, cancel := context.WithCancel(context.Background())
	d := &demux{Listener: l, rpc: make(chan net.Conn), ctx: ctx, cancel: cancel}
	go d.run(h)
	return d
}

type demux struct {
	net.Listener
	rpc    chan net.Conn
	ctx    context.Context
	cancel context.CancelFunc
	once   sync.Once
	err    error
}

func (d *demux) run(h Handlers) {
	for {
		c, err := d.Listener.Accept()
		if err != nil {
			d.err = err
			d.cancel()
			return
		}
		go d.classify(c, h)
	}
}

func (d *demux) classify(c net.Conn, hs Handlers) {
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	var b [1]byte
	if _, err := io.ReadFull(c, b[:]); err != nil {
		c.Close()
		return
	}
	switch b[0] {
	case protocol.ConnRPC:
		c.SetReadDeadline(time.Time{})
		select {
		case d.rpc <- c:
		case <-d.ctx.Done():
			c.Close()
		}
	case protocol.ConnIO:
		h, err := protocol.ReadStreamHeader(c)
		if err != nil {
			c.Close()
			return
		}
		c.SetReadDeadline(time.Time{})
		hs.Stream(h, c)
	case protocol.ConnPort:
		r, err := protocol.ReadPortRequest(c)
		if err != nil || hs.Port == nil {
			c.Close()
			return
		}
		c.SetReadDeadline(time.Time{})
		hs.Port(r, c)
	default:
		c.Close()
	}
}

// Accept returns the next ttrpc connection.
func (d *demux) Accept() (net.Conn, error) {
	select {
	case c := <-d.rpc:
		return c, nil
	case <-d.ctx.Done():
		if d.err != nil {
			return nil, d.err
		}
		return nil, net.ErrClosed
	}
}

// Close closes the underlying listener.
func (d *demux) Close() error {
	d.once.Do(d.cancel)
	return d.Listener.Close()
}
