package image

import (
	"fmt"
	"io"
	"path"
	"slices"
	"strings"

	"github.com/cocoon-runtime/cocoon/agent/protocol"
)

// Paths inside the initramfs.
const (
	initPath        = "/init"
	modulesListPath = "/etc/cocoon/modules"
)

// moduleFile is a kernel module to put into the initramfs.
type moduleFile struct {
	Name string
	Data []byte
}

// modulePath returns where the initramfs holds module name.
func modulePath(release, name string) string {
	return path.Join("/lib/modules", release, name+".ko")
}

// writeInitramfs writes an uncompressed newc initramfs to w holding the
// agent as /init (and linked as protocol.ModprobeHelper), the basic directories and device nodes, the modules in
// /lib/modules/<release>/ and their load order in /etc/cocoon/modules.
// Entries are sorted by name and carry no timestamps or owners, so equal
// inputs give equal bytes. It returns the number of bytes written.
func writeInitramfs(w io.Writer, agent []byte, release string, modules []moduleFile) (int64, error) {
	entries := map[string]newcEntry{}
	dir := func(name string) {
		for d := name; d != "/" && d != "."; d = path.Dir(d) {
			if _, ok := entries[d]; !ok {
				entries[d] = newcEntry{Name: d, Mode: cpioTypeDir | 0o755}
			}
		}
	}
	add := func(e newcEntry) error {
		if _, ok := entries[e.Name]; ok {
			return fmt.Errorf("write initramfs: duplicate entry %s", e.Name)
		}
		dir(path.Dir(e.Name))
		entries[e.Name] = e
		return nil
	}

	for _, d := range []string{"/dev", "/proc", "/sys", "/run", "/tmp", "/etc", "/etc/cocoon", path.Join("/lib/modules", release)} {
		dir(d)
	}
	entries["/tmp"] = newcEntry{Name: "/tmp", Mode: cpioTypeDir | 0o1777}
	var list strings.Builder
	files := []newcEntry{
		{Name: initPath, Mode: cpioTypeReg | 0o755, Data: agent},
		// The agent serves the kernel's module requests under this name.
		{Name: protocol.ModprobeHelper, Mode: cpioTypeLink | 0o777, Data: []byte(initPath)},
		{Name: "/dev/console", Mode: cpioTypeChar | 0o600, RdevMajor: 5, RdevMinor: 1},
		{Name: "/dev/null", Mode: cpioTypeChar | 0o666, RdevMajor: 1, RdevMinor: 3},
	}
	for _, m := range modules {
		p := modulePath(release, m.Name)
		files = append(files, newcEntry{Name: p, Mode: cpioTypeReg | 0o644, Data: m.Data})
		list.WriteString(p + "\n")
	}
	files = append(files, newcEntry{Name: modulesListPath, Mode: cpioTypeReg | 0o644, Data: []byte(list.String())})
	for _, f := range files {
		if err := add(f); err != nil {
			return 0, err
		}
	}

	names := make([]string, 0, len(entries))
	for n := range entries {
		names = append(names, n)
	}
	slices.Sort(names)
	cw := newNewcWriter(w)
	for _, n := range names {
		if err := cw.writeEntry(entries[n]); err != nil {
			return cw.n, fmt.Errorf("write initramfs: %w", err)
		}
	}
	if err := cw.close(); err != nil {
		return cw.n, fmt.Errorf("write initramfs: %w", err)
	}
	return cw.n, nil
}
