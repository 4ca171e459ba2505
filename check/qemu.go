package check

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"github.com/cocoon-runtime/cocoon/internal/storage"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	"github.com/cocoon-runtime/cocoon/hypervisor"
)

// Oldest QEMU Cocoon supports.
const minQEMUMajor, minQEMUMinor = 6, 2

func (h *host) checkRoot() Result {
	r := Result{Name: "root", Required: true}
	if uid := h.euid(); uid != 0 {
		r.Status = StatusFail
		r.Detail = fmt.Sprintf("running as uid %d: cocoon needs root to create tap devices, network namespaces and cgroups; run it with sudo", uid)
		return r
	}
	r.Status = StatusOK
	r.Detail = "running as root"
	return r
}

// executable reports whether p (a host path) is an executable regular file.
func (h *host) executable(p string) error {
	fi, err := os.Stat(h.path(p))
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() || fi.Mode().Perm()&0o111 == 0 {
		return fmt.Errorf("%s is not an executable file", p)
	}
	return nil
}

// findBinary resolves explicit (a path, or a name in PATH) if set, else the
// first executable candidate, else name in PATH.
func (h *host) findBinary(explicit string, candidates []string, name string) (string, error) {
	if explicit != "" {
		if strings.Contains(explicit, "/") {
			if err := h.executable(explicit); err != nil {
				return "", err
			}
			return explicit, nil
		}
		return h.lookPath(explicit)
	}
	for _, c := range candidates {
		if h.executable(c) == nil {
			return c, nil
		}
	}
	return h.lookPath(name)
}

// firstLine returns the first non-empty line of out, trimmed.
func firstLine(out []byte) string {
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		if l := strings.TrimSpace(sc.Text()); l != "" {
			return l
		}
	}
	return ""
}

// commandFailure describes a helper command that failed, with its output.
func commandFailure(cmdline string, err error, out []byte) string {
	msg := fmt.Sprintf("`%s` failed: %v", cmdline, err)
	if l := firstLine(out); l != "" {
		msg += ": " + l
	}
	return msg
}

// qemuInfo is what the qemu check learned, for the checks that need QEMU.
type qemuInfo struct {
	path    string // empty if QEMU cannot be run
	version string
	result  Result
}

var qemuVersionRE = regexp.MustCompile(`QEMU emulator version (\d+)\.(\d+)(?:\.(\d+))?`)

// parseQEMUVersion extracts major, minor and the full version string from
// `qemu-system-x86_64 --version` output.
func parseQEMUVersion(out []byte) (major, minor int, version string, ok bool) {
	m := qemuVersionRE.FindSubmatch(out)
	if m == nil {
		return 0, 0, "", false
	}
	major, _ = strconv.Atoi(string(m[1]))
	minor, _ = strconv.Atoi(string(m[2]))
	version = string(m[1]) + "." + string(m[2])
	if len(m[3]) > 0 {
		version += "." + string(m[3])
	}
	return major, minor, version, true
}

func (h *host) checkQEMU(ctx context.Context, qemu string) qemuInfo {
	r := Result{Name: "qemu", Required: true, Status: StatusFail}
	path, err := h.findBinary(qemu, nil, DefaultQEMUPath())
	if err != nil {
		r.Detail = fmt.Sprintf("%s not found (%v): install QEMU %d.%d or newer (Debian/Ubuntu: apt-get install qemu-system-x86) or pass --qemu PATH",
			qemu, err, minQEMUMajor, minQEMUMinor)
		return qemuInfo{result: r}
	}
	out, err := h.run(ctx, path, "--version")
	if err != nil {
		r.Detail = commandFailure(path+" --version", err, out)
		return qemuInfo{result: r}
	}
	major, minor, version, ok := parseQEMUVersion(out)
	if !ok {
		r.Status = StatusWarn
		r.Detail = fmt.Sprintf("%s: cannot parse a version from %q; Cocoon needs QEMU %d.%d or newer", path, firstLine(out), minQEMUMajor, minQEMUMinor)
		return qemuInfo{path: path, result: r}
	}
	if major < minQEMUMajor || major == minQEMUMajor && minor < minQEMUMinor {
		r.Detail = fmt.Sprintf("version %s at %s is too old: Cocoon needs QEMU %d.%d or newer", version, path, minQEMUMajor, minQEMUMinor)
		// Still usable for the other checks' sake.
		return qemuInfo{path: path, version: version, result: r}
	}
	r.Status = StatusOK
	r.Detail = fmt.Sprintf("version %s at %s", version, path)
	return qemuInfo{path: path, version: version, result: r}
}

