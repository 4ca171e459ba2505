package boundedfs

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
)

func needRoot(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mounting a tmpfs needs root")
	}
}

// A process that writes without end fills its log to the cap and no
// further.
func TestOpenLogCapsAWriterThatNeverStops(t *testing.T) {
	needRoot(t)
	dir := t.TempDir()
	path := filepath.Join(dir, "flood.log")
	t.Cleanup(func() { Unmount(LogDir(path)) })
	const limit = 256 << 10
	f, err := OpenLog(path, limit)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("/bin/sh", "-c", "while :; do echo flood flood flood flood flood flood; done")
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	f.Close()
	// The shell keeps trying; stop it once the log stopped growing at the
	// cap (ENOSPC), or as soon as it passed the cap.
	defer cmd.Process.Kill()
	for {
		st, err := os.Stat(path) // through the symbolic link
		if err != nil {
			t.Fatal(err)
		}
		if st.Size() > limit {
			t.Fatalf("log grew to %d bytes, cap %d", st.Size(), limit)
		}
		if st.Size() >= limit-8<<10 {
			break
		}
	}
	// Whatever else writes to it, it stays at the cap.
	g, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	if _, err := g.Write(make([]byte, 2*limit)); !errors.Is(err, syscall.ENOSPC) {
		t.Errorf("writing past the cap: err = %v, want ENOSPC", err)
	}
	if st, _ := os.Stat(path); st.Size() > limit {
		t.Fatalf("log grew to %d bytes, cap %d", st.Size(), limit)
	}
}

// Opening the log again truncates it on the same tmpfs, and Unmount
// leaves a directory that can be removed.
func TestOpenLogAgainAndUnmount(t *testing.T) {
	needRoot(t)
	path := filepath.Join(t.TempDir(), "x.log")
	for range 2 {
		f, err := OpenLog(path, 64<<10)
		if err != nil {
			t.Fatal(err)
		}
		f.WriteString("hello\n")
		f.Close()
		if b, err := os.ReadFile(path); err != nil || string(b) != "hello\n" {
			t.Fatalf("log reads %q, %v", b, err)
		}
	}
	if m, err := isMountPoint(LogDir(path)); err != nil || !m {
		t.Fatalf("log dir mounted: %v, %v", m, err)
	}
	if err := Unmount(LogDir(path)); err != nil {
		t.Fatal(err)
	}
	if m, _ := isMountPoint(LogDir(path)); m {
		t.Fatal("still mounted after Unmount (a second mount was stacked?)")
	}
}
