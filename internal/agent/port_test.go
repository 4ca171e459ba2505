package agent

import (
	"context"
	"errors"
	"io"
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/cocoon-runtime/cocoon/agent/protocol"
	"github.com/hashicorp/yamux"
)

// portGuest is a Client whose guest answers each port connection with
// answer, given the request it read.
func portGuest(t *testing.T, answer func(req protocol.PortRequest, c net.Conn)) *Client {
	t.Helper()
	host, guest := net.Pipe()
	srv, err := yamux.Server(guest, protocol.YamuxConfig(io.Discard))
	if err != nil {
		t.Fatal(err)
	}
	sess, err := newSession(host)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sess.Close(); srv.Close() })
	go func() {
		for {
			s, err := srv.Accept()
			if err != nil {
				return
			}
			go func() {
				var kind [1]byte
				if _, err := io.ReadFull(s, kind[:]); err != nil || kind[0] != protocol.ConnPort {
					s.Close()
					return
				}
				req, err := protocol.ReadPortRequest(s)
				if err != nil {
					s.Close()
					return
				}
				answer(req, s)
			}()
		}
	}()
	return &Client{sess: sess}
}

func TestDialPortStatuses(t *testing.T) {
	got := make(chan protocol.PortRequest, 1)
	c := portGuest(t, func(req protocol.PortRequest, s net.Conn) {
		got <- req
		switch req.Port {
		case 1:
			s.Write([]byte{protocol.PortOK})
			io.Copy(s, s)
		case 2:
			s.Write([]byte{protocol.PortRefused})
		case 3:
			s.Write([]byte{protocol.PortFailed})
		case 4:
			s.Write([]byte{0x7f}) // no such status
		case 5:
			s.Close()
		}
	})
	ctx := context.Background()
	ps, err := c.DialPort(ctx, protocol.PortIPv6, 1)
	if err != nil {
		t.Fatal(err)
	}
	if r := <-got; r.Family != protocol.PortIPv6 || r.Port != 1 {
		t.Fatalf("the guest was asked for %+v", r)
	}
	ps.Close()

	if _, err := c.DialPort(ctx, protocol.PortIPv4, 2); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("refused: %v, want ECONNREFUSED", err)
	}
	<-got
	if _, err := c.DialPort(ctx, protocol.PortIPv4, 3); err == nil || errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("failed: %v", err)
	}
	<-got
	if _, err := c.DialPort(ctx, protocol.PortIPv4, 4); !errors.Is(err, ErrProtocol) {
		t.Errorf("unknown status: %v, want ErrProtocol", err)
	}
	<-got
	if _, err := c.DialPort(ctx, protocol.PortIPv4, 5); err == nil {
		t.Error("a guest that hung up: no error")
	}
	if _, err := c.DialPort(ctx, 9, 80); err == nil {
		t.Error("a bad family was sent")
	}
}

// A guest that never answers cannot hold a connect past its context, and
// a VM that died ends the wait at once.
func TestDialPortSilentGuest(t *testing.T) {
	c := portGuest(t, func(protocol.PortRequest, net.Conn) {})
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	began := time.Now()
	if _, err := c.DialPort(ctx, protocol.PortIPv4, 80); err == nil {
		t.Fatal("a silent guest: no error")
	}
	if d := time.Since(began); d > 5*time.Second {
		t.Fatalf("gave up after %v", d)
	}

	dead := make(chan struct{})
	c = portGuest(t, func(protocol.PortRequest, net.Conn) {})
	c.dead = dead
	time.AfterFunc(100*time.Millisecond, func() { close(dead); c.sess.Close() })
	if _, err := c.DialPort(context.Background(), protocol.PortIPv4, 80); !errors.Is(err, ErrGuestDied) {
		t.Fatalf("a VM that died: %v, want ErrGuestDied", err)
	}
}
