package channel

import (
	"io"
	"net"
	"testing"
	"time"

	"github.com/cocoon-runtime/cocoon/agent/protocol"
)

// pipeListener hands out the server ends of net.Pipe connections.
type pipeListener struct{ conns chan net.Conn }

func (l *pipeListener) Accept() (net.Conn, error) {
	c, ok := <-l.conns
	if !ok {
		return nil, net.ErrClosed
	}
	return c, nil
}
func (l *pipeListener) Close() error   { return nil }
func (l *pipeListener) Addr() net.Addr { return pipeAddr{} }

type pipeAddr struct{}

func (pipeAddr) Network() string { return "pipe" }
func (pipeAddr) String() string  { return "pipe" }

func TestDemuxRoutesByFirstByte(t *testing.T) {
	pl := &pipeListener{conns: make(chan net.Conn, 3)}
	streams := make(chan protocol.StreamHeader, 1)
	l := Demux(pl, Handlers{Stream: func(h protocol.StreamHeader, c net.Conn) { streams <- h; c.Close() }})
	defer l.Close()

	dial := func() net.Conn {
		client, server := net.Pipe()
		pl.conns <- server
		return client
	}
	// An IO stream goes to the callback with its header.
	io1 := dial()
	go protocol.WriteStreamHeader(io1, protocol.StreamHeader{ContainerID: "c", Stream: protocol.StreamStderr})
	select {
	case h := <-streams:
		if h.ContainerID != "c" || h.Stream != protocol.StreamStderr {
			t.Fatalf("header %+v", h)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("stream not routed")
	}
	// Garbage is dropped: the connection is closed.
	bad := dial()
	go bad.Write([]byte{'X'})
	if _, err := io.ReadAll(bad); err != nil {
		t.Fatalf("bad connection: %v", err)
	}
	// An RPC connection comes out of Accept with its payload intact.
	rpc := dial()
	go rpc.Write([]byte{protocol.ConnRPC, 'h', 'i'})
	c, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 2)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "hi" {
		t.Fatalf("rpc payload %q, %v", buf, err)
	}
}
