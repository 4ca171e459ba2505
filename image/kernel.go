package image

import (
	"bytes"
	"context"
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/pierrec/lz4/v4"
)

// lz4LegacyMagic starts an LZ4 stream in the legacy frame format, which the
// kernel's build uses for CONFIG_KERNEL_LZ4 (magic 0x184C2102, little-endian).
const lz4LegacyMagic = "\x02\x21\x4c\x18"

// Offsets into the x86 boot protocol header of a bzImage
// (Documentation/arch/x86/boot.rst).
const (
	bzSetupSects    = 0x1f1
	bzHeaderMagic   = 0x202 // "HdrS"
	bzVersion       = 0x206
	bzPayloadOffset = 0x248 // protocol 2.08+
	bzPayloadLength = 0x24c // protocol 2.08+
	bzHeaderEnd     = 0x250
)

// xenElfnotePhys32Entry is the ELF note type (in a "Xen" note) holding the
// 32-bit PVH entry point, which QEMU needs to boot an uncompressed kernel
// with -kernel.
const xenElfnotePhys32Entry = 18

// maxVmlinuxSize bounds the decompressed kernel so that a corrupt payload
// cannot fill the disk.
const maxVmlinuxSize = 1 << 30

// locatePayload returns the compressed kernel inside bzImage bz. It uses
// the payload_offset and payload_length fields of the boot protocol header
// (protocol 2.08 and later) and falls back to searching for the LZ4 legacy
// magic. It fails when the payload is not LZ4 compressed.
func locatePayload(bz []byte) ([]byte, error) {
	if len(bz) >= bzHeaderEnd && string(bz[bzHeaderMagic:bzHeaderMagic+4]) == "HdrS" &&
		binary.LittleEndian.Uint16(bz[bzVersion:]) >= 0x0208 {
		setupSects := int(bz[bzSetupSects])
		if setupSects == 0 {
			setupSects = 4
		}
		start := (setupSects+1)*512 + int(binary.LittleEndian.Uint32(bz[bzPayloadOffset:]))
		end := start + int(binary.LittleEndian.Uint32(bz[bzPayloadLength:]))
		if start < end && end <= len(bz) {
			p := bz[start:end]
			if bytes.HasPrefix(p, []byte(lz4LegacyMagic)) {
				return p, nil
			}
			if name := compressionName(p); name != "" {
				return nil, fmt.Errorf("kernel payload is %s compressed; only LZ4 (CONFIG_KERNEL_LZ4) is supported", name)
			}
		}
	}
	if i := bytes.Index(bz, []byte(lz4LegacyMagic)); i >= 0 {
		return bz[i:], nil
	}
	return nil, errors.New("no LZ4 compressed kernel payload found in bzImage")
}

// compressionName names the other compressed formats the kernel supports
// for its payload, by their leading bytes, for error messages.
func compressionName(p []byte) string {
	for _, c := range []struct{ magic, name string }{
		{"\x1f\x8b", "gzip"},
		{"\xfd7zXZ\x00", "xz"},
		{"\x28\xb5\x2f\xfd", "zstd"},
		{"BZh", "bzip2"},
		{"\x5d\x00\x00", "lzma"},
		{"\x89LZO", "lzo"},
	} {
		if bytes.HasPrefix(p, []byte(c.magic)) {
			return c.name
		}
	}
	return ""
}

// decompressPayload decompresses an LZ4 legacy kernel payload into w and
// returns the number of bytes written. The kernel build appends the
// uncompressed size as a 32-bit little-endian number to the stream; the
// decoder recognizes it as the end of the stream.
func decompressPayload(ctx context.Context, w io.Writer, payload []byte) (int64, error) {
	zr := lz4.NewReader(bytes.NewReader(payload))
	n, err := io.Copy(w, io.LimitReader(&ctxReader{ctx: ctx, r: zr}, maxVmlinuxSize+1))
	if err != nil {
		return n, fmt.Errorf("decompress LZ4 kernel payload: %w", err)
	}
	if n > maxVmlinuxSize {
		return n, fmt.Errorf("decompress LZ4 kernel payload: larger than %d bytes", maxVmlinuxSize)
	}
	return n, nil
}

// appendedSize returns the uncompressed size the kernel build appends to
// a compressed payload.
func appendedSize(payload []byte) int64 {
	if len(payload) < 4 {
		return -1
	}
	return int64(binary.LittleEndian.Uint32(payload[len(payload)-4:]))
}

