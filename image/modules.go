package image

import (
	"bytes"
	"debug/elf"
	"errors"
	"fmt"
	"path"
	"slices"
	"strings"
)

// DefaultModules returns the kernel modules a guest needs, as module names.
// Build loads them together with everything they depend on. The order of
// the list is the preferred load order: a module is loaded after its
// dependencies and otherwise in list order.
func DefaultModules() []string {
	return []string{
		"virtio_pci",
		"virtio_mmio",
		"virtio_console",
		"virtio_blk",
		"virtio_net",
		"virtiofs",
		"fuse",
		"overlay",
		"vsock",
		"vmw_vsock_virtio_transport",
		"virtio_rng",
		"virtio_balloon",
	}
}

// moduleInfo describes one kernel module found in a kernel package.
type moduleInfo struct {
	Name       string   // module name, with '-' folded to '_'
	Path       string   // path inside the package, without a leading "./"
	Depends    []string // module names from the modinfo "depends=" field
	Vermagic   string   // modinfo "vermagic=" field
	Compressed string   // ".xz", ".zst" or ".gz" for a compressed module, else ""
	Builtin    bool     // built into the kernel image: nothing to load
	Invalid    string   // why the module's info could not be read, if it could not
}

// moduleName returns the canonical name of a kernel module: the kernel
// treats '-' and '_' in module names as the same character.
func moduleName(s string) string {
	return strings.ReplaceAll(strings.TrimSpace(s), "-", "_")
}

// moduleNameFromPath returns the module name of a module file path and the
// compression suffix of the file, if any. ok is false when p is not a
// kernel module.
func moduleNameFromPath(p string) (name, compressed string, ok bool) {
	base := path.Base(p)
	for _, ext := range []string{".xz", ".zst", ".gz"} {
		if strings.HasSuffix(base, ".ko"+ext) {
			return moduleName(strings.TrimSuffix(base, ".ko"+ext)), ext, true
		}
	}
	if strings.HasSuffix(base, ".ko") {
		return moduleName(strings.TrimSuffix(base, ".ko")), "", true
	}
	return "", "", false
}

// parseModinfo reads the ".modinfo" section of an uncompressed kernel
// module and returns its name (empty if the module does not record one),
// dependencies and vermagic string.
func parseModinfo(data []byte) (name string, depends []string, vermagic string, err error) {
	f, err := elf.NewFile(bytes.NewReader(data))
	if err != nil {
		return "", nil, "", err
	}
	defer f.Close()
	sec := f.Section(".modinfo")
	if sec == nil {
		return "", nil, "", errors.New("no .modinfo section")
	}
	info, err := sec.Data()
	if err != nil {
		return "", nil, "", fmt.Errorf("read .modinfo section: %w", err)
	}
	for _, field := range bytes.Split(info, []byte{0}) {
		key, value, ok := strings.Cut(string(field), "=")
		if !ok {
			continue
		}
		switch key {
		case "name":
			name = moduleName(value)
		case "vermagic":
			vermagic = value
		case "depends":
			for _, d := range strings.Split(value, ",") {
				if d = moduleName(d); d != "" {
					depends = append(depends, d)
				}
			}
		}
	}
	return name, depends, vermagic, nil
}

// resolveModules computes the load order of roots and everything they
// depend on, as found in index (keyed by module name). A module comes after
// all of its dependencies; dependencies are visited in sorted order and
// roots in the order given, so the result is deterministic. Built-in
// modules are left out. It fails on a missing, compressed or unreadable
// module and on a dependency cycle.
func resolveModules(roots []string, index map[string]*moduleInfo) ([]*moduleInfo, error) {
	const (
		unvisited = iota
		visiting
		done
	)
	state := make(map[string]int)
	var order []*moduleInfo
	var visit func(name string, chain []string) error
	visit = func(name string, chain []string) error {
		switch state[name] {
		case done:
			return nil
		case visiting:
			return fmt.Errorf("resolve module %s: dependency cycle %s", name, strings.Join(append(chain, name), " -> "))
		}
		m, ok := index[name]
		if !ok {
			if len(chain) == 0 {
				return fmt.Errorf("resolve module %s: not found in kernel package", name)
			}
			return fmt.Errorf("resolve module %s (needed by %s): not found in kernel package", name, chain[len(chain)-1])
		}
		if m.Builtin {
			state[name] = done
			return nil
		}
		if m.Compressed != "" {
			return fmt.Errorf("resolve module %s: %s is compressed (%s); compressed modules are not supported", name, m.Path, m.Compressed)
		}
		if m.Invalid != "" {
			return fmt.Errorf("resolve module %s: read module info of %s: %s", name, m.Path, m.Invalid)
		}
		state[name] = visiting
		deps := slices.Clone(m.Depends)
		slices.Sort(deps)
		for _, d := range slices.Compact(deps) {
			if err := visit(d, append(chain, name)); err != nil {
				return err
			}
		}
		state[name] = done
		order = append(order, m)
		return nil
	}
	for _, r := range roots {
		if err := visit(moduleName(r), nil); err != nil {
			return nil, err
		}
	}
	return order, nil
}
