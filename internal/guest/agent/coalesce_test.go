package agent

import (
	"bytes"
	"io"
	"os"
	"testing"
)

// Streamed output is joined into large reads; a small write (interactive
// output) is returned at once, without waiting; the end of the stream
// still reads as end of file.
func TestCoalescingReader(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	c, err := newCoalescingReader(r)
	if err != nil {
		t.Fatal(err)
	}
	waits := 0
	c.wait = func() {
		waits++
		w.Write(bytes.Repeat([]byte("b"), 20<<10)) // the process writes on
	}
	buf := make([]byte, 256<<10)

	w.Write([]byte("prompt> "))
	if n, err := c.Read(buf); err != nil || string(buf[:n]) != "prompt> " || waits != 0 {
		t.Fatalf("small read: %q, %v after %d waits", buf[:n], err, waits)
	}
	w.Write(bytes.Repeat([]byte("a"), 20<<10))
	n, err := c.Read(buf)
	if err != nil || waits != 1 {
		t.Fatalf("bulk read: %d bytes, %v after %d waits", n, err, waits)
	}
	if want := append(bytes.Repeat([]byte("a"), 20<<10), bytes.Repeat([]byte("b"), 20<<10)...); !bytes.Equal(buf[:n], want) {
		t.Fatalf("bulk read returned %d bytes, want the two writes joined (%d)", n, len(want))
	}
	w.Close()
	if n, err := c.Read(buf); n != 0 || err != io.EOF {
		t.Fatalf("after close: %d, %v; want EOF", n, err)
	}
}
