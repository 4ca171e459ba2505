package protocol

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"syscall"
	"time"
)

// A port connection (ConnPort) carries one TCP connection between the
// host and a port on the guest's loopback: kubectl port-forward, which
// containerd's CRI serves by dialling localhost in the pod's network
// namespace on the host, reaches the pod's localhost in the VM through
// it.
//
// After the ConnPort byte the host sends a PortRequest: 3 bytes, the
// address family (PortIPv4 or PortIPv6, the one the host's client used)
// and the port, big-endian. The guest dials 127.0.0.1 or ::1 only, never
// an address the host names: the family it was asked first, then the
// other. It answers one status byte (PortOK, PortRefused, PortFailed),
// and after PortOK both ends exchange frames: a kind byte, a 3-byte
// big-endian length and that many bytes. FrameData carries 1 to MaxFrame
// bytes, FrameFin (empty) says the sender will write no more (a TCP
// half-close), FrameReset (empty) that its connection was reset or
// failed: the receiver resets its own. Frames, not raw bytes, so that a
// half-close and a reset cross any transport (yamux or vsock) as they
// happened.
const ConnPort byte = 'P'

// Address families of a PortRequest.
const (
	PortIPv4 byte = 4
	PortIPv6 byte = 6
)

// Status bytes the guest answers a PortRequest with.
const (
	// PortOK: the guest is connected; frames follow.
	PortOK byte = 0
	// PortRefused: nothing listens on the port in the guest.
	PortRefused byte = 1
	// PortFailed: the guest could not connect for another reason (a
	// timeout, too many connections).
	PortFailed byte = 2
)

// Frame kinds.
const (
	FrameData  byte = 'D'
	FrameFin   byte = 'F'
	FrameReset byte = 'R'
)

// MaxFrame bounds a frame's payload. Large frames matter: each one costs a
// round of the channel (a yamux frame, virtqueue buffers, a QEMU wakeup)
// whatever its size.
const MaxFrame = 128 << 10

// frameHeader is a frame's kind and length.
const frameHeader = 4

// ErrPortReset is returned by PortStream's Read when the other end reset
// its connection.
var ErrPortReset = fmt.Errorf("port connection reset by the other end: %w", syscall.ECONNRESET)

// ErrBadFrame is returned by PortStream's Read for a frame that breaks
// the format.
var ErrBadFrame = errors.New("malformed port connection frame")

// PortRequest is what the host asks for on a port connection.
type PortRequest struct {
	Family byte // PortIPv4 or PortIPv6
	Port   uint16
}

// WritePortRequest writes ConnPort and r to w.
func WritePortRequest(w io.Writer, r PortRequest) error {
	if err := r.valid(); err != nil {
		return err
	}
	_, err := w.Write([]byte{ConnPort, r.Family, byte(r.Port >> 8), byte(r.Port)})
	return err
}

// ReadPortRequest reads a request written by WritePortRequest, after the
// ConnPort byte was consumed.
func ReadPortRequest(r io.Reader) (PortRequest, error) {
	var b [3]byte
	if _, err := io.ReadFull(r, b[:]); err != nil {
		return PortRequest{}, fmt.Errorf("read port request: %w", err)
	}
	req := PortRequest{Family: b[0], Port: binary.BigEndian.Uint16(b[1:])}
	return req, req.valid()
}

func (r PortRequest) valid() error {
	if r.Family != PortIPv4 && r.Family != PortIPv6 {
		return fmt.Errorf("port request: bad address family %d", r.Family)
	}
	if r.Port == 0 {
		return errors.New("port request: port 0")
	}
	return nil
}

// PortStream is one side of a port connection after its status byte: a
// net.Conn whose bytes travel as frames. Write and CloseWrite may be
// called from one goroutine while Read is called from another.
type PortStream struct {
	conn net.Conn

	// Read side, used by one reader at a time.
	hdr     [frameHeader]byte
	pending int // payload bytes of the current data frame not read yet
	rerr    error

	wmu  sync.Mutex
	wbuf []byte
	werr error
}

// NewPortStream frames conn, a port connection past its status byte.
func NewPortStream(conn net.Conn) *PortStream { return &PortStream{conn: conn} }

// Read reads the payload of data frames. It returns io.EOF after the
// other end's FrameFin and ErrPortReset after its FrameReset.
func (s *PortStream) Read(p []byte) (int, error) {
	if s.rerr != nil {
		return 0, s.rerr
	}
	for s.pending == 0 {
		if _, err := io.ReadFull(s.conn, s.hdr[:]); err != nil {
			if errors.Is(err, io.EOF) {
				// The transport ended without a FrameFin: the other end
				// went away, which its peer must see as a reset.
				err = fmt.Errorf("port connection ended without a close: %w", syscall.ECONNRESET)
			}
			s.rerr = err
			return 0, err
		}
		n := int(s.hdr[1])<<16 | int(binary.BigEndian.Uint16(s.hdr[2:]))
		switch {
		case s.hdr[0] == FrameData && n > 0 && n <= MaxFrame:
			s.pending = n
		case s.hdr[0] == FrameFin && n == 0:
			s.rerr = io.EOF
			return 0, io.EOF
		case s.hdr[0] == FrameReset && n == 0:
			s.rerr = ErrPortReset
			return 0, ErrPortReset
		default:
			s.rerr = fmt.Errorf("%w: kind %q, length %d", ErrBadFrame, s.hdr[0], n)
			return 0, s.rerr
		}
	}
	if len(p) > s.pending {
		p = p[:s.pending]
	}
	n, err := s.conn.Read(p)
	s.pending -= n
	if err != nil {
		if errors.Is(err, io.EOF) {
			err = fmt.Errorf("port connection ended inside a frame: %w", syscall.ECONNRESET)
		}
		s.rerr = err
	}
	return n, err
}

