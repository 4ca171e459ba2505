package main

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

// TestLoopback runs serve and each client against it on the loopback.
func TestLoopback(t *testing.T) {
	go serve("127.0.0.1")
	var ok bool
	for range 100 {
		if _, err := RoundTrips("127.0.0.1", 1, 1); err == nil {
			ok = true
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if !ok {
		t.Fatal("serve never answered")
	}
	for _, args := range [][]string{{"up", "127.0.0.1", "3000001"}, {"down", "127.0.0.1", "3000001"}, {"rr", "127.0.0.1", "200", "64"}} {
		var out bytes.Buffer
		if err := run(args, &out); err != nil {
			t.Fatalf("%v: %v", args, err)
		}
		want := 1
		if args[0] == "rr" {
			want = 2
		}
		if f := strings.Fields(out.String()); len(f) != want {
			t.Fatalf("%v printed %q, want %d figures", args, out.String(), want)
		}
	}
	if err := run([]string{"down", "127.0.0.1"}, new(bytes.Buffer)); err == nil {
		t.Fatal("down without a byte count did not fail")
	}
}
