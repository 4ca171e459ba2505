package agent

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"runtime"
	"strings"
	"testing"

	"github.com/cocoon-runtime/cocoon/agent/protocol"
	"github.com/containerd/ttrpc"
	"github.com/hashicorp/yamux"
	spb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// yamuxFrame encodes one yamux frame header (version 0) followed by body.
func yamuxFrame(typ uint8, flags uint16, id uint32, length uint32, body []byte) []byte {
	h := make([]byte, 12, 12+len(body))
	h[0], h[1] = 0, typ
	binary.BigEndian.PutUint16(h[2:], flags)
	binary.BigEndian.PutUint32(h[4:], id)
	binary.BigEndian.PutUint32(h[8:], length)
	return append(h, body...)
}

const (
	yamuxData, yamuxPing = 0, 2
	yamuxSYN, yamuxACK   = 1, 2
)

// heapInUse returns the live heap after a collection.
func heapInUse() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// A hostile guest opens streams towards the host and fills each one's
// window. The host never opens a stream for the guest to accept and must
// not keep any: no streams, no buffered data.
func TestSessionRefusesGuestStreams(t *testing.T) {
	host, guest := net.Pipe()
	defer guest.Close()
	// Drain what the host sends (RSTs, the ping reply) and note the ping.
	pong := make(chan struct{})
	go func() {
		hdr := make([]byte, 12)
		for {
			if _, err := io.ReadFull(guest, hdr); err != nil {
				return
			}
			if hdr[1] == yamuxPing && binary.BigEndian.Uint16(hdr[2:])&yamuxACK != 0 {
				close(pong)
			}
			if hdr[1] == yamuxData {
				io.CopyN(io.Discard, guest, int64(binary.BigEndian.Uint32(hdr[8:])))
			}
		}
	}()
	sess, err := newSession(host)
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()

	before := heapInUse()
	const streams, perStream = 300, 256 << 10 // yamux's initial window
	chunk := bytes.Repeat([]byte("x"), 64<<10)
	for i := range streams {
		id := uint32(2 * (i + 1)) // the server side's stream IDs are even
		for j := 0; j < perStream/len(chunk); j++ {
			flags := uint16(0)
			if j == 0 {
				flags = yamuxSYN
			}
			if _, err := guest.Write(yamuxFrame(yamuxData, flags, id, uint32(len(chunk)), chunk)); err != nil {
				t.Fatalf("stream %d: %v", i, err)
			}
		}
	}
	// The host handles frames in order: once it answered this ping, it
	// has handled every frame before it.
	if _, err := guest.Write(yamuxFrame(yamuxPing, yamuxSYN, 0, 42, nil)); err != nil {
		t.Fatal(err)
	}
	select {
	case <-pong:
	case <-sess.CloseChan():
		t.Fatal("session closed")
	}
	grown := int64(heapInUse()) - int64(before)
	t.Logf("%d guest streams of %d KiB: host holds %d streams, heap grew %d KiB", streams, perStream>>10, sess.NumStreams(), grown>>10)
	if n := sess.NumStreams(); n != 0 {
		t.Errorf("host holds %d guest-opened streams, want 0", n)
	}
	if grown > 8<<20 {
		t.Errorf("host heap grew %d MiB while a guest opened streams", grown>>20)
	}
	runtime.KeepAlive(sess)
}

// ttrpc message types and the largest message ttrpc accepts.
const (
	ttrpcRequest, ttrpcResponse = 1, 2
	ttrpcMaxMessage             = 4 << 20
)

// serveRaw plays a hostile agent: it answers every ttrpc request on conn
// with the raw Response message that reply builds for its method.
func serveRaw(conn net.Conn, reply func(method string) []byte) {
	defer conn.Close()
	hdr := make([]byte, 10)
	for {
		if _, err := io.ReadFull(conn, hdr); err != nil {
			return
		}
		p := make([]byte, binary.BigEndian.Uint32(hdr[:4]))
		if _, err := io.ReadFull(conn, p); err != nil {
			return
		}
		if hdr[8] != ttrpcRequest {
			continue
		}
		var req ttrpc.Request
		if err := proto.Unmarshal(p, &req); err != nil {
			return
		}
		resp := reply(req.Method)
		out := make([]byte, 10, 10+len(resp))
		binary.BigEndian.PutUint32(out[:4], uint32(len(resp)))
		copy(out[4:8], hdr[4:8])
		out[8] = ttrpcResponse
		if _, err := conn.Write(append(out, resp...)); err != nil {
			return
		}
	}
}

// hostileClient returns a Client whose agent answers with reply.
func hostileClient(t *testing.T, reply func(method string) []byte) *Client {
	t.Helper()
	host, guest := net.Pipe()
	go serveRaw(guest, reply)
	c := &Client{}
	c.startRPC(host)
	t.Cleanup(func() { c.Close() })
	return c
}

// withPayload is a ttrpc Response carrying payload.
func withPayload(payload []byte) []byte {
	return protowire.AppendBytes(protowire.AppendTag(nil, 2, protowire.BytesType), payload)
}

// withStatus is a ttrpc Response carrying the encoded google.rpc.Status st.
func withStatus(st []byte) []byte {
	return protowire.AppendBytes(protowire.AppendTag(nil, 1, protowire.BytesType), st)
}

