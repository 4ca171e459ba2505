package channel

import (
	"bytes"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/cocoon-runtime/cocoon/agent/protocol"
)

// closeNotifier reports when the demultiplexer closes a connection.
type closeNotifier struct {
	net.Conn
	once   sync.Once
	closed chan struct{}
}

func (c *closeNotifier) Close() error {
	c.once.Do(func() { close(c.closed) })
	return c.Conn.Close()
}

// FuzzDemux has a host open a connection and send arbitrary bytes: Demux
// hands it to ttrpc exactly when it starts with ConnRPC, to the stream
// handler exactly when ConnIO and a header ReadStreamHeader accepts follow,
// with that header, and closes it otherwise; what follows the header is
// left unread for whoever gets the connection.
func FuzzDemux(f *testing.F) {
	var hdr bytes.Buffer
	if err := protocol.WriteStreamHeader(&hdr, protocol.StreamHeader{ContainerID: "c1", ExecID: "e1", Stream: protocol.StreamStdout}); err != nil {
		f.Fatal(err)
	}
	f.Add(append(hdr.Bytes(), "payload"...))
	f.Add([]byte{protocol.ConnRPC, 0, 0, 0, 1})
	f.Add([]byte{protocol.ConnIO, 0, 3, 0, 0, 0})
	f.Add([]byte{protocol.ConnIO, 0xff})
	f.Add([]byte("X"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, in []byte) {
		pl := &pipeListener{conns: make(chan net.Conn, 1)}
		type stream struct {
			h protocol.StreamHeader
			c net.Conn
		}
		streams := make(chan stream, 1)
		l := Demux(pl, Handlers{Stream: func(h protocol.StreamHeader, c net.Conn) { streams <- stream{h, c} }})
		defer close(pl.conns) // ends Demux's accept loop
		defer l.Close()

		host, guest := net.Pipe()
		conn := &closeNotifier{Conn: guest, closed: make(chan struct{})}
		pl.conns <- conn
		go func() {
			host.Write(in)
			host.Close()
		}()
		rpcs := make(chan net.Conn, 1)
		go func() {
			if c, err := l.Accept(); err == nil {
				rpcs <- c
			}
		}()

		var want protocol.StreamHeader
		wantRPC := len(in) > 0 && in[0] == protocol.ConnRPC
		wantStream, rest := false, []byte(nil)
		if wantRPC {
			rest = in[1:]
		}
		if len(in) > 0 && in[0] == protocol.ConnIO {
			r := bytes.NewReader(in[1:])
			h, err := protocol.ReadStreamHeader(r)
			if err == nil {
				want, wantStream, rest = h, true, in[len(in)-r.Len():]
			}
		}

		var got net.Conn
		select {
		case c := <-rpcs:
			if !wantRPC {
				t.Fatalf("%q became a ttrpc connection", in)
			}
			got = c
		case s := <-streams:
			if !wantStream || s.h != want {
				t.Fatalf("%q became stream %+v", in, s.h)
			}
			got = s.c
		case <-conn.closed:
			if wantRPC || wantStream {
				t.Fatalf("%q was refused", in)
			}
			return
		case <-time.After(10 * time.Second):
			t.Fatalf("%q: Demux neither passed on nor closed the connection", in)
		}
		b, err := io.ReadAll(got)
		got.Close()
		if err != nil || !bytes.Equal(b, rest) {
			t.Fatalf("after classifying %q: read %q, %v; want %q", in, b, err, rest)
		}
	})
}
