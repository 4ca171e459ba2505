package protocol

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
)

// Every connection from the host to the agent starts with one byte that
// says what it carries:
//
//   - ConnRPC: ttrpc for the Health and Agent services;
//   - ConnIO: one stdio stream of one process, raw bytes after a
//     StreamHeader.
//
// Process IO travels on connections of its own (yamux streams over
// virtio-serial, or vsock connections), so each stream has its own flow
// control and an unread stdout never blocks RPCs.
const (
	ConnRPC byte = 'R'
	ConnIO  byte = 'I'
)

// Stream kinds.
const (
	StreamStdin  = "stdin"
	StreamStdout = "stdout"
	StreamStderr = "stderr"
)

// StreamHeader follows ConnIO: a 2-byte big-endian length and that many
// bytes of JSON.
type StreamHeader struct {
	ContainerID string `json:"container_id"`
	ExecID      string `json:"exec_id,omitempty"`
	Stream      string `json:"stream"`
}

// maxHeader bounds a stream header.
const maxHeader = 1024

// WriteStreamHeader writes ConnIO and h to w.
func WriteStreamHeader(w io.Writer, h StreamHeader) error {
	b, err := json.Marshal(h)
	if err != nil {
		return err
	}
	if len(b) > maxHeader {
		return fmt.Errorf("stream header too long (%d bytes)", len(b))
	}
	buf := append([]byte{ConnIO, byte(len(b) >> 8), byte(len(b))}, b...)
	_, err = w.Write(buf)
	return err
}

// ReadStreamHeader reads a header written by WriteStreamHeader, after the
// ConnIO byte was consumed.
func ReadStreamHeader(r io.Reader) (StreamHeader, error) {
	var h StreamHeader
	var n [2]byte
	if _, err := io.ReadFull(r, n[:]); err != nil {
		return h, fmt.Errorf("read stream header: %w", err)
	}
	size := int(n[0])<<8 | int(n[1])
	if size == 0 || size > maxHeader {
		return h, fmt.Errorf("read stream header: bad length %d", size)
	}
	b := make([]byte, size)
	if _, err := io.ReadFull(r, b); err != nil {
		return h, fmt.Errorf("read stream header: %w", err)
	}
	if err := json.Unmarshal(b, &h); err != nil {
		return h, fmt.Errorf("read stream header: %w", err)
	}
	switch h.Stream {
	case StreamStdin, StreamStdout, StreamStderr:
	default:
		return h, errors.New("read stream header: unknown stream " + fmt.Sprintf("%q", h.Stream))
	}
	return h, nil
}