// helpList parses the output of `-machine help` or `-accel help`: the first
// word of each line, mapped to the rest of the line.
func helpList(out []byte) map[string]string {
	items := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == ' ' || line[0] == '\t' {
			continue
		}
		f := strings.Fields(line)
		if len(f) == 0 || strings.HasSuffix(line, ":") {
			continue // a header such as "Supported machines are:"
		}
		items[f[0]] = strings.TrimSpace(strings.TrimPrefix(line, f[0]))
	}
	return items
}

func (h *host) checkMachines(ctx context.Context, q qemuInfo) []Result {
	q35 := Result{Name: "machine q35", Required: true, Status: StatusFail}
	micro := Result{Name: "machine microvm", Status: StatusWarn}
	if q.path == "" {
		q35.Detail = "not checked: QEMU cannot be run (see the qemu check)"
		micro.Detail = q35.Detail
		return []Result{q35, micro}
	}
	out, err := h.run(ctx, q.path, "-machine", "help")
	if err != nil {
		q35.Detail = commandFailure(q.path+" -machine help", err, out)
		micro.Detail = q35.Detail
		return []Result{q35, micro}
	}
	machines := helpList(out)
	if desc, ok := machines["q35"]; ok {
		q35.Status = StatusOK
		q35.Detail = "supported: " + desc
	} else {
		q35.Detail = q.path + " does not support machine type q35: install a full qemu-system-x86 build"
	}
	if desc, ok := machines["microvm"]; ok {
		micro.Status = StatusOK
		micro.Detail = "supported: " + desc
	} else {
		micro.Detail = q.path + " does not support machine type microvm: sandboxes must use q35"
	}
	return []Result{q35, micro}
}

// checkKVM reports whether KVM can be used and why, and whether sandboxes
// will run under TCG (with forced KVM they never do, even if KVM fails).
func (h *host) checkKVM(ctx context.Context, opts Options, q qemuInfo) (r Result, usesTCG bool) {
	r = Result{Name: "kvm"}
	cfg := hypervisor.AccelProbe{
		Binary:   opts.QEMUPath,
		Kernel:   filepath.Join(opts.DataDir, "images", "current", "vmlinux"),
		CacheDir: opts.CacheDir,
	}
	if q.path != "" {
		cfg.Binary = q.path
	}
	switch opts.Accelerator {
	case hypervisor.AccelTCG:
		r.Status = StatusOK
		r.Detail = "not used: accelerator forced to tcg"
		return r, true
	case hypervisor.AccelKVM:
		r.Required = true
		res, err := h.resolveAccel(ctx, hypervisor.AccelKVM, cfg)
		if err != nil {
			r.Status = StatusFail
			r.Detail = err.Error() + "; or use --accel auto to fall back to TCG" + h.kvmHint()
			return r, false
		}
		// Forced KVM skips the boot probe at run time; run it here anyway so
		// that a KVM that only looks usable is reported.
		r.Status = StatusOK
		r.Detail = "usable: " + res.Reason
		probe, err := h.resolveAccel(ctx, hypervisor.AccelAuto, cfg)
		switch {
		case err != nil:
			r.Detail += "; boot probe failed: " + err.Error()
		case probe.Accelerator == hypervisor.AccelKVM:
			r.Detail += "; boot probe: " + probe.Reason
		case probe.NoKernel:
			r.Detail += "; boot probe skipped: " + probe.Reason
		default:
			r.Status = StatusWarn
			r.Detail = "forced, and passes the device checks, but the boot probe says: " + probe.Reason +
				"; sandboxes may crash or crawl under it: use --accel auto" + h.kvmHint()
		}
		return r, false
	}
	res, err := h.resolveAccel(ctx, hypervisor.AccelAuto, cfg)
	if err != nil {
		r.Status = StatusWarn
		r.Detail = "could not probe KVM, sandboxes will use TCG: " + err.Error()
		return r, true
	}
	cached := ""
	if res.Cached {
		cached = fmt.Sprintf(" (cached probe from %s)", res.CheckedAt.Local().Format("2006-01-02 15:04:05"))
	}
	if res.Accelerator == hypervisor.AccelKVM {
		r.Status = StatusOK
		r.Detail = "usable: " + res.Reason + cached
		return r, false
	}
	r.Status = StatusWarn
	r.Detail = "not usable, sandboxes will use TCG (slower): " + res.Reason + cached + h.kvmHint()
	return r, true
}