// checkVmlinux verifies that the ELF file at name is a 64-bit kernel with a
// Xen PVH entry point note, and truncates any bytes after the end of the
// ELF file as computed from its headers. It returns the ELF machine and the
// final size.
func checkVmlinux(name string) (elf.Machine, int64, error) {
	file, err := os.Open(name)
	if err != nil {
		return 0, 0, fmt.Errorf("check vmlinux: %w", err)
	}
	defer file.Close()
	f, err := elf.NewFile(file)
	if err != nil {
		return 0, 0, fmt.Errorf("check vmlinux %s: %w", name, err)
	}
	if f.Class != elf.ELFCLASS64 || f.Type != elf.ET_EXEC {
		return 0, 0, fmt.Errorf("check vmlinux %s: not a 64-bit ELF executable (%v, %v)", name, f.Class, f.Type)
	}
	pvh, err := hasPVHNote(f)
	if err != nil {
		return 0, 0, fmt.Errorf("check vmlinux %s: %w", name, err)
	}
	if !pvh {
		return 0, 0, fmt.Errorf("check vmlinux %s: no Xen PVH entry point note (XEN_ELFNOTE_PHYS32_ENTRY); the kernel needs CONFIG_PVH=y to boot with qemu -kernel", name)
	}
	size := elfSize(f, file)
	fi, err := file.Stat()
	if err != nil {
		return 0, 0, fmt.Errorf("check vmlinux: %w", err)
	}
	if fi.Size() < size {
		return 0, 0, fmt.Errorf("check vmlinux %s: truncated: %d bytes, headers need %d", name, fi.Size(), size)
	}
	if fi.Size() > size {
		if err := os.Truncate(name, size); err != nil {
			return 0, 0, fmt.Errorf("check vmlinux: trim trailing data: %w", err)
		}
	}
	return f.Machine, size, nil
}

// hasPVHNote reports whether one of the PT_NOTE segments of f holds a Xen
// note of type XEN_ELFNOTE_PHYS32_ENTRY.
func hasPVHNote(f *elf.File) (bool, error) {
	for _, p := range f.Progs {
		if p.Type != elf.PT_NOTE {
			continue
		}
		if p.Filesz > 1<<20 {
			return false, fmt.Errorf("PT_NOTE segment of %d bytes", p.Filesz)
		}
		data := make([]byte, p.Filesz)
		if _, err := p.ReadAt(data, 0); err != nil {
			return false, fmt.Errorf("read PT_NOTE segment: %w", err)
		}
		for len(data) >= 12 {
			namesz := uint64(f.ByteOrder.Uint32(data[0:]))
			descsz := uint64(f.ByteOrder.Uint32(data[4:]))
			typ := f.ByteOrder.Uint32(data[8:])
			if 12+namesz > uint64(len(data)) {
				break
			}
			name := bytes.TrimRight(data[12:12+namesz], "\x00")
			if typ == xenElfnotePhys32Entry && string(name) == "Xen" {
				return true, nil
			}
			next := 12 + align4(namesz) + align4(descsz)
			if next > uint64(len(data)) {
				break
			}
			data = data[next:]
		}
	}
	return false, nil
}

func align4(n uint64) uint64 { return (n + 3) &^ 3 }

// elfSize returns the size of an ELF file computed from its headers: the
// end of the furthest header table, section or segment contents.
func elfSize(f *elf.File, r io.ReaderAt) int64 {
	var end uint64
	grow := func(e uint64) {
		if e > end {
			end = e
		}
	}
	// The file header is 64 bytes for ELFCLASS64 and 52 for ELFCLASS32.
	if f.Class == elf.ELFCLASS64 {
		grow(64)
	} else {
		grow(52)
	}
	for _, p := range f.Progs {
		grow(p.Off + p.Filesz)
	}
	for _, s := range f.Sections {
		if s.Type != elf.SHT_NOBITS && s.Type != elf.SHT_NULL {
			grow(s.Offset + s.FileSize)
		}
	}
	// debug/elf does not export the header table positions; read them from
	// the ELFCLASS64 file header.
	if f.Class == elf.ELFCLASS64 {
		var hdr [64]byte
		if _, err := r.ReadAt(hdr[:], 0); err == nil {
			bo := f.ByteOrder
			phoff, shoff := bo.Uint64(hdr[32:]), bo.Uint64(hdr[40:])
			phentsize, phnum := uint64(bo.Uint16(hdr[54:])), uint64(bo.Uint16(hdr[56:]))
			shentsize, shnum := uint64(bo.Uint16(hdr[58:])), uint64(bo.Uint16(hdr[60:]))
			if phnum > 0 {
				grow(phoff + phentsize*phnum)
			}
			if shnum > 0 {
				grow(shoff + shentsize*shnum)
			}
		}
	}
	return int64(end)
}
