package protocol

import (
	"bytes"
	"strings"
	"testing"
)

// FuzzReadStreamHeader feeds arbitrary bytes, as a hostile peer would send
// them after ConnIO, to ReadStreamHeader. It must never panic, never read
// past the length it announced, and accept only headers that
// WriteStreamHeader writes byte for byte the same.
func FuzzReadStreamHeader(f *testing.F) {
	for _, h := range []StreamHeader{
		{ContainerID: "c1", ExecID: "e1", Stream: StreamStdout},
		{ContainerID: "c1", Stream: StreamStdin},
		{ContainerID: strings.Repeat("x", 255), ExecID: strings.Repeat("y", 255), Stream: StreamStderr},
	} {
		var b bytes.Buffer
		if err := WriteStreamHeader(&b, h); err != nil {
			f.Fatal(err)
		}
		f.Add(b.Bytes()[1:])
	}
	f.Add([]byte{0, 0})
	f.Add([]byte{0xff, 0xff})
	f.Add([]byte{0, 3, 0, 0, 0})
	f.Add([]byte{0, 10, 5, 's', 't', 'd', 'i', 'n', 0, 0, 'x', 'y', 'z'})
	f.Add([]byte{3, 0, 255})
	f.Fuzz(func(t *testing.T, in []byte) {
		r := bytes.NewReader(in)
		h, err := ReadStreamHeader(r)
		consumed := len(in) - r.Len()
		if consumed > 2+maxHeader {
			t.Fatalf("read %d bytes, more than a header can hold", consumed)
		}
		if err != nil {
			return
		}
		switch h.Stream {
		case StreamStdin, StreamStdout, StreamStderr:
		default:
			t.Fatalf("accepted stream %q", h.Stream)
		}
		var b bytes.Buffer
		if err := WriteStreamHeader(&b, h); err != nil {
			t.Fatalf("accepted header %+v cannot be written: %v", h, err)
		}
		if !bytes.Equal(b.Bytes()[1:], in[:consumed]) {
			t.Fatalf("accepted %q, which encodes as %q", in[:consumed], b.Bytes()[1:])
		}
	})
}

// FuzzStreamHeaderRoundTrip checks decode(encode(h)) == h for every header
// WriteStreamHeader accepts, and that it refuses only fields over 255
// bytes.
func FuzzStreamHeaderRoundTrip(f *testing.F) {
	f.Add("c1", "e1", StreamStdout)
	f.Add("c1", "", StreamStdin)
	f.Add("", "", StreamStderr)
	f.Add(strings.Repeat("x", 256), "e", StreamStdout)
	f.Add("c\x00\xff", "e\n", "stdx")
	f.Fuzz(func(t *testing.T, container, exec, stream string) {
		h := StreamHeader{ContainerID: container, ExecID: exec, Stream: stream}
		var b bytes.Buffer
		err := WriteStreamHeader(&b, h)
		tooLong := len(container) > 255 || len(exec) > 255 || len(stream) > 255
		if tooLong != (err != nil) {
			t.Fatalf("WriteStreamHeader(%+v) = %v", h, err)
		}
		if err != nil {
			if b.Len() != 0 {
				t.Fatalf("a refused header wrote %d bytes", b.Len())
			}
			return
		}
		if b.Bytes()[0] != ConnIO {
			t.Fatalf("first byte %q", b.Bytes()[0])
		}
		b.ReadByte()
		got, err := ReadStreamHeader(&b)
		known := stream == StreamStdin || stream == StreamStdout || stream == StreamStderr
		if known != (err == nil) {
			t.Fatalf("ReadStreamHeader(WriteStreamHeader(%+v)) = %+v, %v", h, got, err)
		}
		if err == nil && got != h {
			t.Fatalf("round trip: wrote %+v, read %+v", h, got)
		}
		if err == nil && b.Len() != 0 {
			t.Fatalf("%d bytes left after the header", b.Len())
		}
	})
}
