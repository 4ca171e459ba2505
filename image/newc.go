package image

// This file holds a small writer for the "newc" cpio format that the
// kernel unpacks as an initramfs. It is written here rather than taken from
// a library because the initramfs needs character device nodes
// (/dev/console, /dev/null) and github.com/cavaliergopher/cpio, the small
// maintained cpio package, cannot record a device's major and minor numbers
// (its Header has no rdev fields and its writer leaves them zero); the
// u-root cpio package can, but pulls in a large dependency tree.

import (
	"fmt"
	"io"
	"io/fs"
	"strings"
)

// Mode bits of a cpio entry (the Unix st_mode values).
const (
	cpioTypeDir  = 0o040000
	cpioTypeReg  = 0o100000
	cpioTypeChar = 0o020000
	cpioTypeLink = 0o120000 // a symbolic link; its data is the target
)

// newcEntry is one member of a newc archive. Ownership is always root and
// the modification time always zero, so that an archive depends only on
// its contents.
type newcEntry struct {
	Name      string // path without a leading "/"
	Mode      uint32 // file type and permission bits, as in st_mode
	RdevMajor uint32 // for device nodes
	RdevMinor uint32
	Data      []byte // contents of a regular file, target of a link
}

// newcWriter writes a newc ("070701") cpio archive.
type newcWriter struct {
	w     io.Writer
	n     int64 // bytes written
	inode uint32
	err   error
}

func newNewcWriter(w io.Writer) *newcWriter { return &newcWriter{w: w} }

func (cw *newcWriter) write(b []byte) {
	if cw.err != nil {
		return
	}
	n, err := cw.w.Write(b)
	cw.n += int64(n)
	cw.err = err
}

func (cw *newcWriter) pad() {
	if r := cw.n % 4; r != 0 {
		var zeros [4]byte
		cw.write(zeros[:4-r])
	}
}

// writeEntry appends e to the archive.
func (cw *newcWriter) writeEntry(e newcEntry) error {
	if cw.err != nil {
		return cw.err
	}
	name := strings.TrimPrefix(e.Name, "/")
	if name == "" || strings.ContainsRune(name, 0) {
		return fmt.Errorf("write cpio entry %q: invalid name", e.Name)
	}
	cw.inode++
	nlink := uint32(1)
	if e.Mode&0o170000 == cpioTypeDir {
		nlink = 2
	}
	hdr := fmt.Sprintf("070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		cw.inode, e.Mode, 0, 0, nlink, 0, len(e.Data),
		0, 0, e.RdevMajor, e.RdevMinor, len(name)+1, 0)
	cw.write([]byte(hdr))
	cw.write([]byte(name))
	cw.write([]byte{0})
	cw.pad()
	cw.write(e.Data)
	cw.pad()
	if cw.err != nil {
		return fmt.Errorf("write cpio entry %s: %w", name, cw.err)
	}
	return nil
}

// close writes the archive trailer. It does not close the underlying
// writer.
func (cw *newcWriter) close() error {
	if err := cw.writeEntry(newcEntry{Name: "TRAILER!!!"}); err != nil {
		return err
	}
	return nil
}

// cpioMode converts permission bits to the permission part of st_mode.
func cpioMode(typ uint32, perm fs.FileMode) uint32 {
	return typ | uint32(perm.Perm())
}
