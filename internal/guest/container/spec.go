package container

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/cocoon-runtime/cocoon/agent/protocol"
	"github.com/moby/sys/mountinfo"
	"github.com/opencontainers/runc/libcontainer"
	"github.com/opencontainers/runc/libcontainer/apparmor"
	"github.com/opencontainers/runc/libcontainer/configs"
	"github.com/opencontainers/runc/libcontainer/seccomp"
	"github.com/opencontainers/runc/libcontainer/specconv"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/opencontainers/selinux/go-selinux"
	"golang.org/x/sys/unix"
)

// maxIDLen is the maximum length of a container or exec ID.
const maxIDLen = 64

// cgroupParent is the cgroup, relative to the cgroup v2 root, under which
// containers get their cgroup when the spec does not set cgroupsPath.
const cgroupParent = "/cocoon"

// validateID checks that id matches ^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,63}$.
func validateID(id string) error {
	if id == "" || len(id) > maxIDLen {
		return fmt.Errorf("%w %q: must be 1 to %d characters", ErrInvalidID, id, maxIDLen)
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		alnum := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
		if alnum || i > 0 && (c == '_' || c == '.' || c == '-') {
			continue
		}
		return fmt.Errorf("%w %q: must match ^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,63}$", ErrInvalidID, id)
	}
	return nil
}

// prepareSpec validates a spec received from the host and returns a copy
// adapted to the guest: its root is rootfs, it has at least the required
// namespaces, a cgroup path, and nothing that cannot work in the guest.
func prepareSpec(id string, spec *specs.Spec, rootfs string, terminal bool, log *slog.Logger) (*specs.Spec, error) {
	if spec == nil {
		return nil, errors.New("spec is nil")
	}
	if spec.Process == nil {
		return nil, errors.New("spec has no process")
	}
	if !filepath.IsAbs(rootfs) {
		return nil, fmt.Errorf("rootfs %q is not an absolute path", rootfs)
	}
	if fi, err := os.Stat(rootfs); err != nil {
		return nil, fmt.Errorf("stat rootfs: %w", err)
	} else if !fi.IsDir() {
		return nil, fmt.Errorf("rootfs %q is not a directory", rootfs)
	}

	// Work on a deep copy: the caller's spec stays untouched.
	data, err := json.Marshal(spec)
	if err != nil {
		return nil, fmt.Errorf("copy spec: %w", err)
	}
	s := new(specs.Spec)
	if err := json.Unmarshal(data, s); err != nil {
		return nil, fmt.Errorf("copy spec: %w", err)
	}

	if err := checkProcess(s.Process); err != nil {
		return nil, err
	}
	s.Process.Terminal = terminal
	readonly := s.Root != nil && s.Root.Readonly
	s.Root = &specs.Root{Path: filepath.Clean(rootfs), Readonly: readonly}

	for i, m := range s.Mounts {
		if !path.IsAbs(m.Destination) {
			return nil, fmt.Errorf("mount %d: destination %q is not an absolute path", i, m.Destination)
		}
		if isBind(m) && !filepath.IsAbs(m.Source) {
			return nil, fmt.Errorf("mount %d (%s): bind source %q is not an absolute path", i, m.Destination, m.Source)
		}
	}

	if s.Hooks != nil {
		// Hooks name programs of the host, which the guest does not have.
		log.Warn("ignoring OCI hooks in the spec: they cannot run in the guest", "container", id)
		s.Hooks = nil
	}

	if s.Linux == nil {
		s.Linux = new(specs.Linux)
	}
	l := s.Linux
	for _, ns := range l.Namespaces {
		if ns.Path == "" {
			continue
		}
		if _, err := os.Stat(ns.Path); err != nil {
			return nil, fmt.Errorf("%s namespace: %w", ns.Type, err)
		}
	}
	// Every container gets at least these namespaces of its own.
	required := []specs.LinuxNamespaceType{
		specs.PIDNamespace, specs.MountNamespace, specs.IPCNamespace, specs.UTSNamespace,
	}
	for _, want := range required {
		found := false
		for _, ns := range l.Namespaces {
			found = found || ns.Type == want
		}
		if !found {
			l.Namespaces = append(l.Namespaces, specs.LinuxNamespace{Type: want})
		}
	}

	// A privileged container gets the VM's devices, not the host's.
	if protocol.AllowsAllDevices(l.Resources) {
		if l.Devices, err = vmDevices("/dev"); err != nil {
			return nil, fmt.Errorf("list the VM's devices: %w", err)
		}
	}

	if l.CgroupsPath == "" {
		l.CgroupsPath = cgroupParent + "/" + id
	}
	cp := path.Clean("/" + l.CgroupsPath)
	if cp == "/" || strings.Contains(l.CgroupsPath, "..") {
		return nil, fmt.Errorf("invalid cgroupsPath %q", l.CgroupsPath)
	}
	l.CgroupsPath = cp

	if l.Seccomp != nil && !seccomp.Enabled {
		return nil, fmt.Errorf("spec has a seccomp profile: %w", ErrSeccompUnsupported)
	}
	if l.MountLabel != "" && !selinux.GetEnabled() {
		log.Warn("ignoring SELinux mount label: the guest has no SELinux", "container", id)
		l.MountLabel = ""
	}
	return s, nil
}

