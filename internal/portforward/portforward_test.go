package portforward

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cocoon-runtime/cocoon/agent/protocol"
	"github.com/cocoon-runtime/cocoon/internal/network"
)

// The tests run two network namespaces of their own: the pod's, where the
// forwarder listens and clients connect, and one standing in for the
// guest, where the test's servers listen. The guest is the one fake: a
// Guest that answers DialPort as the agent does, with protocol.SplicePort
// between a port connection and a TCP connection it makes in the "guest"
// netns, or as a hostile guest would.

func newNetNS(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	path := filepath.Join(t.TempDir(), "ns")
	if err := network.NewNetNS(path); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { network.DeleteNetNS(path) })
	return path
}

// fakeGuest dials the asked port on the loopback of the netns guestNS,
// as the agent does in the VM.
type fakeGuest struct {
	guestNS string
	mu      sync.Mutex
	asked   []protocol.PortRequest
	// answer, when set, replaces the agent: it gets the guest's end.
	answer func(req protocol.PortRequest, guestEnd net.Conn)
}

func (g *fakeGuest) DialPort(ctx context.Context, family byte, port uint16) (*protocol.PortStream, error) {
	req := protocol.PortRequest{Family: family, Port: port}
	g.mu.Lock()
	g.asked = append(g.asked, req)
	g.mu.Unlock()
	hostEnd, guestEnd := net.Pipe()
	if g.answer != nil {
		go func() {
			g.answer(req, guestEnd)
			io.Copy(io.Discard, guestEnd) // as a transport's buffer would
		}()
		return protocol.NewPortStream(hostEnd), nil
	}
	var tcp *net.TCPConn
	err := network.Do(g.guestNS, func() error {
		addr := fmt.Sprintf("127.0.0.1:%d", port)
		if family == protocol.PortIPv6 {
			addr = fmt.Sprintf("[::1]:%d", port)
		}
		c, err := net.Dial("tcp", addr)
		if err == nil {
			tcp = c.(*net.TCPConn)
		}
		return err
	})
	if err != nil {
		hostEnd.Close()
		guestEnd.Close()
		return nil, err
	}
	go protocol.SplicePort(tcp, protocol.NewPortStream(guestEnd))
	return protocol.NewPortStream(hostEnd), nil
}

func (g *fakeGuest) requests() []protocol.PortRequest {
	g.mu.Lock()
	defer g.mu.Unlock()
	return append([]protocol.PortRequest(nil), g.asked...)
}

// listen serves handle on addr in the netns at path.
func listen(t *testing.T, path, addr string, handle func(*net.TCPConn)) {
	t.Helper()
	var l net.Listener
	if err := network.Do(path, func() error {
		var err error
		l, err = net.Listen("tcp", addr)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go handle(c.(*net.TCPConn))
		}
	}()
}

