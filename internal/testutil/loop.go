package testutil

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// LoopDevice attaches a loop device to a new image file of size bytes
// that starts with head, detached when the test ends, and returns its
// path; the test is skipped where loop devices cannot be made.
func LoopDevice(t testing.TB, head string, size int64) string {
	t.Helper()
	if _, err := exec.LookPath("losetup"); err != nil {
		t.Skip("no losetup")
	}
	img := filepath.Join(t.TempDir(), "disk.img")
	data := make([]byte, size)
	copy(data, head)
	if err := os.WriteFile(img, data, 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("losetup", "-f", "--show", img).Output()
	if err != nil {
		t.Skipf("losetup: %v", err)
	}
	loop := strings.TrimSpace(string(out))
	t.Cleanup(func() { exec.Command("losetup", "-d", loop).Run() })
	return loop
}

// LoopsBackedBy lists the host's loop devices whose backing file is path,
// or, with below set, any file below path: a file the host mounted
// itself (through a loop device) shows up here.
func LoopsBackedBy(path string, below bool) []string {
	files, _ := filepath.Glob("/sys/block/loop*/loop/backing_file")
	var out []string
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		backing := strings.TrimSpace(string(b))
		if backing == path || below && strings.HasPrefix(backing, strings.TrimSuffix(path, "/")+"/") {
			out = append(out, filepath.Base(filepath.Dir(filepath.Dir(f)))+" ("+backing+")")
		}
	}
	return out
}