// vmSysctls takes the network sysctls out of a container that shares the
// VM's network (it has no network namespace of its own): the VM is the
// pod's network namespace, so they are set on the VM's own network stack,
// which libcontainer would refuse to do from inside the container.
func vmSysctls(l *specs.Linux) map[string]string {
	for _, ns := range l.Namespaces {
		if ns.Type == specs.NetworkNamespace {
			return nil
		}
	}
	var out map[string]string
	for k, v := range l.Sysctl {
		if strings.HasPrefix(k, "net.") {
			if out == nil {
				out = map[string]string{}
			}
			out[k] = v
			delete(l.Sysctl, k)
		}
	}
	return out
}

// validSysctl matches a sysctl name: dotted lowercase words.
var validSysctl = regexp.MustCompile(`^[a-z0-9_]+(\.[a-z0-9_-]+)+$`)

// applySysctls writes sysctls to the guest's /proc/sys.
func applySysctls(sysctls map[string]string) error {
	for k, v := range sysctls {
		if !validSysctl.MatchString(k) {
			return fmt.Errorf("invalid sysctl name %q", k)
		}
		if err := os.WriteFile("/proc/sys/"+strings.ReplaceAll(k, ".", "/"), []byte(v), 0); err != nil {
			return fmt.Errorf("sysctl %s=%s: %w", k, v, err)
		}
	}
	return nil
}

// checkProcess validates a process from the host and drops the security
// labels of modules that the guest kernel does not run.
func checkProcess(p *specs.Process) error {
	if len(p.Args) == 0 || p.Args[0] == "" {
		return errors.New("process has no args")
	}
	if p.Cwd == "" {
		p.Cwd = "/"
	}
	if !path.IsAbs(p.Cwd) {
		return fmt.Errorf("process cwd %q is not an absolute path", p.Cwd)
	}
	if p.ApparmorProfile != "" && !apparmor.IsEnabled() {
		p.ApparmorProfile = ""
	}
	if p.SelinuxLabel != "" && !selinux.GetEnabled() {
		p.SelinuxLabel = ""
	}
	return nil
}

// isBind reports whether m is a bind mount.
func isBind(m specs.Mount) bool {
	if m.Type == "bind" {
		return true
	}
	for _, o := range m.Options {
		if o == "bind" || o == "rbind" {
			return true
		}
	}
	return false
}

// newConfig converts a spec prepared by prepareSpec to a libcontainer
// configuration.
//
// When the guest runs from its initramfs, pivot_root(2) cannot leave that
// root, so the container's root is moved over / and chrooted into instead,
// as with "runc --no-pivot". libcontainer hides the guest's /proc and /sys
// from the container then; the VM stays the isolation boundary. A
// [r]private rootfsPropagation, which is refused without pivot_root,
// becomes rslave.
func newConfig(id string, s *specs.Spec, log *slog.Logger) (*configs.Config, error) {
	noPivot := rootIsInitramfs()
	if noPivot {
		switch s.Linux.RootfsPropagation {
		case "private", "rprivate":
			log.Debug("rootfsPropagation "+s.Linux.RootfsPropagation+" is rslave in the initramfs guest", "container", id)
			s.Linux.RootfsPropagation = "rslave"
		}
	}
	cfg, err := specconv.CreateLibcontainerConfig(&specconv.CreateOpts{
		CgroupName:  id,
		Spec:        s,
		NoPivotRoot: noPivot,
	})
	if err != nil {
		return nil, fmt.Errorf("convert spec: %w", err)
	}
	// specconv records the working directory as the bundle; there is no
	// bundle directory in the guest, so name the directory holding rootfs.
	for i, label := range cfg.Labels {
		if strings.HasPrefix(label, "bundle=") {
			cfg.Labels[i] = "bundle=" + filepath.Dir(s.Root.Path)
		}
	}
	if cfg.AppArmorProfile != "" && !apparmor.IsEnabled() {
		cfg.AppArmorProfile = ""
	}
	if cfg.ProcessLabel != "" && !selinux.GetEnabled() {
		cfg.ProcessLabel = ""
	}
	return cfg, nil
}

