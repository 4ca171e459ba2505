package vm

import (
	"bytes"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// copySparse copies the data and leaves the holes: a VM's memory file is
// mostly holes, and each clone pays only for the data.
func TestCopySparse(t *testing.T) {
	dir := t.TempDir()
	src, dst := filepath.Join(dir, "src"), filepath.Join(dir, "dst")
	f, err := os.Create(src)
	if err != nil {
		t.Fatal(err)
	}
	const size = 64 << 20
	f.Truncate(size)
	a := bytes.Repeat([]byte("a"), 1<<20)
	b := bytes.Repeat([]byte("b"), 4096)
	f.WriteAt(a, 8<<20)
	f.WriteAt(b, size-4096)
	f.Close()
	if err := copySparse(src, dst); err != nil {
		t.Fatal(err)
	}
	want, _ := os.ReadFile(src)
	got, _ := os.ReadFile(dst)
	if !bytes.Equal(got, want) {
		t.Fatal("copy differs from the source")
	}
	var st syscall.Stat_t
	if err := syscall.Stat(dst, &st); err != nil {
		t.Fatal(err)
	}
	if used := st.Blocks * 512; used > 4<<20 {
		t.Errorf("copy allocates %d bytes for 1 MiB of data: holes were filled", used)
	}
	if err := copySparse(src, dst); err == nil {
		t.Error("copySparse overwrote an existing file")
	}
	if err := copySparse(filepath.Join(dir, "missing"), filepath.Join(dir, "x")); err == nil {
		t.Error("copying a missing file succeeded")
	}
}
