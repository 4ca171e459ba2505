package image

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/pierrec/lz4/v4"
)

// testSection is a section of a synthetic ELF file.
type testSection struct {
	name string
	typ  elf.SectionType
	data []byte
}

// buildELF returns a minimal little-endian ELF64 file with the given
// sections, and, if notes is not nil, a PT_NOTE segment holding notes.
// trailing is appended after the section header table.
func buildELF(t testing.TB, typ elf.Type, machine elf.Machine, sections []testSection, notes []byte, interp bool, trailing []byte) []byte {
	t.Helper()
	const ehsize, phentsize, shentsize = 64, 56, 64
	var progs []elf.Prog64
	var body bytes.Buffer // everything after the header and program headers
	nprogs := 0
	if notes != nil {
		nprogs++
	}
	if interp {
		nprogs++
	}
	base := uint64(ehsize + phentsize*nprogs)
	if notes != nil {
		progs = append(progs, elf.Prog64{Type: uint32(elf.PT_NOTE), Off: base + uint64(body.Len()), Filesz: uint64(len(notes)), Memsz: uint64(len(notes)), Align: 4})
		body.Write(notes)
	}
	if interp {
		s := []byte("/lib64/ld-linux-x86-64.so.2\x00")
		progs = append(progs, elf.Prog64{Type: uint32(elf.PT_INTERP), Off: base + uint64(body.Len()), Filesz: uint64(len(s)), Memsz: uint64(len(s)), Align: 1})
		body.Write(s)
	}
	shstrtab := []byte{0}
	shdrs := []elf.Section64{{}} // SHN_UNDEF
	for _, s := range sections {
		shdrs = append(shdrs, elf.Section64{
			Name: uint32(len(shstrtab)), Type: uint32(s.typ),
			Off: base + uint64(body.Len()), Size: uint64(len(s.data)), Addralign: 1,
		})
		shstrtab = append(shstrtab, s.name+"\x00"...)
		body.Write(s.data)
	}
	shdrs = append(shdrs, elf.Section64{Name: uint32(len(shstrtab)), Type: uint32(elf.SHT_STRTAB), Off: base + uint64(body.Len()), Addralign: 1})
	shstrtab = append(shstrtab, ".shstrtab\x00"...)
	shdrs[len(shdrs)-1].Size = uint64(len(shstrtab))
	body.Write(shstrtab)
	for body.Len()%8 != 0 {
		body.WriteByte(0)
	}
	shoff := base + uint64(body.Len())

	hdr := elf.Header64{
		Type: uint16(typ), Machine: uint16(machine), Version: uint32(elf.EV_CURRENT),
		Shoff: shoff, Ehsize: ehsize, Phentsize: phentsize, Phnum: uint16(len(progs)),
		Shentsize: shentsize, Shnum: uint16(len(shdrs)), Shstrndx: uint16(len(shdrs) - 1),
	}
	if len(progs) > 0 {
		hdr.Phoff = ehsize
	}
	copy(hdr.Ident[:], elf.ELFMAG)
	hdr.Ident[elf.EI_CLASS] = byte(elf.ELFCLASS64)
	hdr.Ident[elf.EI_DATA] = byte(elf.ELFDATA2LSB)
	hdr.Ident[elf.EI_VERSION] = byte(elf.EV_CURRENT)

	var out bytes.Buffer
	for _, v := range []any{hdr, progs, body.Bytes(), shdrs} {
		if err := binary.Write(&out, binary.LittleEndian, v); err != nil {
			t.Fatal(err)
		}
	}
	out.Write(trailing)
	return out.Bytes()
}

// elfNote encodes one ELF note.
func elfNote(name string, typ uint32, desc []byte) []byte {
	var b bytes.Buffer
	n := append([]byte(name), 0)
	binary.Write(&b, binary.LittleEndian, []uint32{uint32(len(n)), uint32(len(desc)), typ})
	b.Write(n)
	for b.Len()%4 != 0 {
		b.WriteByte(0)
	}
	b.Write(desc)
	for b.Len()%4 != 0 {
		b.WriteByte(0)
	}
	return b.Bytes()
}

