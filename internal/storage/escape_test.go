package storage

import (
	"os"
	"path/filepath"
	"sync"
	"testing"
)

// A bind source swapped while it is bound (a symlink flipping between a
// directory and a file) is bound as the one object it named when it was
// opened: what is checked is what is mounted, so no bind fails half-way
// nor binds something else than what was looked at.
func TestBindSourceSwappedDuringCall(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	base := t.TempDir()
	s := newShared(t, filepath.Join(base, "shared"))
	dir, file := filepath.Join(base, "dir"), filepath.Join(base, "file")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "mark"), []byte("dir"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(file, []byte("file"), 0o644); err != nil {
		t.Fatal(err)
	}
	src := filepath.Join(base, "src")
	if err := os.Symlink(dir, src); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		tmp := filepath.Join(base, "src.tmp")
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			target := dir
			if i%2 == 1 {
				target = file
			}
			os.Remove(tmp)
			os.Symlink(target, tmp)
			os.Rename(tmp, src)
		}
	}()
	defer func() { close(stop); wg.Wait() }()
	for i := 0; i < 300; i++ {
		rel := filepath.Join("c", "m", string(rune('a'+i%26))+string(rune('a'+i/26)))
		if err := s.Bind(src, rel, ReadOnly); err != nil {
			t.Fatalf("bind %d of a swapped source: %v", i, err)
		}
		p := filepath.Join(s.HostDir(), rel)
		st, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if b, err := os.ReadFile(filepath.Join(p, "mark")); st.IsDir() && (err != nil || string(b) != "dir") {
			t.Fatalf("bind %d: a directory that is not the source's (%q, %v)", i, b, err)
		}
		if b, err := os.ReadFile(p); !st.IsDir() && (err != nil || string(b) != "file") {
			t.Fatalf("bind %d: a file that is not the source's (%q, %v)", i, b, err)
		}
		if err := s.Release(rel); err != nil {
			t.Fatal(err)
		}
	}
}

// Mount points made in a read-only rootfs stay inside it, whatever the
// image's symlinks say or the destination spells: an absolute symlink, a
// relative one climbing out, ".." in the destination, and a directory
// swapped for a symlink to the outside during the calls.
func TestMountpointsStayInRootfs(t *testing.T) {
	base := t.TempDir()
	rootfs, outside := filepath.Join(base, "rootfs"), filepath.Join(base, "outside")
	for _, d := range []string{filepath.Join(rootfs, "etc"), filepath.Join(rootfs, "swap"), outside} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for link, target := range map[string]string{"abs": outside, "up": "../../outside", "etc/up": "../../../outside"} {
		if err := os.Symlink(target, filepath.Join(rootfs, link)); err != nil {
			t.Fatal(err)
		}
	}
	dests := []string{"/abs/a", "/up/b", "/etc/up/c", "/../../outside/d", "/etc/../../outside/e"}
	files := map[string]bool{"/up/b": true}
	for _, d := range dests {
		if err := MakeMountpoints(rootfs, []string{d}, files); err != nil {
			t.Logf("MakeMountpoints %s: %v", d, err) // refusing is fine too; escaping is not
		}
	}
	// Climbing out is clamped at the rootfs's root.
	if _, err := os.Stat(filepath.Join(rootfs, "outside", "d")); err != nil {
		t.Errorf("/../../outside/d was not made inside the rootfs: %v", err)
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		swap, tmp := filepath.Join(rootfs, "swap"), filepath.Join(rootfs, "swap.tmp")
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			os.RemoveAll(tmp)
			if i%2 == 0 {
				os.Symlink(outside, tmp)
			} else {
				os.Mkdir(tmp, 0o755)
			}
			os.Rename(tmp, swap)
		}
	}()
	for i := 0; i < 300; i++ {
		MakeMountpoints(rootfs, []string{"/swap/x", "/swap/y/z"}, map[string]bool{"/swap/x": true})
	}
	close(stop)
	wg.Wait()
	entries, err := os.ReadDir(outside)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		t.Errorf("made outside the rootfs: %s", filepath.Join(outside, e.Name()))
	}
}
