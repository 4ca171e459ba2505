package storage

import (
	"context"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// A guest can make virtiofsd log without end; its log must stop at the
// cap. A shell that writes forever stands in for virtiofsd, started
// through the same StartVirtiofsd.
func TestVirtiofsdLogIsCapped(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount")
	}
	dir := t.TempDir()
	t.Cleanup(func() { UnmountAll(dir) })
	fake := filepath.Join(dir, "virtiofsd")
	script := `#!/bin/sh
for a; do case $a in --socket-path=*) : > "${a#--socket-path=}";; esac; done
while :; do echo "lo_lookup: guest-triggered warning, again and again"; done
`
	if err := os.WriteFile(fake, []byte(script), 0o700); err != nil {
		t.Fatal(err)
	}
	log := filepath.Join(dir, "virtiofsd.log")
	v, err := StartVirtiofsd(context.Background(), fake, dir, filepath.Join(dir, "vfs.sock"), filepath.Join(dir, "vfs.pid"), log)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Kill(v.Pid, syscall.SIGKILL)
	// Watch the log until it reached the cap (the writer then only gets
	// ENOSPC) or passed it.
	for {
		st, err := os.Stat(log)
		if err != nil {
			t.Fatal(err)
		}
		if st.Size() > virtiofsdLogLimit {
			t.Fatalf("virtiofsd.log grew to %d bytes, cap %d", st.Size(), virtiofsdLogLimit)
		}
		if st.Size() >= virtiofsdLogLimit-4<<10 {
			break
		}
	}
	// At the cap, nothing makes it grow: not the writer, not another.
	f, err := os.OpenFile(log, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	_, werr := f.Write(make([]byte, 64<<10))
	st, err := os.Stat(log)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("log at %d bytes, cap %d; a 64 KiB write: %v", st.Size(), virtiofsdLogLimit, werr)
	if st.Size() > virtiofsdLogLimit {
		t.Fatalf("virtiofsd.log grew to %d bytes, cap %d", st.Size(), virtiofsdLogLimit)
	}
}
