package sparse

import (
	"bytes"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

func allocated(t *testing.T, path string) int64 {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks * 512
}

// Copy copies the data and leaves the holes: a VM's memory file is mostly
// holes, and each clone pays only for the data.
func TestCopy(t *testing.T) {
	dir := t.TempDir()
	src, dst := filepath.Join(dir, "src"), filepath.Join(dir, "dst")
	f, err := os.Create(src)
	if err != nil {
		t.Fatal(err)
	}
	const size = 64 << 20
	f.Truncate(size)
	f.WriteAt(bytes.Repeat([]byte("a"), 1<<20), 8<<20)
	f.WriteAt(bytes.Repeat([]byte("b"), 4096), size-4096)
	f.Close()
	if err := Copy(src, dst); err != nil {
		t.Fatal(err)
	}
	want, _ := os.ReadFile(src)
	got, _ := os.ReadFile(dst)
	if !bytes.Equal(got, want) {
		t.Fatal("copy differs from the source")
	}
	if used := allocated(t, dst); used > 4<<20 {
		t.Errorf("copy allocates %d bytes for 1 MiB of data: holes were filled", used)
	}
	if err := Copy(src, dst); err == nil {
		t.Error("Copy overwrote an existing file")
	}
	if err := Copy(filepath.Join(dir, "missing"), filepath.Join(dir, "x")); err == nil {
		t.Error("copying a missing file succeeded")
	}
}

// PunchZeros frees the pages that hold only zeros, wherever they are in
// a data range, and keeps every other byte.
func TestPunchZeros(t *testing.T) {
	path := filepath.Join(t.TempDir(), "mem")
	const size = 16 << 20
	content := make([]byte, size)
	// Data pages at the start, in the middle of a zero run, at a 1 MiB
	// read boundary and at the very end; a single non-zero byte counts.
	for _, off := range []int{0, 5*PageSize + 17, 1<<20 - 1, 1 << 20, size - 1} {
		content[off] = 0xff
	}
	if err := os.WriteFile(path, content, 0o600); err != nil {
		t.Fatal(err)
	}
	before := allocated(t, path)
	freed, err := PunchZeros(path)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(path)
	if !bytes.Equal(got, content) {
		t.Fatal("punching changed the file's content")
	}
	// Data stays in 5 pages: 0, 5, 255 and 256 (the two sides of the
	// boundary), and the last.
	wantData := int64(5 * PageSize)
	if freed != size-wantData {
		t.Errorf("freed %d bytes, want %d", freed, size-wantData)
	}
	if after := allocated(t, path); after > wantData || after >= before {
		t.Errorf("allocated %d bytes after punching (%d before), want at most %d", after, before, wantData)
	}
	// A second pass finds nothing left to free.
	if freed, err := PunchZeros(path); err != nil || freed != 0 {
		t.Errorf("second pass freed %d, %v", freed, err)
	}
	if _, err := PunchZeros(filepath.Join(t.TempDir(), "missing")); err == nil {
		t.Error("punching a missing file succeeded")
	}
}
