package cocoon

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/cocoon-runtime/cocoon/internal/storage"
	"github.com/cocoon-runtime/cocoon/internal/testutil"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

func needRoot(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount")
	}
}

// A runtime of its own, with no VM: for host-side behaviour.
// sharedSandbox is sandbox "sb" of a runtime of hostRuntime's, with no
// container and no VM, but its shared tree.
func sharedSandbox(t *testing.T) *Sandbox {
	t.Helper()
	needRoot(t)
	r := hostRuntime(t)
	s := &Sandbox{rt: r, id: "sb", dir: r.sandboxDir("sb"), state: &sandboxState{Containers: map[string]*containerState{}}}
	os.MkdirAll(s.dir, 0o700)
	sh, err := storage.NewShared(s.sharedDir())
	if err != nil {
		t.Fatal(err)
	}
	s.shared = sh
	return s
}

func hostRuntime(t *testing.T) *Runtime {
	t.Helper()
	dir := t.TempDir()
	t.Cleanup(func() { storage.RemoveUnmounted(dir) })
	r, err := New(Options{StateDir: dir, DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// What the guest can write through the shared directory never exceeds
// what the spec allows the container: root.readonly and "ro" make the
// host's bind read-only, "rro" its whole tree.
func TestSharedAccessFollowsSpec(t *testing.T) {
	s := sharedSandbox(t)
	sh := s.shared
	base := t.TempDir()
	rootfs := filepath.Join(base, "rootfs")
	vol := filepath.Join(base, "vol")
	sub := filepath.Join(vol, "sub")
	os.MkdirAll(rootfs, 0o755)
	os.MkdirAll(sub, 0o755)
	if err := unix.Mount("tmpfs", sub, "tmpfs", 0, "size=1m"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(sub, unix.MNT_DETACH) })
	spec := &specs.Spec{
		Root: &specs.Root{Path: rootfs, Readonly: true},
		Mounts: []specs.Mount{
			{Destination: "/ro", Type: "bind", Source: vol, Options: []string{"rbind", "ro"}},
			{Destination: "/rro", Type: "bind", Source: vol, Options: []string{"rbind", "rro"}},
			{Destination: "/rw", Type: "bind", Source: vol, Options: []string{"rbind", "ro", "rw"}},
		},
	}
	// A read-only root needs its mount points made before it is shared
	// (runc makes them before the root turns read-only), and a symlink in
	// the image must not take them outside it.
	outside := filepath.Join(base, "outside")
	os.Mkdir(outside, 0o755)
	os.MkdirAll(filepath.Join(rootfs, "real"), 0o755)
	os.Symlink("../../../../../real", filepath.Join(rootfs, "etc")) // resolves to /real in the root
	conf := filepath.Join(base, "resolv.conf")
	os.WriteFile(conf, []byte("nameserver 127.0.0.1\n"), 0o644)
	spec.Mounts = append(spec.Mounts,
		specs.Mount{Destination: "/etc/resolv.conf", Type: "bind", Source: conf, Options: []string{"rbind", "ro"}},
		specs.Mount{Destination: "/dev", Type: "tmpfs", Source: "tmpfs"},
		specs.Mount{Destination: "/dev/pts", Type: "devpts", Source: "devpts"})
	if _, err := s.shareContainer("c1", spec, rootfs, false); err != nil {
		t.Fatal(err)
	}
	for p, dir := range map[string]bool{"ro": true, "rro": true, "rw": true, "dev": true, "real/resolv.conf": false} {
		full := filepath.Join(rootfs, p)
		if st, err := os.Lstat(full); err != nil || st.IsDir() != dir {
			t.Errorf("mount point %s: %v (dir %v, want %v)", p, err, err == nil && st.IsDir(), dir)
		}
	}
	if _, err := os.Stat(filepath.Join(outside, "resolv.conf")); err == nil {
		t.Error("a mount point was made outside the rootfs, through the image's symlink")
	}
	if err := storage.MakeMountpoints(rootfs, []string{"/abs/x"}, nil); err != nil {
		t.Fatal(err)
	}
	os.Symlink(outside, filepath.Join(rootfs, "abs-link"))
	storage.MakeMountpoints(rootfs, []string{"/abs-link/x", "/abs-link/f"}, map[string]bool{"/abs-link/f": true})
	if entries, _ := os.ReadDir(outside); len(entries) > 0 {
		t.Errorf("mount points were made outside the rootfs, through the image's symlink: %v", entries)
	}
	if _, err := os.Stat(filepath.Join(rootfs, "dev", "pts")); err == nil {
		t.Error("a mount point inside an earlier mount (/dev/pts in /dev) was made in the rootfs")
	}
	writable := func(rel string) bool {
		p := filepath.Join(sh.ExportDir(), rel, "probe")
		err := os.WriteFile(p, []byte("x"), 0o644)
		os.Remove(p)
		return err == nil
	}
	for rel, want := range map[string]bool{
		"c1/rootfs":       false,
		"c1/mounts/0":     false,
		"c1/mounts/0/sub": true, // "ro" is not recursive
		"c1/mounts/1":     false,
		"c1/mounts/1/sub": false,
		"c1/mounts/2":     true,
		"c1/mounts/2/sub": true,
	} {
		if got := writable(rel); got != want {
			t.Errorf("%s writable through the export: %v, want %v", rel, got, want)
		}
	}
}

// Delete holds the sandbox's lock: it cannot run while another process
// works on the sandbox (such as a container create binding mounts).
func TestDeleteTakesLock(t *testing.T) {
	r := hostRuntime(t)
	if err := r.store.Save("sb", &sandboxState{ID: "sb", State: StateStopped}); err != nil {
		t.Fatal(err)
	}
	unlock, err := r.store.Lock(context.Background(), "sb")
	if err != nil {
		t.Fatal(err)
	}
	s, err := r.FetchSandbox(context.Background(), "sb")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if err := s.Delete(ctx); err == nil {
		t.Fatal("Delete succeeded while another holder had the sandbox's lock")
	}
	if err := s.Stop(ctx, true); err == nil {
		t.Fatal("Stop succeeded while another holder had the sandbox's lock")
	}
	unlock()
	if err := s.Delete(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := r.FetchSandbox(context.Background(), "sb"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("fetch after delete: %v", err)
	}
	assertNoFiles(t, r.opts.StateDir)
}

// assertNoFiles fails if anything but empty directories is left in dir.
func assertNoFiles(t *testing.T, dir string) {
	t.Helper()
	filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			t.Errorf("left behind: %s", p)
		}
		return nil
	})
	if m := testutil.MountsUnder(dir); len(m) > 0 {
		t.Errorf("mounts left behind: %v", m)
	}
}