// manyEmpty encodes as many empty length-delimited elements of field num
// as fit in a message of size bytes.
func manyEmpty(num protowire.Number, size int) []byte {
	elem := protowire.AppendBytes(protowire.AppendTag(nil, num, protowire.BytesType), nil)
	return bytes.Repeat(elem, size/len(elem))
}

// allocated returns how many bytes fn allocated.
func allocated(fn func()) uint64 {
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	fn()
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc
}

// maxReplyAlloc bounds what one hostile 4 MiB reply may make the host
// allocate: a few copies of the message, not the ~50x a protobuf decode of
// tiny elements costs.
const maxReplyAlloc = 32 << 20

// A 4 MiB reply of tiny repeated elements must be refused before protobuf
// decodes it into millions of structs.
func TestRepeatedFieldsBoundedBeforeDecoding(t *testing.T) {
	size := ttrpcMaxMessage - 64
	cases := map[string]struct {
		reply []byte
		call  func(c *Client) error
	}{
		"processes": {
			reply: withPayload(manyEmpty(1, size)),
			call: func(c *Client) error {
				_, err := c.ListProcesses(context.Background(), "c1")
				return err
			},
		},
		"modules": {
			reply: withPayload(manyEmpty(9, size)),
			call: func(c *Client) error {
				_, err := c.GuestDetails(context.Background())
				return err
			},
		},
		"interfaces": {
			reply: withPayload(manyEmpty(1, size)),
			call: func(c *Client) error {
				_, err := c.ListInterfaces(context.Background())
				return err
			},
		},
		"routes": {
			reply: withPayload(manyEmpty(1, size)),
			call: func(c *Client) error {
				_, err := c.ListRoutes(context.Background())
				return err
			},
		},
		// The reply envelope's error status has a repeated field too.
		"status details": {
			reply: withStatus(append(protowire.AppendVarint(protowire.AppendTag(nil, 1, protowire.VarintType), uint64(codes.Internal)), manyEmpty(3, size)...)),
			call: func(c *Client) error {
				_, err := c.ListProcesses(context.Background(), "c1")
				return err
			},
		},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			c := hostileClient(t, func(string) []byte { return tc.reply })
			var err error
			n := allocated(func() { err = tc.call(c) })
			t.Logf("allocated %d MiB, err %.100v", n>>20, err)
			if !errors.Is(err, ErrProtocol) {
				t.Errorf("err = %v, want ErrProtocol", err)
			}
			if n > maxReplyAlloc {
				t.Errorf("a %d KiB reply allocated %d MiB", len(tc.reply)>>10, n>>20)
			}
		})
	}
}

// A reply within bounds still decodes.
func TestRepeatedFieldsWithinBounds(t *testing.T) {
	list := &protocol.ProcessList{}
	for i := range 100 {
		list.Processes = append(list.Processes, &protocol.ProcessInfo{Pid: int32(i + 1), Command: "sh"})
	}
	b, err := proto.Marshal(list)
	if err != nil {
		t.Fatal(err)
	}
	c := hostileClient(t, func(string) []byte { return withPayload(b) })
	ps, err := c.ListProcesses(context.Background(), "c1")
	if err != nil || len(ps) != 100 || ps[99].Pid != 100 {
		t.Fatalf("ListProcesses = %d processes, %v", len(ps), err)
	}
}

// The agent's error messages reach errors, logs and terminals: they must
// lose escape sequences and be bounded, and keep their status code.
func TestGuestErrorTextSanitized(t *testing.T) {
	msg := "no such container\x1b]0;owned\x07\x1b[2J\x1b[31m!\r\n" + strings.Repeat("A", 1<<20)
	st, err := proto.Marshal(&spb.Status{Code: int32(codes.NotFound), Message: msg})
	if err != nil {
		t.Fatal(err)
	}
	c := hostileClient(t, func(string) []byte { return withStatus(st) })
	err = c.StartContainer(context.Background(), "c1")
	if err == nil {
		t.Fatal("no error")
	}
	text := err.Error()
	if strings.ContainsAny(text, "\x1b\x07\r\n") || len(text) > 8<<10 {
		t.Errorf("unsanitized guest error (%d bytes): %.200q", len(text), text)
	}
	if !strings.Contains(text, "no such container") {
		t.Errorf("guest message lost: %.200q", text)
	}
	if got := status.Code(err); got != codes.NotFound {
		t.Errorf("status code %v, want NotFound", got)
	}
}

// Refusing the guest's streams leaves the host's own working.
func TestSessionOpensHostStreams(t *testing.T) {
	host, guest := net.Pipe()
	srv, err := yamux.Server(guest, protocol.YamuxConfig(io.Discard))
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	sess, err := newSession(host)
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	go func() {
		s, err := srv.Accept()
		if err != nil {
			return
		}
		io.Copy(s, s)
		s.Close()
	}()
	s, err := sess.Open()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4)
	if _, err := io.ReadFull(s, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("echo %q, %v", buf, err)
	}
	if _, err := srv.Open(); err == nil {
		t.Error("guest could open a stream")
	}
}
