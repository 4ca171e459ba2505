package protocol

import (
	"bytes"
	"strings"
	"testing"
)

func TestStreamHeaderRoundTrip(t *testing.T) {
	var b bytes.Buffer
	h := StreamHeader{ContainerID: "c1", ExecID: "e1", Stream: StreamStdout}
	if err := WriteStreamHeader(&b, h); err != nil {
		t.Fatal(err)
	}
	if b.Bytes()[0] != ConnIO {
		t.Fatalf("first byte %q", b.Bytes()[0])
	}
	b.ReadByte()
	got, err := ReadStreamHeader(&b)
	if err != nil || got != h {
		t.Fatalf("ReadStreamHeader = %+v, %v", got, err)
	}
}

func TestStreamHeaderRejectsBadInput(t *testing.T) {
	for name, in := range map[string][]byte{
		"zero length":    {0, 0},
		"too long":       {0xff, 0xff},
		"truncated":      {0, 10, '{'},
		"field too long": append([]byte{0, 3}, "abc"...),
		"unknown stream": append([]byte{0, 7}, "\x04tty0\x00\x00"...),
		"trailing bytes": append([]byte{0, 10}, "\x05stdin\x00\x00xyz"...),
	} {
		if _, err := ReadStreamHeader(bytes.NewReader(in)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if err := WriteStreamHeader(&bytes.Buffer{}, StreamHeader{ContainerID: strings.Repeat("x", 2000), Stream: StreamStdin}); err == nil {
		t.Error("oversized header written")
	}
}