// fakeModule returns a kernel module ELF whose .modinfo holds the fields.
func fakeModule(t testing.TB, name, release string, depends ...string) []byte {
	info := fmt.Sprintf("license=GPL\x00alias=fake:%s\x00depends=%s\x00retpoline=Y\x00intree=Y\x00name=%s\x00vermagic=%s SMP preempt mod_unload modversions \x00",
		name, strings.Join(depends, ","), name, release)
	return fakeModuleInfo(t, info)
}

// fakeModuleInfo returns a kernel module ELF with the .modinfo info.
func fakeModuleInfo(t testing.TB, info string) []byte {
	return buildELF(t, elf.ET_REL, elf.EM_X86_64, []testSection{
		{".text", elf.SHT_PROGBITS, []byte{0xc3}},
		{".modinfo", elf.SHT_PROGBITS, []byte(info)},
	}, nil, false, nil)
}

// fakeVmlinux returns a kernel ELF with a Xen PVH entry note (if pvh) and
// some relocation data after it, as the kernel build appends.
func fakeVmlinux(t testing.TB, pvh bool) []byte {
	notes := elfNote("Xen", 6, []byte("linux\x00"))
	if pvh {
		notes = append(notes, elfNote("Xen", xenElfnotePhys32Entry, []byte{0, 0x10, 0, 1})...)
	}
	notes = append(notes, elfNote("GNU", 3, bytes.Repeat([]byte{0xab}, 20))...)
	text := bytes.Repeat([]byte("kernel text "), 4000)
	return buildELF(t, elf.ET_EXEC, elf.EM_X86_64, []testSection{{".text", elf.SHT_PROGBITS, text}}, notes, false, []byte("RELOCATIONS-TRAILER"))
}

// fakeAgent returns a static (or dynamic) x86-64 executable.
func fakeAgent(t testing.TB, tag string, dynamic bool) []byte {
	return buildELF(t, elf.ET_EXEC, elf.EM_X86_64, []testSection{{".text", elf.SHT_PROGBITS, []byte("agent " + tag)}}, nil, dynamic, nil)
}

// lz4Legacy compresses data the way the kernel build does: an LZ4 legacy
// frame followed by the uncompressed size.
func lz4Legacy(t testing.TB, data []byte) []byte {
	var b bytes.Buffer
	zw := lz4.NewWriter(&b)
	if err := zw.Apply(lz4.LegacyOption(true)); err != nil {
		t.Fatal(err)
	}
	if _, err := zw.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	binary.Write(&b, binary.LittleEndian, uint32(len(data)))
	return b.Bytes()
}

// fakeBzImage wraps payload in a bzImage boot header (protocol 2.15) with
// setupSects setup sectors and some code before the payload.
func fakeBzImage(payload []byte, setupSects int) []byte {
	pmStart := (setupSects + 1) * 512
	prefix := bytes.Repeat([]byte{0x90}, 300) // decompressor code
	bz := make([]byte, pmStart+len(prefix)+len(payload)+100)
	bz[bzSetupSects] = byte(setupSects)
	copy(bz[bzHeaderMagic:], "HdrS")
	binary.LittleEndian.PutUint16(bz[bzVersion:], 0x020f)
	binary.LittleEndian.PutUint32(bz[bzPayloadOffset:], uint32(len(prefix)))
	binary.LittleEndian.PutUint32(bz[bzPayloadLength:], uint32(len(payload)))
	copy(bz[pmStart:], prefix)
	copy(bz[pmStart+len(prefix):], payload)
	return bz
}

