// Package boot prepares the guest as its PID 1: it mounts the pseudo
// filesystems, loads the kernel modules the image ships, sets the hostname
// and powers the VM off at the end.
//
// This code runs inside the sandbox VM.
package boot

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cocoon-runtime/cocoon/agent/protocol"
)

// ModulesList is the file in the initramfs that lists the modules to load,
// one path per line, in load order.
const ModulesList = "/etc/cocoon/modules"

// Params are the cocoon.* parameters on the kernel command line.
type Params struct {
	Transport string // "virtio-serial" or protocol.TransportVsock
	// AgentPorts is how many virtio-serial ports the host gave the agent.
	AgentPorts int
	Hostname   string
	Debug      bool
}

// ParseCmdline extracts Params from a kernel command line.
func ParseCmdline(cmdline string) Params {
	p := Params{Transport: "virtio-serial", Hostname: "cocoon", AgentPorts: 1}
	for _, f := range strings.Fields(cmdline) {
		k, v, _ := strings.Cut(f, "=")
		switch k {
		case protocol.ParamTransport:
			p.Transport = v
		case protocol.ParamHostname:
			if validHostname(v) {
				p.Hostname = v
			}
		case protocol.ParamAgentPorts:
			if n, err := strconv.Atoi(v); err == nil && n > 0 && n <= protocol.MaxAgentPorts {
				p.AgentPorts = n
			}
		case protocol.ParamDebug:
			p.Debug = v == "1" || v == "true"
		}
	}
	return p
}

func validHostname(h string) bool {
	if h == "" || len(h) > 64 {
		return false
	}
	for _, r := range h {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '.') {
			return false
		}
	}
	return true
}

type mount struct {
	source, target, fstype string
	flags                  uintptr
	data                   string
	mode                   os.FileMode
}

var mounts = []mount{
	{"proc", "/proc", "proc", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, "", 0o555},
	{"sysfs", "/sys", "sysfs", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, "", 0o555},
	{"devtmpfs", "/dev", "devtmpfs", unix.MS_NOSUID, "mode=0755", 0o755},
	{"devpts", "/dev/pts", "devpts", unix.MS_NOSUID | unix.MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620", 0o755},
	{"tmpfs", "/dev/shm", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777", 0o1777},
	{"tmpfs", "/run", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=0755", 0o755},
	{"cgroup2", "/sys/fs/cgroup", "cgroup2", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, "nsdelegate", 0o555},
}

// LeaveRootfs moves PID 1 off the kernel's initial rootfs without copying
// anything: it bind-mounts / onto a directory, moves that mount over / and
// chroots into it. The root is then an ordinary mount with a parent, which
// pivot_root(2) can leave, so containers get pivot_root instead of the
// weaker chroot. Call it first, before MountAll.
func LeaveRootfs() error {
	const dir = "/.root"
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("leave rootfs: %w", err)
	}
	if err := unix.Mount("/", dir, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("leave rootfs: bind /: %w", err)
	}
	if err := unix.Chdir(dir); err != nil {
		return fmt.Errorf("leave rootfs: %w", err)
	}
	if err := unix.Mount(".", "/", "", unix.MS_MOVE, ""); err != nil {
		return fmt.Errorf("leave rootfs: move to /: %w", err)
	}
	if err := unix.Chroot("."); err != nil {
		return fmt.Errorf("leave rootfs: chroot: %w", err)
	}
	return unix.Chdir("/")
}

// MountAll mounts the pseudo filesystems PID 1 needs. A filesystem that is
// already mounted is left alone.
func MountAll() error {
	for _, m := range mounts {
		if err := os.MkdirAll(m.target, m.mode); err != nil {
			return fmt.Errorf("mkdir %s: %w", m.target, err)
		}
		err := unix.Mount(m.source, m.target, m.fstype, m.flags, m.data)
		if err != nil && !errors.Is(err, unix.EBUSY) {
			return fmt.Errorf("mount %s on %s: %w", m.fstype, m.target, err)
		}
	}
	// /dev/ptmx must point into the devpts instance we mounted.
	os.Remove("/dev/ptmx")
	if err := os.Symlink("pts/ptmx", "/dev/ptmx"); err != nil {
		return fmt.Errorf("link /dev/ptmx: %w", err)
	}
	for _, l := range [][2]string{{"/proc/self/fd", "/dev/fd"}, {"/proc/self/fd/0", "/dev/stdin"}, {"/proc/self/fd/1", "/dev/stdout"}, {"/proc/self/fd/2", "/dev/stderr"}} {
		os.Symlink(l[0], l[1])
	}
	return nil
}

// LoadModules loads the modules listed in the file list, in order, and
// returns the names it loaded. A module the kernel already has is skipped.
func LoadModules(list string, log *slog.Logger) ([]string, error) {
	f, err := os.Open(list)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("open module list: %w", err)
	}
	defer f.Close()
	var loaded []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		path := strings.TrimSpace(sc.Text())
		if path == "" || strings.HasPrefix(path, "#") {
			continue
		}
		start := time.Now()
		if err := loadModule(path); err != nil {
			return loaded, err
		}
		name := strings.TrimSuffix(filepath.Base(path), ".ko")
		loaded = append(loaded, name)
		log.Debug("loaded module", "name", name, "took", time.Since(start))
	}
	return loaded, sc.Err()
}

