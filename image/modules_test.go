package image

import (
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
)

func graphIndex(mods []moduleInfo) map[string]*moduleInfo {
	index := map[string]*moduleInfo{}
	for i := range mods {
		m := mods[i]
		index[m.Name] = &m
	}
	index["rng_core"] = &moduleInfo{Name: "rng_core", Builtin: true}
	return index
}

func names(mods []*moduleInfo) []string {
	var out []string
	for _, m := range mods {
		out = append(out, m.Name)
	}
	return out
}

func TestResolveModulesDefaultOrder(t *testing.T) {
	order, err := resolveModules(DefaultModules(), graphIndex(fakeModuleGraph()))
	if err != nil {
		t.Fatal(err)
	}
	if got := names(order); !slices.Equal(got, wantDefaultOrder) {
		t.Errorf("load order:\n got %v\nwant %v", got, wantDefaultOrder)
	}
}

func TestResolveModulesDependenciesFirst(t *testing.T) {
	index := graphIndex(fakeModuleGraph())
	order, err := resolveModules(DefaultModules(), index)
	if err != nil {
		t.Fatal(err)
	}
	pos := map[string]int{}
	for i, m := range order {
		if _, dup := pos[m.Name]; dup {
			t.Errorf("%s loaded twice", m.Name)
		}
		pos[m.Name] = i
	}
	for _, m := range order {
		for _, d := range m.Depends {
			if index[d].Builtin {
				if _, ok := pos[d]; ok {
					t.Errorf("built-in %s in load order", d)
				}
				continue
			}
			if pos[d] >= pos[m.Name] {
				t.Errorf("%s loads before its dependency %s", m.Name, d)
			}
		}
	}
}

// The order must not depend on the order of the depends= field or on map
// iteration.
func TestResolveModulesDeterministic(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for range 20 {
		mods := fakeModuleGraph()
		for i := range mods {
			rng.Shuffle(len(mods[i].Depends), func(a, b int) {
				mods[i].Depends[a], mods[i].Depends[b] = mods[i].Depends[b], mods[i].Depends[a]
			})
		}
		order, err := resolveModules(DefaultModules(), graphIndex(mods))
		if err != nil {
			t.Fatal(err)
		}
		if got := names(order); !slices.Equal(got, wantDefaultOrder) {
			t.Fatalf("load order changed with depends order:\n got %v\nwant %v", got, wantDefaultOrder)
		}
	}
}

func TestResolveModulesRootOrderAndClosure(t *testing.T) {
	order, err := resolveModules([]string{"overlay", "virtio-net"}, graphIndex(fakeModuleGraph()))
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"overlay", "failover", "net_failover", "virtio_ring", "virtio", "virtio_net"}
	if got := names(order); !slices.Equal(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
}

func TestResolveModulesErrors(t *testing.T) {
	tests := []struct {
		name  string
		mods  []moduleInfo
		roots []string
		want  string
	}{
		{"missing root", nil, []string{"nosuch"}, "resolve module nosuch: not found"},
		{"missing dependency", []moduleInfo{{Name: "a", Depends: []string{"b"}}}, []string{"a"}, "b (needed by a): not found"},
		{"cycle", []moduleInfo{{Name: "a", Depends: []string{"b"}}, {Name: "b", Depends: []string{"c"}}, {Name: "c", Depends: []string{"a"}}}, []string{"a"}, "cycle a -> b -> c -> a"},
		{"compressed", []moduleInfo{{Name: "a", Path: "kernel/a.ko.zst", Compressed: ".zst"}}, []string{"a"}, "compressed (.zst)"},
		{"invalid", []moduleInfo{{Name: "a", Path: "kernel/a.ko", Invalid: "no .modinfo section"}}, []string{"a"}, "kernel/a.ko: no .modinfo section"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := resolveModules(tt.roots, graphIndex(tt.mods))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %v, want one containing %q", err, tt.want)
			}
		})
	}
}

func TestModuleNameFromPath(t *testing.T) {
	tests := []struct{ path, name, comp string }{
		{"kernel/drivers/char/hw_random/virtio-rng.ko", "virtio_rng", ""},
		{"kernel/fs/fuse/virtiofs.ko.xz", "virtiofs", ".xz"},
		{"kernel/fs/fuse/fuse.ko.zst", "fuse", ".zst"},
	}
	for _, tt := range tests {
		name, comp, ok := moduleNameFromPath(tt.path)
		if !ok || name != tt.name || comp != tt.comp {
			t.Errorf("moduleNameFromPath(%q) = %q, %q, %v; want %q, %q", tt.path, name, comp, ok, tt.name, tt.comp)
		}
	}
	if _, _, ok := moduleNameFromPath("modules.order"); ok {
		t.Error("modules.order taken for a module")
	}
}

func TestParseModinfo(t *testing.T) {
	m, err := parseModinfo(fakeModule(t, "virtio_net", "6.1.0-56-cloud-amd64", "net_failover", "virtio", "virtio_ring"))
	if err != nil {
		t.Fatal(err)
	}
	if m.Name != "virtio_net" || !slices.Equal(m.Depends, []string{"net_failover", "virtio", "virtio_ring"}) || !strings.HasPrefix(m.Vermagic, "6.1.0-56-cloud-amd64 ") {
		t.Errorf("got %+v", m)
	}
	if !slices.Equal(m.Aliases, []string{"fake:virtio_net"}) {
		t.Errorf("aliases %q", m.Aliases)
	}
	m, err = parseModinfo(fakeModule(t, "overlay", "6.1.0"))
	if err != nil || len(m.Depends) != 0 {
		t.Errorf("empty depends= gave %q, %v", m.Depends, err)
	}
	if _, err := parseModinfo([]byte("not an elf")); err == nil {
		t.Error("no error for a non-ELF module")
	}
}