// libcontainerProcess converts a spec process to a libcontainer process,
// without its IO.
func libcontainerProcess(p *specs.Process, init bool) (*libcontainer.Process, error) {
	lp := &libcontainer.Process{
		Args:            p.Args,
		Env:             p.Env,
		UID:             int(p.User.UID),
		GID:             int(p.User.GID),
		Cwd:             p.Cwd,
		Label:           p.SelinuxLabel,
		AppArmorProfile: p.ApparmorProfile,
		NoNewPrivileges: &p.NoNewPrivileges,
		Scheduler:       p.Scheduler,
		IOPriority:      p.IOPriority,
		Init:            init,
	}
	for _, g := range p.User.AdditionalGids {
		lp.AdditionalGroups = append(lp.AdditionalGroups, int(g))
	}
	if c := p.Capabilities; c != nil {
		lp.Capabilities = &configs.Capabilities{
			Bounding:    c.Bounding,
			Effective:   c.Effective,
			Inheritable: c.Inheritable,
			Permitted:   c.Permitted,
			Ambient:     c.Ambient,
		}
	}
	for _, r := range p.Rlimits {
		typ, ok := rlimitType(r.Type)
		if !ok {
			return nil, fmt.Errorf("unknown rlimit %q", r.Type)
		}
		lp.Rlimits = append(lp.Rlimits, configs.Rlimit{Type: typ, Hard: r.Hard, Soft: r.Soft})
	}
	aff, err := configs.ConvertCPUAffinity(p.ExecCPUAffinity)
	if err != nil {
		return nil, fmt.Errorf("exec CPU affinity: %w", err)
	}
	lp.CPUAffinity = aff
	return lp, nil
}

// rlimitType maps an OCI rlimit name to its resource number.
func rlimitType(name string) (int, bool) {
	switch name {
	case "RLIMIT_AS":
		return unix.RLIMIT_AS, true
	case "RLIMIT_CORE":
		return unix.RLIMIT_CORE, true
	case "RLIMIT_CPU":
		return unix.RLIMIT_CPU, true
	case "RLIMIT_DATA":
		return unix.RLIMIT_DATA, true
	case "RLIMIT_FSIZE":
		return unix.RLIMIT_FSIZE, true
	case "RLIMIT_LOCKS":
		return unix.RLIMIT_LOCKS, true
	case "RLIMIT_MEMLOCK":
		return unix.RLIMIT_MEMLOCK, true
	case "RLIMIT_MSGQUEUE":
		return unix.RLIMIT_MSGQUEUE, true
	case "RLIMIT_NICE":
		return unix.RLIMIT_NICE, true
	case "RLIMIT_NOFILE":
		return unix.RLIMIT_NOFILE, true
	case "RLIMIT_NPROC":
		return unix.RLIMIT_NPROC, true
	case "RLIMIT_RSS":
		return unix.RLIMIT_RSS, true
	case "RLIMIT_RTPRIO":
		return unix.RLIMIT_RTPRIO, true
	case "RLIMIT_RTTIME":
		return unix.RLIMIT_RTTIME, true
	case "RLIMIT_SIGPENDING":
		return unix.RLIMIT_SIGPENDING, true
	case "RLIMIT_STACK":
		return unix.RLIMIT_STACK, true
	}
	return 0, false
}

// rootIsInitramfs reports whether the root of the calling process's mount
// namespace is the kernel's initial rootfs mount, which pivot_root(2)
// refuses to move. The agent normally leaves it at boot (see
// boot.LeaveRootfs): its root is then a bind mount of the rootfs, of the
// same type but with a parent mount.
func rootIsInitramfs() bool {
	infos, err := mountinfo.GetMounts(func(i *mountinfo.Info) (skip, stop bool) {
		return i.Mountpoint != "/", false
	})
	if err != nil || len(infos) == 0 {
		return false
	}
	// Only the last mount on / is visible. The initial rootfs is the
	// bottom of the mount tree, its own parent; a bind mount of it has a
	// parent (measured in the guest: "1 1 ... rootfs" before, "21 1 ...
	// rootfs" after boot.LeaveRootfs).
	root := infos[len(infos)-1]
	return root.FSType == "rootfs" && root.Parent == root.ID
}
