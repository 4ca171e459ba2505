package protocol

import (
	"bufio"
	"io"
	"time"

	"github.com/hashicorp/yamux"
)

// SerialHello is what the guest writes on a virtio-serial port as soon as
// it sees a host connected, before its yamux session starts. The host sends
// nothing until it has read it: bytes a host writes before the guest opened
// its port are not reliably delivered, and bytes left from an earlier host's
// session must not be taken for the new one's.
const SerialHello = "\x00cocoon-agent-hello-1\n"

// MaxHelloSkip bounds the stale bytes a host skips while looking for
// SerialHello.
const MaxHelloSkip = 1 << 20

// YamuxConfig is the yamux configuration both ends of a virtio-serial agent
// channel use. Keep-alives are off: an idle VM must not be woken up, and a
// host that goes away shows up as end of file on the guest's port.
func YamuxConfig(log io.Writer) *yamux.Config {
	cfg := yamux.DefaultConfig()
	cfg.EnableKeepAlive = false
	cfg.ConnectionWriteTimeout = 30 * time.Second
	// Process output streams move megabytes; yamux's default 256 KiB window
	// caps a stream at one window per round trip over the serial port.
	cfg.MaxStreamWindowSize = 4 << 20
	cfg.LogOutput = log
	return cfg
}

// muxReadBuffer is how much a yamux session reads from its port at once.
const muxReadBuffer = 256 << 10

// BufferedReads returns conn with its reads buffered for a yamux session.
// yamux reads its port through a 4 KiB buffer, a read system call for
// every few KiB of process output; with this one, a read takes whatever
// QEMU has written, several frames at once. (Measured alone it made no
// difference above this host's noise: what raised stdout throughput was
// the agent sending larger frames, see internal/guest/agent's coalescingReader.)
func BufferedReads(conn io.ReadWriteCloser) io.ReadWriteCloser {
	return &bufferedConn{ReadWriteCloser: conn, r: bufio.NewReaderSize(conn, muxReadBuffer)}
}

type bufferedConn struct {
	io.ReadWriteCloser
	r *bufio.Reader
}

func (c *bufferedConn) Read(p []byte) (int, error) { return c.r.Read(p) }