// dial connects to addr from the netns at path.
func dial(t *testing.T, path, addr string) *net.TCPConn {
	t.Helper()
	var c net.Conn
	if err := network.Do(path, func() error {
		var err error
		c, err = net.DialTimeout("tcp", addr, 5*time.Second)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(20 * time.Second))
	t.Cleanup(func() { c.Close() })
	return c.(*net.TCPConn)
}

// exchange connects to addr from the netns at path, sends send and reads
// to the end. A forwarded connection reset at once may already fail the
// connect: Go reads the socket's error after the handshake, and the RST
// can be there first.
func exchange(t *testing.T, path, addr, send string) ([]byte, error) {
	t.Helper()
	var c net.Conn
	if err := network.Do(path, func() error {
		var err error
		c, err = net.DialTimeout("tcp", addr, 5*time.Second)
		return err
	}); err != nil {
		return nil, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := io.WriteString(c, send); err != nil {
		return nil, err
	}
	return io.ReadAll(c)
}

func start(t *testing.T, pod string, g Guest) *Forwarder {
	t.Helper()
	f, err := Start(pod, g, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// greet answers a line with "hello <line>" and closes.
func greet(c *net.TCPConn) {
	defer c.Close()
	line, err := readLine(c)
	if err != nil {
		return
	}
	fmt.Fprintf(c, "hello %s", line)
}

func readLine(r io.Reader) (string, error) {
	var b []byte
	var one [1]byte
	for {
		if _, err := r.Read(one[:]); err != nil {
			return string(b), err
		}
		if one[0] == '\n' {
			return string(b), nil
		}
		b = append(b, one[0])
	}
}

func TestForwardAnyPortBothFamilies(t *testing.T) {
	pod, guestNS := newNetNS(t), newNetNS(t)
	listen(t, guestNS, "127.0.0.1:8080", greet)
	listen(t, guestNS, "[::1]:9090", greet)
	g := &fakeGuest{guestNS: guestNS}
	start(t, pod, g)

	for _, tc := range []struct {
		addr   string
		family byte
		port   uint16
	}{{"127.0.0.1:8080", protocol.PortIPv4, 8080}, {"[::1]:9090", protocol.PortIPv6, 9090}} {
		c := dial(t, pod, tc.addr)
		fmt.Fprintf(c, "%s\n", tc.addr)
		got, err := io.ReadAll(c)
		if err != nil {
			t.Fatalf("%s: %v", tc.addr, err)
		}
		if want := "hello " + tc.addr; string(got) != want {
			t.Fatalf("%s: got %q, want %q", tc.addr, got, want)
		}
		reqs := g.requests()
		if last := reqs[len(reqs)-1]; last.Family != tc.family || last.Port != tc.port {
			t.Fatalf("%s: the guest was asked for %+v", tc.addr, last)
		}
	}
}

func TestForwardHalfCloseAndReset(t *testing.T) {
	pod, guestNS := newNetNS(t), newNetNS(t)
	// 7001 reads everything until the client's half-close, then answers
	// with its length; 7002 resets the connection once it read a line.
	listen(t, guestNS, "127.0.0.1:7001", func(c *net.TCPConn) {
		defer c.Close()
		n, _ := io.Copy(io.Discard, c)
		fmt.Fprintf(c, "got %d", n)
	})
	listen(t, guestNS, "127.0.0.1:7002", func(c *net.TCPConn) {
		readLine(c)
		c.SetLinger(0)
		c.Close()
	})
	start(t, pod, &fakeGuest{guestNS: guestNS})

	c := dial(t, pod, "127.0.0.1:7001")
	payload := bytes.Repeat([]byte("x"), 1<<20)
	if _, err := c.Write(payload); err != nil {
		t.Fatal(err)
	}
	c.CloseWrite()
	got, err := io.ReadAll(c)
	if err != nil || string(got) != fmt.Sprintf("got %d", len(payload)) {
		t.Fatalf("after a half-close: %q, %v", got, err)
	}

	if _, err := exchange(t, pod, "127.0.0.1:7002", "go\n"); !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("a reset in the guest reached the client as %v, want ECONNRESET", err)
	}
}

func TestForwardRefusedIsReset(t *testing.T) {
	pod, guestNS := newNetNS(t), newNetNS(t)
	start(t, pod, &fakeGuest{guestNS: guestNS}) // nothing listens in the guest
	began := time.Now()
	_, err := exchange(t, pod, "127.0.0.1:6000", "")
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("a refused port reached the client as %v, want ECONNRESET", err)
	}
	t.Logf("reset after %v", time.Since(began))
}

func TestForwardManyAtOnce(t *testing.T) {
	pod, guestNS := newNetNS(t), newNetNS(t)
	listen(t, guestNS, "127.0.0.1:8000", greet)
	start(t, pod, &fakeGuest{guestNS: guestNS})
	const n = 20
	errs := make(chan error, n)
	conns := make([]*net.TCPConn, n)
	for i := range conns {
		conns[i] = dial(t, pod, "127.0.0.1:8000")
	}
	for i, c := range conns {
		go func() {
			fmt.Fprintf(c, "client %d\n", i)
			got, err := io.ReadAll(c)
			if err == nil && string(got) != fmt.Sprintf("hello client %d", i) {
				err = fmt.Errorf("client %d got %q", i, got)
			}
			errs <- err
		}()
	}
	for range n {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
}

// A hostile guest answers with frames that break the format, or never
// answers: the client's connection is reset, and the forwarder connects
// nowhere on the host, whatever the guest says.
func TestForwardHostileGuest(t *testing.T) {
	reached := make(chan struct{}, 10)
	for name, answer := range map[string]func(protocol.PortRequest, net.Conn){
		"oversized frame": func(_ protocol.PortRequest, c net.Conn) { c.Write([]byte{protocol.FrameData, 0xff, 0xff, 0xff}) },
		"unknown kind":    func(_ protocol.PortRequest, c net.Conn) { c.Write([]byte{'X', 0, 0, 1, 0}) },
		"empty data":      func(_ protocol.PortRequest, c net.Conn) { c.Write([]byte{protocol.FrameData, 0, 0, 0}) },
		"fin with body":   func(_ protocol.PortRequest, c net.Conn) { c.Write([]byte{protocol.FrameFin, 0, 0, 1, 'x'}) },
		"address talk": func(_ protocol.PortRequest, c net.Conn) {
			c.Write([]byte("\x00127.0.0.2:8080\n"))
		},
		"hang up": func(_ protocol.PortRequest, c net.Conn) { c.Close() },
	} {
		t.Run(name, func(t *testing.T) {
			// A netns each: a client port reused within TIME_WAIT would
			// find the conntrack entry of the last forwarder's redirect.
			pod := newNetNS(t)
			// A server in the pod's netns on a port the guest might name:
			// it must never see a connection.
			listen(t, pod, "127.0.0.2:8080", func(c *net.TCPConn) { reached <- struct{}{}; c.Close() })
			f := start(t, pod, &fakeGuest{answer: answer})
			got, err := exchange(t, pod, "127.0.0.1:8080", "GET /\n")
			if !errors.Is(err, syscall.ECONNRESET) {
				t.Fatalf("client got %q, %v; want a reset", got, err)
			}
			f.Close()
		})
	}
	select {
	case <-reached:
		t.Fatal("the forwarder connected to a server on the host side")
	default:
	}
}

// Close resets the connections in flight and takes the listeners and the
// nftables table out of the netns; a later client is refused as it would
// be with no forwarder at all.
func TestCloseLeavesNothing(t *testing.T) {
	pod, guestNS := newNetNS(t), newNetNS(t)
	block := make(chan struct{})
	t.Cleanup(func() { close(block) })
	listen(t, guestNS, "127.0.0.1:8000", func(c *net.TCPConn) { <-block; c.Close() })
	f := start(t, pod, &fakeGuest{guestNS: guestNS})
	if !hasTable(t, pod) {
		t.Fatalf("no %s table in the netns while forwarding", TableName)
	}
	c := dial(t, pod, "127.0.0.1:8000")
	c.Write([]byte("x"))
	time.Sleep(100 * time.Millisecond) // let the forwarder carry it
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadAll(c); !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("a connection in flight at Close got %v, want a reset", err)
	}
	if hasTable(t, pod) {
		t.Fatalf("table %s left in the netns", TableName)
	}
	err := network.Do(pod, func() error {
		c, err := net.Dial("tcp", "127.0.0.1:8000")
		if err == nil {
			c.Close()
		}
		return err
	})
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("after Close, a connection got %v, want refused", err)
	}
	// Closing again, or after the netns went, is no error.
	network.DeleteNetNS(pod)
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestStartBadNetNS(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	if _, err := Start(filepath.Join(t.TempDir(), "missing"), &fakeGuest{}, slog.Default()); err == nil {
		t.Fatal("Start in a netns that does not exist succeeded")
	}
}

func hasTable(t *testing.T, path string) bool {
	t.Helper()
	ok, err := Installed(path)
	if err != nil {
		t.Fatal(err)
	}
	return ok
}

// Serve carries what one listener accepts to a fixed guest port, and
// ends, resetting what it carries, when its context is done.
func TestServeFixedPort(t *testing.T) {
	pod, guestNS := newNetNS(t), newNetNS(t)
	listen(t, guestNS, "127.0.0.1:8080", greet)
	var l *net.TCPListener
	if err := network.Do(pod, func() error {
		var err error
		l, err = net.ListenTCP("tcp4", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- Serve(ctx, l, &fakeGuest{guestNS: guestNS}, 8080, slog.New(slog.NewTextHandler(io.Discard, nil)))
	}()
	got, err := exchange(t, pod, l.Addr().String(), "serve\n")
	if err != nil || string(got) != "hello serve" {
		t.Fatalf("through Serve: %q, %v", got, err)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Serve after its context ended: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not end with its context")
	}
	if _, err := exchange(t, pod, l.Addr().String(), "late\n"); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("after Serve ended: %v, want refused", err)
	}
}
