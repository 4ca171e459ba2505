package modprobe

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/cocoon-runtime/cocoon/internal/modindex"
	"golang.org/x/sys/unix"
)

// fakeTree writes an index to a tree whose modules all show as loaded in
// a fake /sys/module, except those named in unloaded: the tests never
// load a module into the host's kernel.
func fakeTree(t *testing.T, release string, unloaded ...string) Tree {
	t.Helper()
	dir := t.TempDir()
	tr := Tree{Dir: filepath.Join(dir, "tree"), SysModule: filepath.Join(dir, "sys-module")}
	ix := &modindex.Index{Release: release}
	for _, m := range []struct {
		name    string
		deps    []string
		aliases []string
	}{
		{"llc", nil, nil},
		{"stp", []string{"llc"}, nil},
		{"bridge", []string{"stp", "llc"}, []string{"rtnl-link-bridge"}},
		{"tun", nil, []string{"devname:net/tun", "char-major-10-200"}},
		{"loop", nil, []string{"devname:loop-control", "char-major-10-237", "block-major-7-*"}},
	} {
		if err := ix.Add(m.name, m.deps, m.aliases); err != nil {
			t.Fatal(err)
		}
		if !slices.Contains(unloaded, m.name) {
			os.MkdirAll(filepath.Join(tr.SysModule, m.name), 0o755)
			os.WriteFile(filepath.Join(tr.SysModule, m.name, "initstate"), []byte("live\n"), 0o444)
		}
	}
	var b bytes.Buffer
	if err := ix.Write(&b); err != nil {
		t.Fatal(err)
	}
	os.MkdirAll(tr.Dir, 0o755)
	if err := os.WriteFile(filepath.Join(tr.Dir, modindex.FileName), b.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return tr
}

func TestIsHelper(t *testing.T) {
	for args, want := range map[string]bool{
		HelperPath + " -q -- bridge": true,
		"cocoon-modprobe bridge":     true,
		"/init":                      false,
		"/init init":                 false,
		"":                           false,
	} {
		if got := IsHelper(strings.Fields(args)); got != want {
			t.Errorf("IsHelper(%q) = %v", args, got)
		}
	}
}

func TestEnable(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mknod needs root")
	}
	tr := fakeTree(t, "6.1.0-1")
	dev := t.TempDir()
	proc := filepath.Join(t.TempDir(), "modprobe")
	os.WriteFile(proc, []byte("/sbin/modprobe\n"), 0o644)
	// A node that exists already is left alone.
	os.WriteFile(filepath.Join(dev, "loop-control"), nil, 0o600)

	if _, err := Enable(tr, "6.1.0-2", dev, proc); err == nil || !strings.Contains(err.Error(), "6.1.0-1") {
		t.Errorf("Enable for another release: %v", err)
	}
	ok, err := Enable(tr, "6.1.0-1", dev, proc)
	if err != nil || !ok {
		t.Fatalf("Enable = %v, %v", ok, err)
	}
	var st unix.Stat_t
	if err := unix.Lstat(filepath.Join(dev, "net/tun"), &st); err != nil {
		t.Fatal(err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFCHR || unix.Major(st.Rdev) != 10 || unix.Minor(st.Rdev) != 200 {
		t.Errorf("net/tun: mode %#o rdev %d:%d", st.Mode, unix.Major(st.Rdev), unix.Minor(st.Rdev))
	}
	if fi, err := os.Lstat(filepath.Join(dev, "loop-control")); err != nil || !fi.Mode().IsRegular() {
		t.Errorf("existing loop-control replaced: %v %v", fi, err)
	}
	if b, _ := os.ReadFile(proc); string(b) != HelperPath+"\n" {
		t.Errorf("modprobe helper %q", b)
	}

	// No tree: nothing to do, nothing changed.
	os.WriteFile(proc, []byte("/sbin/modprobe\n"), 0o644)
	if ok, err := Enable(Tree{Dir: t.TempDir()}, "6.1.0-1", dev, proc); ok || err != nil {
		t.Errorf("Enable without a tree = %v, %v", ok, err)
	}
	if b, _ := os.ReadFile(proc); string(b) != "/sbin/modprobe\n" {
		t.Errorf("modprobe helper changed without a tree: %q", b)
	}
}

func TestHelperMain(t *testing.T) {
	tr := fakeTree(t, "6.1.0-1")
	var log bytes.Buffer
	// Everything is loaded already: success without loading anything.
	for _, args := range [][]string{
		{HelperPath, "-q", "--", "rtnl-link-bridge"},
		{HelperPath, "-q", "--", "char-major-10-200"},
		{HelperPath, "block-major-7-0", "bridge"},
	} {
		if code := Main(args, tr, &log); code != 0 {
			t.Errorf("Main(%q) = %d: %s", args, code, log.String())
		}
	}
	// Unknown requests fail quietly, as kmod's -q does; bad ones fail.
	if code := Main([]string{HelperPath, "-q", "--", "net-pf-7"}, tr, &log); code != 1 || log.Len() != 0 {
		t.Errorf("unknown module: exit %d, log %q", code, log.String())
	}
	if code := Main([]string{HelperPath, "-q", "--"}, tr, &log); code != 1 || !strings.Contains(log.String(), "no module") {
		t.Errorf("no name: exit %d, log %q", code, log.String())
	}
	log.Reset()
	// A path is only a name that matches no module.
	if code := Main([]string{HelperPath, "-q", "--", "../../etc/passwd"}, tr, &log); code != 1 {
		t.Errorf("a path as a name: exit %d, log %q", code, log.String())
	}
	if code := Main([]string{HelperPath, "-q", "--", "a\tb"}, tr, &log); code != 1 || !strings.Contains(log.String(), "invalid") {
		t.Errorf("a name with a tab: exit %d, log %q", code, log.String())
	}
	// A missing index is an error to report.
	log.Reset()
	if code := Main([]string{HelperPath, "bridge"}, Tree{Dir: t.TempDir()}, &log); code != 1 || !strings.Contains(log.String(), "index") {
		t.Errorf("no index: exit %d, log %q", code, log.String())
	}
}

// A module file that is not a regular file is refused before the kernel
// sees it (the test's loads never reach finit_module).
func TestLoadRefusesNonRegular(t *testing.T) {
	tr := fakeTree(t, "6.1.0-1", "stp", "bridge")
	os.Symlink("/etc/passwd", filepath.Join(tr.Dir, "stp.ko"))
	loaded, err := tr.Load("bridge")
	if err == nil || !strings.Contains(err.Error(), "stp") || len(loaded) != 0 {
		t.Errorf("Load(bridge) = %v, %v", loaded, err)
	}
	os.Mkdir(filepath.Join(tr.Dir, "bridge.ko"), 0o755)
	os.Remove(filepath.Join(tr.Dir, "stp.ko"))
	os.MkdirAll(filepath.Join(tr.SysModule, "stp"), 0o755)
	os.WriteFile(filepath.Join(tr.SysModule, "stp", "initstate"), nil, 0o444)
	if loaded, err := tr.Load("bridge"); err == nil || !strings.Contains(err.Error(), "regular") || len(loaded) != 0 {
		t.Errorf("Load(bridge) with a directory: %v, %v", loaded, err)
	}
}
