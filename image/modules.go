package image

import (
	"bytes"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"

	"github.com/cocoon-runtime/cocoon/internal/modindex"
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
		"virtio_mem",
	}
}

// DefaultOnDemandModules returns the patterns (path.Match, below the
// kernel package's lib/modules/<release>/kernel/) of the modules the
// on-demand tree holds: what a privileged or NET_ADMIN container in a pod
// reasonably uses. Bridges, veth, tun/tap, vxlan, geneve, macvlan, ipvlan,
// dummy, bonding, vrf and wireguard links; 802.1q; every netfilter,
// iptables, nftables, ebtables and ipvs module; traffic control; xfs and
// overlay; loop and device mapper. ext4 is built into Debian's kernel.
func DefaultOnDemandModules() []string {
	return []string{
		"net/bridge/*.ko", "net/bridge/netfilter/*.ko", "net/8021q/*.ko",
		"net/netfilter/*.ko", "net/netfilter/ipvs/*.ko",
		"net/ipv4/netfilter/*.ko", "net/ipv6/netfilter/*.ko",
		"net/sched/*.ko",
		"drivers/net/veth.ko", "drivers/net/tun.ko", "drivers/net/tap.ko",
		"drivers/net/dummy.ko", "drivers/net/ifb.ko", "drivers/net/vrf.ko",
		"drivers/net/macvlan.ko", "drivers/net/macvtap.ko", "drivers/net/geneve.ko",
		"drivers/net/vxlan/*.ko", "drivers/net/ipvlan/*.ko",
		"drivers/net/bonding/*.ko", "drivers/net/wireguard/*.ko",
		"fs/xfs/*.ko", "fs/overlayfs/*.ko",
		"drivers/block/loop.ko", "drivers/md/dm-*.ko", "drivers/md/persistent-data/*.ko",
	}
}

// writeModuleTree writes kf's on-demand modules and their index into dir,
// a new directory, and returns the bytes of module files written.
func writeModuleTree(dir string, kf *kernelFiles) (int64, error) {
	if err := os.Mkdir(dir, 0o755); err != nil {
		return 0, fmt.Errorf("write module tree: %w", err)
	}
	var size int64
	for _, m := range kf.OnDemand {
		if !modindex.ValidName(m.Name) || len(m.Data) > modindex.MaxModuleSize {
			return 0, fmt.Errorf("write module tree: module %q cannot be stored", m.Name)
		}
		if err := writeFileFunc(filepath.Join(dir, m.Name+".ko"), func(w io.Writer) error {
			_, err := w.Write(m.Data)
			return err
		}); err != nil {
			return 0, err
		}
		size += int64(len(m.Data))
	}
	if err := writeFileFunc(filepath.Join(dir, modindex.FileName), kf.Index.Write); err != nil {
		return 0, err
	}
	return size, syncDir(dir)
}

// moduleInfo describes one kernel module found in a kernel package.
type moduleInfo struct {
	Name       string   // module name, with '-' folded to '_'
	Path       string   // path inside the package, without a leading "./"
	Depends    []string // module names from the modinfo "depends=" field
	Vermagic   string   // modinfo "vermagic=" field
	Aliases    []string // modinfo "alias=" fields
	Compressed string   // ".xz", ".zst" or ".gz" for a compressed module, else ""
	Builtin    bool     // built into the kernel image: nothing to load
	Invalid    string   // why the module's info could not be read, if it could not
}

// moduleName returns the canonical name of a kernel module: the kernel
// treats '-' and '_' in module names as the same character.
func moduleName(s string) string {
	return modindex.ModuleName(strings.TrimSpace(s))
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
// dependencies, vermagic string and aliases.
func parseModinfo(data []byte) (moduleInfo, error) {
	var m moduleInfo
	f, err := elf.NewFile(bytes.NewReader(data))
	if err != nil {
		return m, err
	}
	defer f.Close()
	sec := f.Section(".modinfo")
	if sec == nil {
		return m, errors.New("no .modinfo section")
	}
	info, err := sec.Data()
	if err != nil {
		return m, fmt.Errorf("read .modinfo section: %w", err)
	}
	for _, field := range bytes.Split(info, []byte{0}) {
		key, value, ok := strings.Cut(string(field), "=")
		if !ok {
			continue
		}
		switch key {
		case "name":
			m.Name = moduleName(value)
		case "vermagic":
			m.Vermagic = value
		case "alias":
			m.Aliases = append(m.Aliases, value)
		case "depends":
			for _, d := range strings.Split(value, ",") {
				if d = moduleName(d); d != "" {
					m.Depends = append(m.Depends, d)
				}
			}
		}
	}
	return m, nil
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
