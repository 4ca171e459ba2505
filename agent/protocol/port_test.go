package protocol

import (
	"bytes"
	"errors"
	"io"
	"net"
	"testing"
	"time"
)

func TestPortRequestRoundTrip(t *testing.T) {
	var b bytes.Buffer
	want := PortRequest{Family: PortIPv6, Port: 8080}
	if err := WritePortRequest(&b, want); err != nil {
		t.Fatal(err)
	}
	if b.Bytes()[0] != ConnPort {
		t.Fatalf("first byte %q, want ConnPort", b.Bytes()[0])
	}
	got, err := ReadPortRequest(bytes.NewReader(b.Bytes()[1:]))
	if err != nil || got != want {
		t.Fatalf("got %+v, %v; want %+v", got, err, want)
	}
	for _, bad := range []PortRequest{{Family: 5, Port: 80}, {Family: PortIPv4}} {
		if err := WritePortRequest(io.Discard, bad); err == nil {
			t.Errorf("WritePortRequest(%+v) succeeded", bad)
		}
	}
	for _, bad := range [][]byte{{4, 0}, {5, 0, 80}, {4, 0, 0}} {
		if _, err := ReadPortRequest(bytes.NewReader(bad)); err == nil {
			t.Errorf("ReadPortRequest(%v) succeeded", bad)
		}
	}
}

// pipe is a buffered in-memory connection pair, as yamux's windows are.
func pipe(t *testing.T) (*PortStream, *PortStream) {
	a, b := net.Pipe()
	t.Cleanup(func() { a.Close(); b.Close() })
	return NewPortStream(a), NewPortStream(b)
}

func TestPortStreamFrames(t *testing.T) {
	a, b := pipe(t)
	payload := bytes.Repeat([]byte("0123456789"), MaxFrame/5) // two frames and a bit
	go func() {
		a.Write(payload)
		a.CloseWrite()
	}()
	got, err := io.ReadAll(b)
	if err != nil || !bytes.Equal(got, payload) {
		t.Fatalf("read %d bytes, %v; want %d bytes and a clean end", len(got), err, len(payload))
	}
	// After a FrameFin the writer sends nothing more.
	if _, err := a.Write([]byte("late")); err == nil {
		t.Fatal("Write after CloseWrite succeeded")
	}

	a, b = pipe(t)
	go a.Reset()
	if _, err := io.ReadAll(b); !errors.Is(err, ErrPortReset) {
		t.Fatalf("after a reset: %v, want ErrPortReset", err)
	}

	// A transport that ends without a FrameFin is a reset, not an end.
	a, b = pipe(t)
	go a.Close()
	if _, err := io.ReadAll(b); err == nil || errors.Is(err, io.EOF) {
		t.Fatalf("a transport that ended: %v, want a reset", err)
	}
}

// A Reset must not wait for a peer that reads nothing.
func TestPortStreamResetDoesNotHang(t *testing.T) {
	a, _ := pipe(t)
	done := make(chan struct{})
	go func() { a.Reset(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Reset hung on a peer that reads nothing")
	}
}

// FuzzPortStream feeds arbitrary bytes, as a hostile peer would send them
// after PortOK, to a PortStream. Reads must never panic, never return more
// than the frames announced, and end with an error rather than spin.
func FuzzPortStream(f *testing.F) {
	f.Add([]byte{FrameData, 0, 0, 3, 'a', 'b', 'c', FrameFin, 0, 0, 0})
	f.Add([]byte{FrameData, 0, 0xff, 0xff})
	f.Add([]byte{FrameData, 0xff, 0xff, 0xff})
	f.Add([]byte{FrameData, 0, 0, 0})
	f.Add([]byte{FrameReset, 0, 0, 0})
	f.Add([]byte{FrameFin, 0, 0, 1, 'x'})
	f.Add([]byte{'Z', 0, 0, 0})
	f.Fuzz(func(t *testing.T, in []byte) {
		a, b := net.Pipe()
		defer b.Close()
		go func() { a.Write(in); a.Close() }()
		s := NewPortStream(b)
		buf := make([]byte, 100)
		total := 0
		for i := 0; ; i++ {
			n, err := s.Read(buf)
			total += n
			if total > len(in) {
				t.Fatalf("read %d payload bytes from %d input bytes", total, len(in))
			}
			if err != nil {
				// The error is sticky.
				if _, again := s.Read(buf); again == nil {
					t.Fatal("Read succeeded after an error")
				}
				return
			}
			if i > len(in)+1 {
				t.Fatal("Read keeps returning without consuming input")
			}
		}
	})
}
