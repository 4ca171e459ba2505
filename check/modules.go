package check

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"
)

// moduleSpec is a kernel feature the host network plumbing needs.
type moduleSpec struct {
	name     string // module name, as in /proc/modules
	config   string // Kconfig symbol
	required bool
	purpose  string
}

func moduleSpecs() []moduleSpec {
	return []moduleSpec{
		{"tun", "CONFIG_TUN", true, "tap devices for sandbox NICs"},
		{"veth", "CONFIG_VETH", true, "veth pairs for pod network interfaces"},
		{"bridge", "CONFIG_BRIDGE", false, "the CNI bridge plugin"},
		{"sch_ingress", "CONFIG_NET_SCH_INGRESS", true, "the tc ingress qdisc that steers pod traffic to the VM"},
		{"act_mirred", "CONFIG_NET_ACT_MIRRED", true, "the tc mirred action that steers pod traffic to the VM"},
	}
}

// moduleSources is what the host tells about its kernel's modules. Each
// field is nil when its source is unavailable.
type moduleSources struct {
	release  string
	loaded   map[string]bool   // /proc/modules
	builtin  map[string]bool   // /lib/modules/<release>/modules.builtin
	loadable map[string]bool   // /lib/modules/<release>/modules.dep
	config   map[string]string // symbol -> "y", "m" or "n"
	configAt string            // where config came from
}

// moduleName turns a path such as kernel/net/sched/act_mirred.ko.xz into
// the module name act_mirred.
func moduleName(p string) string {
	base := path.Base(p)
	if i := strings.Index(base, ".ko"); i >= 0 {
		base = base[:i]
	}
	return strings.ReplaceAll(base, "-", "_")
}

func (h *host) moduleSources() moduleSources {
	var s moduleSources
	if b, err := os.ReadFile(h.path("/proc/sys/kernel/osrelease")); err == nil {
		s.release = strings.TrimSpace(string(b))
	}
	if b, err := os.ReadFile(h.path("/proc/modules")); err == nil {
		s.loaded = map[string]bool{}
		for _, line := range strings.Split(string(b), "\n") {
			if f := strings.Fields(line); len(f) > 0 {
				s.loaded[f[0]] = true
			}
		}
	}
	if s.release != "" {
		dir := filepath.Join("/lib/modules", s.release)
		if b, err := os.ReadFile(h.path(filepath.Join(dir, "modules.builtin"))); err == nil {
			s.builtin = map[string]bool{}
			for _, line := range strings.Split(string(b), "\n") {
				if line = strings.TrimSpace(line); line != "" {
					s.builtin[moduleName(line)] = true
				}
			}
		}
		if b, err := os.ReadFile(h.path(filepath.Join(dir, "modules.dep"))); err == nil {
			s.loadable = map[string]bool{}
			for _, line := range strings.Split(string(b), "\n") {
				if mod, _, ok := strings.Cut(line, ":"); ok {
					s.loadable[moduleName(mod)] = true
				}
			}
		}
	}
	s.config, s.configAt = h.kernelConfig(s.release)
	return s
}

// kernelConfig reads the running kernel's configuration from
// /proc/config.gz or /boot/config-<release>.
func (h *host) kernelConfig(release string) (map[string]string, string) {
	if f, err := os.Open(h.path("/proc/config.gz")); err == nil {
		defer f.Close()
		if zr, err := gzip.NewReader(f); err == nil {
			if b, err := io.ReadAll(io.LimitReader(zr, 16<<20)); err == nil {
				return parseKconfig(b), "/proc/config.gz"
			}
		}
	}
	if release != "" {
		p := "/boot/config-" + release
		if b, err := os.ReadFile(h.path(p)); err == nil {
			return parseKconfig(b), p
		}
	}
	return nil, ""
}

// parseKconfig parses CONFIG_X=y|m lines and "# CONFIG_X is not set".
func parseKconfig(b []byte) map[string]string {
	cfg := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if sym, ok := strings.CutPrefix(line, "# "); ok {
			if sym, ok = strings.CutSuffix(sym, " is not set"); ok {
				cfg[sym] = "n"
			}
			continue
		}
		if sym, val, ok := strings.Cut(line, "="); ok && strings.HasPrefix(sym, "CONFIG_") {
			cfg[sym] = val
		}
	}
	return cfg
}

func (h *host) checkModules() []Result {
	src := h.moduleSources()
	var out []Result
	for _, m := range moduleSpecs() {
		out = append(out, h.checkModule(src, m))
	}
	return out
}

func (h *host) checkModule(src moduleSources, m moduleSpec) Result {
	r := Result{Name: "kernel module " + m.name, Required: m.required}
	ok := func(detail string) Result {
		r.Status, r.Detail = StatusOK, detail
		return r
	}
	missing := func(detail string) Result {
		r.Status, r.Detail = StatusFail, detail+": needed for "+m.purpose
		if !m.required {
			r.Status = StatusWarn
		}
		return r
	}
	modDir := "/lib/modules/" + src.release

	if src.loaded[m.name] {
		return ok("loaded")
	}
	if _, err := os.Stat(h.path("/sys/module/" + m.name)); err == nil {
		if _, err := os.Stat(h.path("/sys/module/" + m.name + "/initstate")); err == nil {
			return ok("loaded")
		}
		return ok("built into the kernel")
	}
	if src.builtin[m.name] {
		return ok("built into the kernel (" + modDir + "/modules.builtin)")
	}
	switch v := src.config[m.config]; v {
	case "y":
		return ok(fmt.Sprintf("built into the kernel (%s=y in %s)", m.config, src.configAt))
	case "m":
		if src.loadable == nil || src.loadable[m.name] {
			return ok(fmt.Sprintf("available as a module, loaded on demand (%s=m in %s)", m.config, src.configAt))
		}
		return missing(fmt.Sprintf("%s=m in %s but %s.ko is not installed under %s", m.config, src.configAt, m.name, modDir))
	case "n":
		return missing(fmt.Sprintf("not in this kernel (%s is not set in %s)", m.config, src.configAt))
	}
	if src.loadable[m.name] {
		return ok("available as a module, not loaded yet (modprobe " + m.name + ")")
	}
	if src.builtin != nil || src.loadable != nil {
		return missing(fmt.Sprintf("neither built into kernel %s nor installed under %s", src.release, modDir))
	}
	r.Status = StatusWarn
	r.Detail = fmt.Sprintf("cannot determine: no /proc/modules entry, no /sys/module/%s, no %s/modules.builtin and no kernel config; make sure %s is available (%s)", m.name, modDir, m.name, m.purpose)
	return r
}
