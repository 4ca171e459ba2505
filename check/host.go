package check

import (
	"errors"
	"fmt"
	"github.com/moby/sys/mountinfo"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// deviceSpec is a device node Cocoon uses.
type deviceSpec struct {
	name, path string
	required   bool
	// missing says what the absence costs and how to fix it.
	missing string
}

func deviceSpecs() []deviceSpec {
	return []deviceSpec{
		{"/dev/net/tun", "/dev/net/tun", true, "sandboxes need tap devices: modprobe tun (in a container, pass /dev/net/tun through)"},
		{"/dev/fuse", "/dev/fuse", false, "FUSE-based image mounts will not work: modprobe fuse (in a container, pass /dev/fuse through)"},
		{"vhost-vsock", "/dev/vhost-vsock", false, "agent will use virtio-serial (modprobe vhost_vsock to use vsock)"},
		{"vhost-net", "/dev/vhost-net", false, "networking will use QEMU's slower userspace virtio-net backend (modprobe vhost_net)"},
	}
}

func (h *host) checkDevices() []Result {
	var out []Result
	for _, d := range deviceSpecs() {
		out = append(out, h.checkDevice(d))
	}
	return out
}

func (h *host) checkDevice(d deviceSpec) Result {
	r := Result{Name: d.name, Required: d.required, Status: StatusWarn}
	if d.required {
		r.Status = StatusFail
	}
	p := h.path(d.path)
	fi, err := os.Stat(p)
	switch {
	case errors.Is(err, os.ErrNotExist):
		r.Detail = d.path + " absent: " + d.missing
		return r
	case err != nil:
		r.Detail = fmt.Sprintf("cannot stat %s (%v): %s", d.path, err, d.missing)
		return r
	case fi.Mode()&os.ModeCharDevice == 0:
		r.Detail = d.path + " is not a character device: " + d.missing
		return r
	}
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		r.Detail = fmt.Sprintf("%s exists but cannot be opened (%v): %s", d.path, errors.Unwrap(err), d.missing)
		if errors.Is(err, os.ErrPermission) {
			r.Detail += "; a device cgroup or missing privilege may deny it"
		}
		return r
	}
	f.Close()
	r.Status = StatusOK
	r.Detail = d.path + " present"
	return r
}

// mountEntry is one line of /proc/self/mountinfo, in the parts we need.
type mountEntry struct {
	mountPoint, fsType, superOptions string
}

// parseMountinfo parses mountinfo(5) data with moby/sys/mountinfo (which
// undoes the octal escapes); malformed data yields what parsed before it.
func parseMountinfo(data string) []mountEntry {
	infos, _ := mountinfo.GetMountsFromReader(strings.NewReader(data), nil)
	out := make([]mountEntry, 0, len(infos))
	for _, m := range infos {
		out = append(out, mountEntry{mountPoint: m.Mountpoint, fsType: m.FSType, superOptions: m.VFSOptions})
	}
	return out
}

