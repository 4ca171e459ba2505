package image

import (
	"bytes"
	"compress/gzip"
	"context"
	"debug/elf"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestLocatePayloadFromHeader(t *testing.T) {
	data := bytes.Repeat([]byte("vmlinux contents "), 10000)
	payload := lz4Legacy(t, data)
	for _, sects := range []int{0, 4, 27} {
		bz := fakeBzImage(payload, max(sects, 4))
		if sects == 0 {
			bz[bzSetupSects] = 0 // means 4
		}
		got, err := locatePayload(bz)
		if err != nil {
			t.Fatalf("setup_sects %d: %v", sects, err)
		}
		if !bytes.Equal(got, payload) {
			t.Fatalf("setup_sects %d: located %d bytes at the wrong place, want the %d-byte payload", sects, len(got), len(payload))
		}
		if n := appendedSize(got); n != int64(len(data)) {
			t.Errorf("appended size %d, want %d", n, len(data))
		}
		var out bytes.Buffer
		if _, err := decompressPayload(context.Background(), &out, got); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(out.Bytes(), data) {
			t.Fatalf("decompressed %d bytes, want the original %d", out.Len(), len(data))
		}
	}
}

// Without a usable boot header the payload is found by its magic.
func TestLocatePayloadByMagic(t *testing.T) {
	data := bytes.Repeat([]byte{1, 2, 3, 4, 5}, 5000)
	payload := lz4Legacy(t, data)
	bz := append(bytes.Repeat([]byte{0xcc}, 777), payload...)
	got, err := locatePayload(bz)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, payload) {
		t.Fatal("wrong payload located")
	}
}

func TestLocatePayloadOtherCompression(t *testing.T) {
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write([]byte("kernel"))
	zw.Close()
	_, err := locatePayload(fakeBzImage(gz.Bytes(), 20))
	if err == nil || !strings.Contains(err.Error(), "gzip") {
		t.Errorf("error %v, want one naming gzip", err)
	}
	if _, err := locatePayload([]byte("no kernel here")); err == nil {
		t.Error("no error for a buffer without a payload")
	}
}

func TestCheckVmlinux(t *testing.T) {
	dir := t.TempDir()
	full := fakeVmlinux(t, true)
	name := filepath.Join(dir, "vmlinux")
	if err := os.WriteFile(name, full, 0o644); err != nil {
		t.Fatal(err)
	}
	machine, size, err := checkVmlinux(name)
	if err != nil {
		t.Fatal(err)
	}
	if machine != elf.EM_X86_64 {
		t.Errorf("machine %v", machine)
	}
	want := int64(len(full) - len("RELOCATIONS-TRAILER"))
	if size != want {
		t.Errorf("ELF size %d, want %d", size, want)
	}
	if fi, _ := os.Stat(name); fi.Size() != want {
		t.Errorf("file not trimmed: %d bytes, want %d", fi.Size(), want)
	}
	if _, err := elf.Open(name); err != nil {
		t.Errorf("trimmed file is no ELF: %v", err)
	}

	if err := os.WriteFile(name, fakeVmlinux(t, false), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, _, err := checkVmlinux(name); err == nil || !strings.Contains(err.Error(), "PVH") {
		t.Errorf("error %v, want one about the missing PVH note", err)
	}
}