// kvmHint names a host KVM implementation known to lack hardware support.
func (h *host) kvmHint() string {
	if _, err := os.Stat(h.path("/sys/module/kvm_pvm")); err == nil {
		return " [host KVM is kvm_pvm, which runs guests without hardware virtualization]"
	}
	return ""
}

// checkTCG checks QEMU has TCG; required says whether sandboxes will use it.
func (h *host) checkTCG(ctx context.Context, q qemuInfo, required bool, accelerator hypervisor.Accelerator) Result {
	r := Result{Name: "tcg", Required: required, Status: StatusFail}
	if q.path == "" {
		r.Detail = "not checked: QEMU cannot be run (see the qemu check)"
		return r
	}
	out, err := h.run(ctx, q.path, "-accel", "help")
	if err != nil {
		r.Detail = commandFailure(q.path+" -accel help", err, out)
		return r
	}
	if _, ok := helpList(out)["tcg"]; !ok {
		r.Detail = q.path + " was built without TCG"
		if required {
			r.Detail += " and KVM is not usable: install a QEMU build with TCG"
		}
		return r
	}
	r.Status = StatusOK
	if required {
		r.Detail = "available: sandboxes will run under TCG (software emulation, slower than KVM)"
	} else {
		r.Detail = "available (not needed: sandboxes use KVM)"
		if accelerator == hypervisor.AccelKVM {
			r.Detail = "available (not used: accelerator forced to kvm)"
		}
	}
	return r
}

var versionRE = regexp.MustCompile(`\d+\.\d+(?:\.\d+)?`)

func (h *host) checkVirtiofsd(ctx context.Context, explicit string) Result {
	r := Result{Name: "virtiofsd", Required: true, Status: StatusFail}
	path, err := h.findBinary(explicit, storage.VirtiofsdCandidates(), "virtiofsd")
	if err != nil {
		where := strings.Join(storage.VirtiofsdCandidates(), ", ") + " or PATH"
		if explicit != "" {
			where = explicit
		}
		r.Detail = fmt.Sprintf("not found in %s (%v): install virtiofsd (Debian 12 ships it in qemu-system-common as /usr/lib/qemu/virtiofsd; newer releases: apt-get install virtiofsd)", where, err)
		return r
	}
	out, err := h.run(ctx, path, "--version")
	if err != nil {
		r.Status = StatusWarn
		r.Detail = fmt.Sprintf("found at %s, but %s", path, commandFailure(path+" --version", err, out))
		return r
	}
	v := versionRE.Find([]byte(firstLine(out)))
	if v == nil {
		r.Status = StatusWarn
		r.Detail = fmt.Sprintf("found at %s, version unknown (%q)", path, firstLine(out))
		return r
	}
	r.Status = StatusOK
	r.Detail = fmt.Sprintf("version %s at %s", v, path)
	return r
}