// v1Controllers are the cgroup v1 controllers that a mount's super options
// can name.
func v1Controllers() []string {
	return []string{"cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "net_cls", "blkio", "perf_event", "net_prio", "hugetlb", "pids", "rdma", "misc"}
}

func (h *host) checkCgroups() Result {
	r := Result{Name: "cgroups", Required: true, Status: StatusFail}
	data, err := os.ReadFile(h.path("/proc/self/mountinfo"))
	if err != nil {
		r.Detail = fmt.Sprintf("cannot read mountinfo: %v", err)
		return r
	}
	var v1 []string // controllers, in mount order
	var v2 []string // mount points
	var v2ctl []string
	for _, m := range parseMountinfo(string(data)) {
		switch m.fsType {
		case "cgroup":
			for _, o := range strings.Split(m.superOptions, ",") {
				if slices.Contains(v1Controllers(), o) && !slices.Contains(v1, o) {
					v1 = append(v1, o)
				}
			}
		case "cgroup2":
			v2 = append(v2, m.mountPoint)
			if b, err := os.ReadFile(h.path(filepath.Join(m.mountPoint, "cgroup.controllers"))); err == nil {
				for _, c := range strings.Fields(string(b)) {
					if !slices.Contains(v2ctl, c) {
						v2ctl = append(v2ctl, c)
					}
				}
			}
		}
	}

	var mode string
	switch {
	case len(v1) > 0 && len(v2) > 0:
		mode = fmt.Sprintf("hybrid: v1 controllers %s; v2 at %s", strings.Join(v1, ","), strings.Join(v2, ","))
	case len(v2) > 0:
		mode = "v2 (unified) at " + strings.Join(v2, ",")
	case len(v1) > 0:
		mode = "v1 (legacy): controllers " + strings.Join(v1, ",")
	default:
		r.Detail = "no cgroup filesystem mounted: mount cgroup2 on /sys/fs/cgroup (or the v1 hierarchies)"
		return r
	}
	if len(v2) > 0 {
		if len(v2ctl) > 0 {
			mode += " (v2 controllers " + strings.Join(v2ctl, ",") + ")"
		} else {
			mode += " (no v2 controllers)"
		}
	}

	var missing []string
	for _, c := range []string{"cpu", "memory", "pids"} {
		if !slices.Contains(v1, c) && !slices.Contains(v2ctl, c) {
			missing = append(missing, c)
		}
	}
	if len(missing) > 0 {
		r.Status = StatusWarn
		r.Detail = mode + "; controllers " + strings.Join(missing, ",") + " not available: sandbox resource limits will not be enforced"
		return r
	}
	r.Status = StatusOK
	r.Detail = mode
	return r
}

func (h *host) checkNetNS() Result {
	r := Result{Name: "network namespaces", Required: true, Status: StatusFail}
	if _, err := os.Stat(h.path("/proc/self/ns/net")); err != nil {
		r.Detail = fmt.Sprintf("/proc/self/ns/net unavailable (%v): the kernel needs CONFIG_NET_NS", err)
		return r
	}
	if b, err := os.ReadFile(h.path("/proc/sys/user/max_net_namespaces")); err == nil {
		if n, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && n == 0 {
			r.Detail = "user.max_net_namespaces is 0: raise it (sysctl -w user.max_net_namespaces=10000)"
			return r
		}
	}
	if err := h.newNetNS(); err != nil {
		r.Detail = fmt.Sprintf("cannot create a network namespace: %v (needs CAP_SYS_ADMIN; in a container, run it privileged)", err)
		return r
	}
	r.Status = StatusOK
	r.Detail = "can create network namespaces"
	return r
}

// tryNewNetNS creates a network namespace on a locked thread and returns
// the thread to the original namespace. If that fails the thread stays
// locked, so the Go runtime ends it instead of reusing it.
func tryNewNetNS() error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := os.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()))
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("open current network namespace: %w", err)
			return
		}
		defer orig.Close()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("unshare(CLONE_NEWNET): %w", err)
			return
		}
		if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("return to the original network namespace: %w", err)
			return // still locked: the thread dies with the goroutine
		}
		runtime.UnlockOSThread()
		errc <- nil
	}()
	return <-errc
}

func (h *host) checkImage(dataDir string) Result {
	r := Result{Name: "guest image"}
	manifest := filepath.Join(dataDir, "images", "current", "manifest.json")
	fi, err := os.Stat(h.path(manifest))
	if err != nil {
		r.Status = StatusWarn
		if errors.Is(err, os.ErrNotExist) {
			r.Detail = manifest + " not found: run `cocoon image build`"
		} else {
			r.Detail = fmt.Sprintf("cannot read %s (%v): run `cocoon image build`", manifest, err)
		}
		return r
	}
	r.Status = StatusOK
	r.Detail = fmt.Sprintf("built %s (%s)", fi.ModTime().Local().Format("2006-01-02 15:04"), manifest)
	return r
}