// fakeKernelDeb builds a kernel package with dpkg-deb holding a bzImage of
// fakeVmlinux and fake modules for the default module roots. The module
// net_failover sorts before virtio_net, which depends on it, so that
// extractKernel needs its second read.
func fakeKernelDeb(t testing.TB, dir, release, version string) string {
	t.Helper()
	if _, err := exec.LookPath("dpkg-deb"); err != nil {
		t.Skip("dpkg-deb not installed")
	}
	root := filepath.Join(dir, "pkgroot-"+version)
	write := func(name string, data []byte) {
		p := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	pkg := "linux-image-" + release
	write("DEBIAN/control", []byte("Package: "+pkg+"\nVersion: "+version+"\nArchitecture: amd64\nMaintainer: Test <test@example.com>\nDescription: test kernel\n"))
	write("boot/vmlinuz-"+release, fakeBzImage(lz4Legacy(t, fakeVmlinux(t, true)), 30))
	write("boot/config-"+release, []byte("CONFIG_PVH=y\n"))
	mods := "lib/modules/" + release + "/kernel/"
	for _, m := range fakeModuleGraph() {
		write(mods+m.Path, fakeModule(t, m.Name, release, m.Depends...))
	}
	write(mods+"drivers/block/unused-thing.ko", fakeModule(t, "unused_thing", release, "virtio"))
	// On-demand: tun (default patterns match it) with static node aliases,
	// and a dependency outside the patterns.
	write(mods+"drivers/net/tun.ko", fakeModuleInfo(t, "alias=devname:net/tun\x00alias=char-major-10-200\x00depends=tap_helper\x00name=tun\x00vermagic="+release+" SMP \x00"))
	write(mods+"lib/tap_helper.ko", fakeModule(t, "tap_helper", release))
	write(mods+"drivers/misc/broken.ko", []byte("not a module, and not needed"))
	write("lib/modules/"+release+"/modules.builtin", []byte("kernel/drivers/char/hw_random/rng-core.ko\n"))
	deb := filepath.Join(dir, pkg+"_"+version+"_amd64.deb")
	out, err := exec.Command("dpkg-deb", "--root-owner-group", "-Zgzip", "-z1", "--build", root, deb).CombinedOutput()
	if err != nil {
		t.Fatalf("dpkg-deb --build: %v: %s", err, out)
	}
	return deb
}

// fakeModuleGraph mirrors the dependencies of the default modules in
// Debian's 6.1 cloud kernel.
func fakeModuleGraph() []moduleInfo {
	return []moduleInfo{
		{Name: "virtio_ring", Path: "drivers/virtio/virtio_ring.ko"},
		{Name: "virtio", Path: "drivers/virtio/virtio.ko", Depends: []string{"virtio_ring"}},
		{Name: "virtio_pci_legacy_dev", Path: "drivers/virtio/virtio_pci_legacy_dev.ko"},
		{Name: "virtio_pci_modern_dev", Path: "drivers/virtio/virtio_pci_modern_dev.ko"},
		{Name: "virtio_pci", Path: "drivers/virtio/virtio_pci.ko", Depends: []string{"virtio_pci_modern_dev", "virtio_ring", "virtio_pci_legacy_dev", "virtio"}},
		{Name: "virtio_mmio", Path: "drivers/virtio/virtio_mmio.ko", Depends: []string{"virtio", "virtio_ring"}},
		{Name: "virtio_console", Path: "drivers/char/virtio_console.ko", Depends: []string{"virtio", "virtio_ring"}},
		{Name: "virtio_blk", Path: "drivers/block/virtio_blk.ko", Depends: []string{"virtio", "virtio_ring"}},
		{Name: "failover", Path: "net/core/failover.ko"},
		{Name: "net_failover", Path: "drivers/net/net_failover.ko", Depends: []string{"failover"}},
		{Name: "virtio_net", Path: "drivers/net/virtio_net.ko", Depends: []string{"net_failover", "virtio", "virtio_ring"}},
		{Name: "fuse", Path: "fs/fuse/fuse.ko"},
		{Name: "virtiofs", Path: "fs/fuse/virtiofs.ko", Depends: []string{"fuse", "virtio", "virtio_ring"}},
		{Name: "overlay", Path: "fs/overlayfs/overlay.ko"},
		{Name: "vsock", Path: "net/vmw_vsock/vsock.ko"},
		{Name: "vmw_vsock_virtio_transport_common", Path: "net/vmw_vsock/vmw_vsock_virtio_transport_common.ko", Depends: []string{"vsock"}},
		{Name: "vmw_vsock_virtio_transport", Path: "net/vmw_vsock/vmw_vsock_virtio_transport.ko", Depends: []string{"vmw_vsock_virtio_transport_common", "virtio", "virtio_ring", "vsock"}},
		{Name: "virtio_rng", Path: "drivers/char/hw_random/virtio-rng.ko", Depends: []string{"rng_core", "virtio", "virtio_ring"}},
		{Name: "virtio_balloon", Path: "drivers/virtio/virtio_balloon.ko", Depends: []string{"virtio", "virtio_ring"}},
		{Name: "virtio_mem", Path: "drivers/virtio/virtio_mem.ko", Depends: []string{"virtio", "virtio_ring"}},
	}
}

// wantDefaultOrder is the load order of the default modules.
var wantDefaultOrder = []string{
	"virtio_ring", "virtio", "virtio_pci_legacy_dev", "virtio_pci_modern_dev", "virtio_pci",
	"virtio_mmio", "virtio_console", "virtio_blk", "failover", "net_failover", "virtio_net",
	"fuse", "virtiofs", "overlay", "vsock", "vmw_vsock_virtio_transport_common",
	"vmw_vsock_virtio_transport", "virtio_rng", "virtio_balloon", "virtio_mem",
}

// cpioMember is one entry of a newc archive as read back by readNewc.
type cpioMember struct {
	Name                 string
	Mode                 uint32
	UID, GID, Mtime      uint32
	RdevMajor, RdevMinor uint32
	Data                 []byte
}

// readNewc parses a newc cpio archive, checking its structure.
func readNewc(t testing.TB, b []byte) []cpioMember {
	t.Helper()
	var out []cpioMember
	r := bytes.NewReader(b)
	pos := func() int64 { return int64(len(b)) - int64(r.Len()) }
	align := func() {
		for pos()%4 != 0 {
			if c, err := r.ReadByte(); err != nil || c != 0 {
				t.Fatalf("cpio: bad padding at %d", pos())
			}
		}
	}
	for {
		hdr := make([]byte, 110)
		if _, err := io.ReadFull(r, hdr); err != nil {
			t.Fatalf("cpio: read header at %d: %v", pos(), err)
		}
		if string(hdr[:6]) != "070701" {
			t.Fatalf("cpio: bad magic %q at %d", hdr[:6], pos()-110)
		}
		field := func(i int) uint32 {
			v, err := strconv.ParseUint(string(hdr[6+8*i:14+8*i]), 16, 32)
			if err != nil {
				t.Fatalf("cpio: bad header field %d: %v", i, err)
			}
			return uint32(v)
		}
		m := cpioMember{Mode: field(1), UID: field(2), GID: field(3), Mtime: field(5), RdevMajor: field(9), RdevMinor: field(10)}
		size, namesize := field(6), field(11)
		name := make([]byte, namesize)
		if _, err := io.ReadFull(r, name); err != nil || name[namesize-1] != 0 {
			t.Fatalf("cpio: bad name: %v", err)
		}
		m.Name = string(name[:namesize-1])
		align()
		m.Data = make([]byte, size)
		if _, err := io.ReadFull(r, m.Data); err != nil {
			t.Fatalf("cpio: read data of %s: %v", m.Name, err)
		}
		align()
		if m.Name == "TRAILER!!!" {
			if r.Len() != 0 {
				t.Fatalf("cpio: %d bytes after trailer", r.Len())
			}
			return out
		}
		out = append(out, m)
	}
}
