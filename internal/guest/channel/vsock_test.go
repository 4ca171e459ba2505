package channel

import (
	"net"
	"testing"

	"github.com/mdlayher/vsock"
)

func TestFromHost(t *testing.T) {
	cases := []struct {
		addr net.Addr
		want bool
	}{
		{&vsock.Addr{ContextID: vsock.Host, Port: 1234}, true},
		{&vsock.Addr{ContextID: vsock.Local, Port: 1234}, false}, // a process in this guest
		{&vsock.Addr{ContextID: vsock.Hypervisor}, false},
		{&vsock.Addr{ContextID: 3}, false}, // another VM
		{&vsock.Addr{ContextID: 0xffffffff}, false},
		{&net.UnixAddr{Name: "/x", Net: "unix"}, false},
		{nil, false},
	}
	for _, c := range cases {
		if got := fromHost(c.addr); got != c.want {
			t.Errorf("fromHost(%v) = %v, want %v", c.addr, got, c.want)
		}
	}
}

// fakeConn is a connection from addr that records being closed.
type fakeConn struct {
	net.Conn
	addr   net.Addr
	closed bool
}

func (c *fakeConn) RemoteAddr() net.Addr { return c.addr }
func (c *fakeConn) Close() error         { c.closed = true; return nil }

// fakeListener hands out conns, then fails.
type fakeListener struct {
	net.Listener
	conns []*fakeConn
}

func (l *fakeListener) Accept() (net.Conn, error) {
	if len(l.conns) == 0 {
		return nil, net.ErrClosed
	}
	c := l.conns[0]
	l.conns = l.conns[1:]
	return c, nil
}

func TestHostOnlyListenerRefusesOthers(t *testing.T) {
	local := &fakeConn{addr: &vsock.Addr{ContextID: vsock.Local, Port: 5}}
	other := &fakeConn{addr: &vsock.Addr{ContextID: 7, Port: 5}}
	host := &fakeConn{addr: &vsock.Addr{ContextID: vsock.Host, Port: 5}}
	l := hostOnly(&fakeListener{conns: []*fakeConn{local, other, host}})
	c, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	if c != host {
		t.Errorf("accepted %v, want the host's connection", c.RemoteAddr())
	}
	if !local.closed || !other.closed || host.closed {
		t.Errorf("closed: local %v other %v host %v", local.closed, other.closed, host.closed)
	}
	if _, err := l.Accept(); err == nil {
		t.Error("Accept after the listener failed returned no error")
	}
}