// GC removes what a killed creator left (a record still creating, with
// its shared tree mounted), directories and lock files no record names,
// and nothing else.
func TestGC(t *testing.T) {
	needRoot(t)
	r := hostRuntime(t)
	ctx := context.Background()
	leave := func(id string, state State) {
		if state != "" {
			if err := r.store.Save(id, &sandboxState{ID: id, State: state}); err != nil {
				t.Fatal(err)
			}
		}
		os.MkdirAll(r.sandboxDir(id), 0o700)
		sh, err := storage.NewShared(filepath.Join(r.sandboxDir(id), "shared"))
		if err != nil {
			t.Fatal(err)
		}
		src := t.TempDir()
		os.WriteFile(filepath.Join(src, "data"), []byte("keep"), 0o644)
		if err := sh.Bind(src, id+"/rootfs", storage.ReadWrite); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if _, err := os.Stat(filepath.Join(src, "data")); err != nil {
				t.Errorf("%s: GC deleted a bind source's data: %v", id, err)
			}
		})
	}
	leave("dead-creator", StateCreating)
	leave("no-record", "")
	leave("ready", StateReady)
	leave("busy", StateCreating)
	os.MkdirAll(filepath.Join(r.vmStateDir(), "dead-vm"), 0o700)
	os.WriteFile(filepath.Join(r.vmStateDir(), "dead-vm", "qemu.log"), nil, 0o600)
	u, _ := r.store.Lock(ctx, "lock-only")
	u()
	busy, err := r.store.Lock(ctx, "busy")
	if err != nil {
		t.Fatal(err)
	}
	rep, err := r.GC(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Sandboxes) != 1 || rep.Sandboxes[0] != "dead-creator" {
		t.Errorf("unfinished sandboxes removed: %v, want [dead-creator]", rep.Sandboxes)
	}
	if len(rep.Leftovers) != 3 {
		t.Errorf("leftovers removed: %v, want sandbox no-record, vm dead-vm, lock lock-only", rep.Leftovers)
	}
	for _, gone := range []string{r.sandboxDir("dead-creator"), r.sandboxDir("no-record"), filepath.Join(r.vmStateDir(), "dead-vm"),
		filepath.Join(r.opts.StateDir, "state", "lock-only.lock"), filepath.Join(r.opts.StateDir, "state", "dead-creator.json")} {
		if _, err := os.Lstat(gone); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s left (%v)", gone, err)
		}
	}
	for _, kept := range []string{r.sandboxDir("ready"), r.sandboxDir("busy")} {
		if _, err := os.Stat(kept); err != nil {
			t.Errorf("GC removed %s, which is in use or created", kept)
		}
	}
	busy()
}
