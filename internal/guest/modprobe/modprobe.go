// Package modprobe loads the guest image's on-demand kernel modules when
// the guest kernel asks for them.
//
// The kernel's request_module (a socket family, a link kind, a file
// system, a device node nobody drives yet) runs the program named by
// /proc/sys/kernel/modprobe as "<program> -q -- <name>" and waits for it.
// Once the host's module tree is there, Enable points that at HelperPath,
// a link to the agent binary, which then runs Main: it resolves the name
// with the tree's index and loads each module, dependencies first, with
// finit_module(2). Enable also creates the device nodes of the tree's
// drivers (/dev/net/tun, /dev/loop-control, ...), so that opening one
// loads its module, as kmod's static nodes do.
//
// This code runs inside the sandbox VM.
package modprobe

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/cocoon-runtime/cocoon/agent/protocol"
	"github.com/cocoon-runtime/cocoon/internal/modindex"
	"golang.org/x/sys/unix"
)

// HelperPath is where the guest's initramfs links the agent binary under
// the name that makes it run Main.
const HelperPath = protocol.ModprobeHelper

// IsHelper reports whether args (os.Args) are those of the helper.
func IsHelper(args []string) bool {
	return len(args) > 0 && filepath.Base(args[0]) == filepath.Base(HelperPath)
}

// Tree is an on-demand module tree as the guest sees it.
type Tree struct {
	Dir       string // the tree: <name>.ko files and the index
	SysModule string // /sys/module, where loaded modules appear
}

// index reads and parses the tree's index.
func (t Tree) index() (*modindex.Index, error) {
	f, err := os.Open(filepath.Join(t.Dir, modindex.FileName))
	if err != nil {
		return nil, fmt.Errorf("module tree: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, modindex.MaxIndexSize+1))
	if err != nil {
		return nil, fmt.Errorf("module tree: read index: %w", err)
	}
	return modindex.Parse(b)
}

// Enable makes the guest load modules from t on demand: it creates the
// index's device nodes below devDir that do not exist yet and writes
// HelperPath to procModprobe (/proc/sys/kernel/modprobe). It does nothing
// and returns false when t has no index. The kernel release of the index
// must be release (the running kernel's).
func Enable(t Tree, release, devDir, procModprobe string) (bool, error) {
	ix, err := t.index()
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	if ix.Release != release {
		return false, fmt.Errorf("module tree is for kernel %s, the guest runs %s", ix.Release, release)
	}
	for _, n := range ix.Nodes {
		if err := mknod(devDir, n); err != nil {
			return false, err
		}
	}
	if err := os.WriteFile(procModprobe, []byte(HelperPath+"\n"), 0o644); err != nil {
		return false, fmt.Errorf("set the kernel's modprobe helper: %w", err)
	}
	return true, nil
}

// mknod creates node n below devDir unless something is there already.
func mknod(devDir string, n modindex.Node) error {
	p := filepath.Join(devDir, n.Name)
	if _, err := os.Lstat(p); err == nil {
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return fmt.Errorf("device node %s: %w", n.Name, err)
	}
	mode := uint32(unix.S_IFCHR)
	if n.Type == 'b' {
		mode = unix.S_IFBLK
	}
	if err := unix.Mknod(p, mode|0o600, int(unix.Mkdev(n.Major, n.Minor))); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("device node %s: %w", n.Name, err)
	}
	return nil
}

// Load loads the modules request (a module name or an alias, as the
// kernel asks) resolves to, dependencies first, skipping those loaded
// already. It returns the names it loaded.
func (t Tree) Load(request string) ([]string, error) {
	ix, err := t.index()
	if err != nil {
		return nil, err
	}
	order, err := ix.Resolve(request)
	if err != nil {
		return nil, err
	}
	var loaded []string
	for _, name := range order {
		if _, err := os.Stat(filepath.Join(t.SysModule, name, "initstate")); err == nil {
			continue
		}
		if err := t.load(name); err != nil {
			return loaded, fmt.Errorf("load module %s (for %s): %w", name, request, err)
		}
		loaded = append(loaded, name)
	}
	return loaded, nil
}

// load loads module name of the tree. Name is a valid module name
// (the index checked it), so name.ko is a file of the tree itself.
func (t Tree) load(name string) error {
	fd, err := unix.Open(filepath.Join(t.Dir, name+".ko"), unix.O_RDONLY|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG || st.Size > modindex.MaxModuleSize {
		return fmt.Errorf("%s.ko is not a regular file of at most %d bytes", name, modindex.MaxModuleSize)
	}
	// Two requests for one module can race; the second finds it loaded.
	if err := unix.FinitModule(fd, "", 0); err != nil && !errors.Is(err, unix.EEXIST) {
		return err
	}
	return nil
}

// Main is the helper: args are "<HelperPath> [-q] [--] <name>...", as the
// kernel passes them. Errors go to logw (the kernel log), and the exit
// status tells the kernel whether the modules loaded.
func Main(args []string, t Tree, logw io.Writer) int {
	var names []string
	opts := true
	for _, a := range args[1:] {
		switch {
		case opts && a == "--":
			opts = false
		case opts && strings.HasPrefix(a, "-"):
			// -q (quiet) and kmod's other flags change nothing here.
		default:
			names = append(names, a)
		}
	}
	if len(names) == 0 {
		fmt.Fprintln(logw, "cocoon-modprobe: no module named")
		return 1
	}
	status := 0
	for _, n := range names {
		if _, err := t.Load(n); err != nil {
			if !errors.Is(err, modindex.ErrNotFound) {
				fmt.Fprintf(logw, "cocoon-modprobe: %v\n", err)
			}
			status = 1
		}
	}
	return status
}
