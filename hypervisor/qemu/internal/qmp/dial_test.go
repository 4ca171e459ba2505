package qmp

import (
	"context"
	"errors"
	"net"
	"path/filepath"
	"testing"
	"time"
)

// A QEMU on its way out accepts a connection and never greets it.
// Cancelling the context, not only its deadline, must end Dial's wait for
// the greeting: stopping a VM whose guest already powered off would
// otherwise wait out the whole quit timeout.
func TestDialCancelledWhileAwaitingGreeting(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "qmp.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		if c, err := l.Accept(); err == nil {
			accepted <- c // held open, silent
		}
	}()
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		c := <-accepted
		defer c.Close()
		cancel()
		time.Sleep(10 * time.Second) // longer than the test may take
	}()
	done := make(chan error, 1)
	go func() {
		c, err := Dial(ctx, sock)
		if c != nil {
			c.Close()
		}
		done <- err
	}()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("Dial = %v, want an error wrapping context.Canceled", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Dial still waits for the greeting after its context was cancelled")
	}
}