// Write sends p as data frames.
func (s *PortStream) Write(p []byte) (int, error) {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	written := 0
	for len(p) > 0 {
		chunk := p[:min(len(p), MaxFrame)]
		if err := s.frameLocked(FrameData, chunk); err != nil {
			return written, err
		}
		written += len(chunk)
		p = p[len(chunk):]
	}
	return written, nil
}

// CloseWrite tells the other end that nothing more will be written.
func (s *PortStream) CloseWrite() error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	return s.frameLocked(FrameFin, nil)
}

// resetWait bounds how long Reset waits to send its frame: a peer that
// reads nothing must not hold the reset up.
const resetWait = time.Second

// Reset tells the other end to reset its connection, and closes this one.
func (s *PortStream) Reset() error {
	// Also cuts short a Write blocked on a full window, which holds wmu.
	s.conn.SetWriteDeadline(time.Now().Add(resetWait))
	s.wmu.Lock()
	err := s.frameLocked(FrameReset, nil)
	s.wmu.Unlock()
	s.conn.Close()
	return err
}

// frameLocked writes one frame; call with wmu held. After a FrameFin or
// FrameReset, or a failed write, nothing more is sent.
func (s *PortStream) frameLocked(kind byte, payload []byte) error {
	if s.werr != nil {
		return s.werr
	}
	s.wbuf = append(s.wbuf[:0], kind, byte(len(payload)>>16), byte(len(payload)>>8), byte(len(payload)))
	s.wbuf = append(s.wbuf, payload...)
	if _, err := s.conn.Write(s.wbuf); err != nil {
		s.werr = err
		return err
	}
	if kind != FrameData {
		s.werr = net.ErrClosed
	}
	return nil
}

// Close closes the connection without a frame.
func (s *PortStream) Close() error { return s.conn.Close() }

// LocalAddr, RemoteAddr and the deadlines are the transport's.
func (s *PortStream) LocalAddr() net.Addr                { return s.conn.LocalAddr() }
func (s *PortStream) RemoteAddr() net.Addr               { return s.conn.RemoteAddr() }
func (s *PortStream) SetDeadline(t time.Time) error      { return s.conn.SetDeadline(t) }
func (s *PortStream) SetReadDeadline(t time.Time) error  { return s.conn.SetReadDeadline(t) }
func (s *PortStream) SetWriteDeadline(t time.Time) error { return s.conn.SetWriteDeadline(t) }

var _ net.Conn = (*PortStream)(nil)

// SplicePort copies between tcp, a TCP connection, and s, its port
// connection, until both directions ended, then closes both. An end of
// file on one side becomes a half-close on the other; a reset or an
// error on one side resets the other, so each end sees what a direct
// TCP connection would have shown it. Both sides of the channel use it:
// the host for the connection its client made, the guest for the one it
// dialled.
func SplicePort(tcp *net.TCPConn, s *PortStream) {
	var once sync.Once
	reset := func() {
		once.Do(func() {
			tcp.SetLinger(0) // close with a RST
			tcp.Close()
			s.Reset()
		})
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		// TCP to the stream: end of file is a half-close, any error a reset.
		// Reads as large as a frame, so that a bulk transfer crosses the
		// channel in few frames.
		if _, err := io.CopyBuffer(s, tcpReader{tcp}, make([]byte, MaxFrame)); err != nil {
			reset()
			return
		}
		if s.CloseWrite() != nil {
			reset()
		}
	}()
	// The stream to TCP.
	if _, err := io.CopyBuffer(tcpWriter{tcp}, s, make([]byte, 64<<10)); err != nil {
		reset()
	} else if tcp.CloseWrite() != nil {
		reset()
	}
	<-done
	tcp.Close()
	s.Close()
}

// tcpWriter and tcpReader hide *net.TCPConn's ReadFrom and WriteTo, so
// that io.CopyBuffer uses the buffer it is given rather than TCPConn's
// generic path (32 KiB at a time).
type tcpWriter struct{ c *net.TCPConn }

type tcpReader struct{ c *net.TCPConn }

func (r tcpReader) Read(p []byte) (int, error) { return r.c.Read(p) }

func (w tcpWriter) Write(p []byte) (int, error) { return w.c.Write(p) }
