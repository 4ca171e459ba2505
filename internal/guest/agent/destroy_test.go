package agent

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/cocoon-runtime/cocoon/agent/protocol"
)

// DestroySandbox flushes before it replies, says so, and powers off only
// after the reply: the host ends the VM itself once it reads synced.
func TestDestroySandboxSyncsThenPowersOff(t *testing.T) {
	off := make(chan struct{})
	a := New(Config{Log: slog.New(slog.NewTextHandler(io.Discard, nil)), PowerOff: func() { close(off) }})
	r, err := a.DestroySandbox(context.Background(), &protocol.DestroySandboxRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if !r.GetSynced() {
		t.Error("reply does not say the guest flushed its file systems")
	}
	select {
	case <-off:
	case <-time.After(10 * time.Second):
		t.Fatal("no power-off after the reply")
	}
}
