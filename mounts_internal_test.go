package cocoon

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// Containers binding one host directory with rshared or rslave bind one
// pod-wide bind, released with the last of them; a private bind stays the
// container's own; the host's mounts below a bind source are announced.
func TestShareContainerPodWideVolumes(t *testing.T) {
	s := sharedSandbox(t)
	sh := s.shared
	base := t.TempDir()
	vol := filepath.Join(base, "vol")
	os.MkdirAll(filepath.Join(vol, "sub"), 0o755)
	if err := unix.Mount("tmpfs", filepath.Join(vol, "sub"), "tmpfs", 0, "size=1m"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(filepath.Join(vol, "sub"), unix.MNT_DETACH) })

	share := func(id, prop string) sharedContainer {
		t.Helper()
		rootfs := filepath.Join(base, id)
		os.MkdirAll(rootfs, 0o755)
		spec := &specs.Spec{
			Root:   &specs.Root{Path: rootfs},
			Mounts: []specs.Mount{{Destination: "/vol", Type: "bind", Source: vol, Options: []string{"rbind", prop, "rw"}}},
		}
		sc, err := s.shareContainer(id, spec, rootfs, false)
		if err != nil {
			t.Fatal(err)
		}
		s.state.Containers[id] = &containerState{ID: id, Volumes: sc.volumes}
		return sc
	}
	a, b, c := share("a", "rshared"), share("b", "rslave"), share("c", "rprivate")
	// The guest's spec names no host path; the storage says where the
	// guest finds the source.
	for _, sc := range []sharedContainer{a, b, c} {
		if got := sc.spec.Mounts[0].Source; got != "" {
			t.Errorf("guest spec names the host source %q", got)
		}
		if len(sc.storages) != 1 || sc.storages[0].Mount != 0 {
			t.Fatalf("storages %+v, want one for mount 0", sc.storages)
		}
	}
	src := func(sc sharedContainer) string { return sc.storages[0].Path }
	if src(a) != src(b) || !strings.HasPrefix(src(a), volumesDir+"/") {
		t.Errorf("rshared and rslave binds of one directory: sources %q and %q, want one pod-wide bind", src(a), src(b))
	}
	if len(a.newVolumes) != 1 || len(b.newVolumes) != 0 {
		t.Errorf("new pod-wide binds: %q then %q, want one then none", a.newVolumes, b.newVolumes)
	}
	if src(c) != "c/mounts/0" {
		t.Errorf("rprivate bind: source %q, want the container's own", src(c))
	}
	if got := c.storages[0].Submounts; len(got) != 1 || got[0] != "sub" {
		t.Errorf("submounts announced: %q, want [sub]", got)
	}
	volDir := filepath.Join(sh.HostDir(), src(a))
	if err := s.unshare("a", a.volumes); err != nil {
		t.Fatal(err)
	}
	delete(s.state.Containers, "a")
	if _, err := os.Stat(filepath.Join(volDir, "sub")); err != nil {
		t.Errorf("pod-wide bind released while container b uses it: %v", err)
	}
	if err := s.unshare("b", b.volumes); err != nil {
		t.Fatal(err)
	}
	delete(s.state.Containers, "b")
	if _, err := os.Stat(volDir); !os.IsNotExist(err) {
		t.Errorf("pod-wide bind left after its last container: %v", err)
	}
}