func loadModule(path string) error {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("load module %s: %w", path, err)
	}
	defer unix.Close(fd)
	if err := unix.FinitModule(fd, "", 0); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("load module %s: %w", path, err)
	}
	return nil
}

// SetHostname sets the guest's hostname.
func SetHostname(name string) error {
	if err := unix.Sethostname([]byte(name)); err != nil {
		return fmt.Errorf("sethostname %q: %w", name, err)
	}
	return nil
}

// AutoOnlineMemory has the kernel online the memory the host hot-plugs
// (virtio-mem blocks) as it appears, in ZONE_MOVABLE as far as the
// kernel's auto-movable policy allows (three times the boot memory), so
// that what a container used can be unplugged again once it is freed,
// while the kernel keeps room for the memory maps of more. A kernel
// without memory hotplug has neither file: nothing to do.
func AutoOnlineMemory() error {
	for _, w := range [][2]string{
		{"/sys/module/memory_hotplug/parameters/online_policy", "auto-movable"},
		{"/sys/devices/system/memory/auto_online_blocks", "online"},
	} {
		if err := os.WriteFile(w[0], []byte(w[1]), 0); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("memory hotplug: %w", err)
		}
	}
	return nil
}

// PowerOff flushes file systems and takes the VM down. It does not return
// on success.
//
// It resets the machine rather than powering it off: Cocoon runs QEMU with
// -no-reboot, so a reset ends QEMU just the same, and a reset works without
// ACPI, which the guest boots without when it needs no CPU or memory
// hotplug.
func PowerOff() error {
	unix.Sync()
	if err := unix.Reboot(unix.LINUX_REBOOT_CMD_RESTART); err != nil {
		return fmt.Errorf("power off: %w", err)
	}
	return nil
}

// SinceBoot is the time since the guest kernel started.
func SinceBoot() time.Duration {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		return 0
	}
	return time.Duration(ts.Nano())
}

// SyncClockFromRTC sets the system clock from the hardware clock when they
// are more than maxDrift apart, and reports the step. A VM restored from a
// saved template resumes with the template's time, while the hardware
// clock QEMU emulates follows the host's.
func SyncClockFromRTC(maxDrift time.Duration) (time.Duration, error) {
	f, err := os.Open("/dev/rtc0")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	rt, err := unix.IoctlGetRTCTime(int(f.Fd()))
	if err != nil {
		return 0, fmt.Errorf("read rtc: %w", err)
	}
	hw := time.Date(int(rt.Year)+1900, time.Month(rt.Mon+1), int(rt.Mday), int(rt.Hour), int(rt.Min), int(rt.Sec), 0, time.UTC)
	step := hw.Sub(time.Now())
	if step > -maxDrift && step < maxDrift {
		return 0, nil
	}
	tv := unix.NsecToTimeval(hw.UnixNano())
	if err := unix.Settimeofday(&tv); err != nil {
		return 0, fmt.Errorf("set clock: %w", err)
	}
	return step, nil
}

// rndReseedCRNG is the RNDRESEEDCRNG ioctl of /dev/random (_IO('R', 7)).
const rndReseedCRNG = 0x5207

// ReseedRandom mixes fresh bytes from the hardware random number generator
// (virtio-rng, fed by the host) into the kernel's pool and reseeds the
// kernel's CRNG at once. A VM restored from a template would otherwise
// hand its containers the template's random numbers until the kernel's
// next scheduled reseed.
func ReseedRandom(timeout time.Duration) error {
	buf := make([]byte, 64)
	read := make(chan error, 1)
	go func() {
		hw, err := os.Open("/dev/hwrng")
		if err != nil {
			read <- err
			return
		}
		defer hw.Close()
		_, err = io.ReadFull(hw, buf)
		read <- err
	}()
	select {
	case err := <-read:
		if err != nil {
			return fmt.Errorf("read hwrng: %w", err)
		}
	case <-time.After(timeout):
		return errors.New("read hwrng: timed out")
	}
	u, err := os.OpenFile("/dev/urandom", os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer u.Close()
	if _, err := u.Write(buf); err != nil {
		return fmt.Errorf("mix into the pool: %w", err)
	}
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, u.Fd(), rndReseedCRNG, 0); errno != 0 {
		return fmt.Errorf("reseed crng: %w", errno)
	}
	return nil
}
