package vmmproc

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestAttachSignalDone(t *testing.T) {
	marker := filepath.Join(t.TempDir(), "vm.pid")
	// The shell blocks reading its stdin, with no child to outlive it.
	cmd := exec.Command("sh", "-c", "read -r _", "sh", marker)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	defer stdin.Close()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	if got := FindByArg(marker); !slices.Contains(got, pid) {
		t.Errorf("FindByArg(%s) = %v, want %d among them", marker, got, pid)
	}
	if _, err := Attach(pid, "not-its-marker", 0); err == nil {
		t.Error("Attach with a marker the command line lacks succeeded")
	}
	st, err := StartTime(pid)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Attach(pid, marker, st+1); err == nil || !strings.Contains(err.Error(), "reused") {
		t.Errorf("Attach with another start time: %v, want a reused pid", err)
	}
	p, err := Attach(pid, marker, st)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Release()
	if !Running(pid) {
		t.Errorf("Running(%d) = false for a live child", pid)
	}
	if !p.Alive() || p.Pid() != pid || p.StartTime() != st {
		t.Fatalf("attached process: alive %v, pid %d, start %d", p.Alive(), p.Pid(), p.StartTime())
	}
	if err := p.Signal(unix.SIGKILL); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("Done's channel did not close after the process was killed")
	}
	if p.Alive() {
		t.Error("Alive after the process exited")
	}
	if Running(pid) {
		t.Errorf("Running(%d) = true after it exited and was reaped", pid)
	}
	if err := p.Signal(unix.SIGTERM); err != nil {
		t.Errorf("Signal to an exited process: %v", err)
	}
}

func TestState(t *testing.T) {
	path := filepath.Join(t.TempDir(), "vm.json")
	type st struct{ ID string }
	if err := WriteState(path, st{ID: "a"}); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("state file mode %v, %v; want 0600", fi.Mode(), err)
	}
	var got st
	if err := ReadState(path, &got); err != nil || got.ID != "a" {
		t.Errorf("ReadState = %+v, %v", got, err)
	}
	if err := os.WriteFile(path, make([]byte, MaxStateSize+1), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := ReadState(path, &got); err == nil {
		t.Error("ReadState of an oversized file succeeded")
	}
}
