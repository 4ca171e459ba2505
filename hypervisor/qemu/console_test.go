package qemu

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The console tail goes into errors and onto terminals: a guest must not
// reach the terminal through it.
func TestConsoleTailSanitized(t *testing.T) {
	dir := t.TempDir()
	q := &QEMU{}
	q.launch.files.console = filepath.Join(dir, "console.log")
	out := "[    0.5] Kernel panic\r\n\x1b]0;owned\x07\x1b[2J\x1b[H\x1b[31mfake prompt$ \x1b[0m\n\x00\x08done\n"
	if err := os.WriteFile(q.launch.files.console, []byte(out), 0o600); err != nil {
		t.Fatal(err)
	}
	got := q.ConsoleTail(2048)
	if strings.ContainsAny(got, "\x1b\x07\x00\x08\r") {
		t.Errorf("console tail keeps control characters: %q", got)
	}
	if want := "[    0.5] Kernel panic\nfake prompt$ \ndone\n"; got != want {
		t.Errorf("console tail = %q, want %q", got, want)
	}
	if got := q.ConsoleTail(5); len(got) > 5 {
		t.Errorf("ConsoleTail(5) = %d bytes", len(got))
	}
}

// QEMU's log shares the console's bounded tmpfs.
func TestQEMULogOnBoundedTmpfs(t *testing.T) {
	f := vmFiles("/run/cocoon/vm/vm1")
	if filepath.Dir(f.log) != filepath.Dir(f.console) {
		t.Errorf("qemu log %s is not in the console tmpfs %s", f.log, filepath.Dir(f.console))
	}
}
