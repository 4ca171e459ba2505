package check

import (
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cocoon-runtime/cocoon/hypervisor"
)

const (
	fakeRelease = "6.1.0-test-amd64"
	fakeQEMU    = "/usr/bin/qemu-system-x86_64"
	fakeVirtio  = "/usr/lib/qemu/virtiofsd"

	qemuVersionOut = "QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)\nCopyright (c) 2003-2022 Fabrice Bellard and the QEMU Project developers\n"
	machineHelpOut = `Supported machines are:
microvm              microvm (i386)
pc                   Standard PC (i440FX + PIIX, 1996) (alias of pc-i440fx-7.2)
q35                  Standard PC (Q35 + ICH9, 2009) (alias of pc-q35-7.2)
pc-q35-7.2           Standard PC (Q35 + ICH9, 2009)
none                 empty machine
`
	accelHelpOut    = "Accelerators supported in QEMU binary:\ntcg\nkvm\n"
	virtiofsdOut    = "virtiofsd version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)\nCopyright (c) 2003-2022 Fabrice Bellard and the QEMU Project developers\nusing FUSE kernel interface version 7.36\n"
	mountinfoV2     = "24 1 259:1 / / rw,relatime - ext4 /dev/root rw\n30 24 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate\n"
	mountinfoV1     = "24 1 259:1 / / rw - ext4 /dev/root rw\n31 24 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw,mode=755\n32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n39 31 0:36 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids\n40 31 0:37 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,xattr,name=systemd\n"
	mountinfoHybrid = mountinfoV1 + "41 31 0:38 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n"
)

// fakeHost builds a host whose files live under a temporary root and whose
// commands, accelerator probe and namespace creation are canned.
type fakeHost struct {
	t        *testing.T
	root     string
	uid      int
	commands map[string]string // "path args..." -> output
	failing  map[string]error
	accel    func(want hypervisor.Accelerator, cfg hypervisor.AccelProbe) (hypervisor.AccelChoice, error)
	resolves []hypervisor.Accelerator
	lastCfg  hypervisor.AccelProbe
	netnsErr error
}

func newFakeHost(t *testing.T) *fakeHost {
	t.Helper()
	f := &fakeHost{
		t:    t,
		root: t.TempDir(),
		commands: map[string]string{
			fakeQEMU + " --version":     qemuVersionOut,
			fakeQEMU + " -machine help": machineHelpOut,
			fakeQEMU + " -accel help":   accelHelpOut,
			fakeVirtio + " --version":   virtiofsdOut,
		},
		failing: map[string]error{},
		accel: func(want hypervisor.Accelerator, cfg hypervisor.AccelProbe) (hypervisor.AccelChoice, error) {
			return hypervisor.AccelChoice{Accelerator: hypervisor.AccelKVM, Reason: "KVM works: guest kernel reached panic in 0.31s"}, nil
		},
	}
	f.write("/proc/self/mountinfo", mountinfoV2)
	f.write("/sys/fs/cgroup/cgroup.controllers", "cpuset cpu io memory hugetlb pids rdma misc\n")
	f.write("/proc/sys/kernel/osrelease", fakeRelease+"\n")
	f.write("/proc/self/ns/net", "")
	f.write("/proc/sys/user/max_net_namespaces", "63405\n")
	f.write("/proc/modules", "tun 61440 2 vhost_net, Live 0x0000000000000000\nact_mirred 28672 0 - Live 0x0\n")
	f.write("/lib/modules/"+fakeRelease+"/modules.builtin", "kernel/drivers/net/veth.ko\nkernel/net/sched/sch_ingress.ko\n")
	f.write("/lib/modules/"+fakeRelease+"/modules.dep", "kernel/net/bridge/bridge.ko.xz: kernel/net/802/stp.ko.xz kernel/net/llc/llc.ko.xz\n")
	f.write("/var/lib/cocoon/images/current/manifest.json", "{}\n")
	f.exe(fakeQEMU)
	f.exe(fakeVirtio)
	f.device("/dev/net/tun")
	f.device("/dev/fuse")
	f.device("/dev/vhost-vsock")
	f.device("/dev/vhost-net")
	return f
}

func (f *fakeHost) write(p, data string) {
	f.t.Helper()
	full := filepath.Join(f.root, p)
	if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
		f.t.Fatal(err)
	}
	if err := os.WriteFile(full, []byte(data), 0o644); err != nil {
		f.t.Fatal(err)
	}
}

func (f *fakeHost) exe(p string) {
	f.t.Helper()
	f.write(p, "#!/bin/sh\n")
	if err := os.Chmod(filepath.Join(f.root, p), 0o755); err != nil {
		f.t.Fatal(err)
	}
}

// device makes p a character device: a symlink to /dev/null.
func (f *fakeHost) device(p string) {
	f.t.Helper()
	full := filepath.Join(f.root, p)
	if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
		f.t.Fatal(err)
	}
	if err := os.Symlink("/dev/null", full); err != nil {
		f.t.Fatal(err)
	}
}

func (f *fakeHost) remove(p string) {
	f.t.Helper()
	if err := os.RemoveAll(filepath.Join(f.root, p)); err != nil {
		f.t.Fatal(err)
	}
}

func (f *fakeHost) host() *host {
	return &host{
		root: f.root,
		euid: func() int { return f.uid },
		lookPath: func(file string) (string, error) {
			for _, dir := range []string{"/usr/bin", "/usr/sbin"} {
				p := filepath.Join(dir, file)
				if fi, err := os.Stat(filepath.Join(f.root, p)); err == nil && fi.Mode()&0o111 != 0 {
					return p, nil
				}
			}
			return "", &exec.Error{Name: file, Err: exec.ErrNotFound}
		},
		run: func(_ context.Context, name string, args ...string) ([]byte, error) {
			key := strings.Join(append([]string{name}, args...), " ")
			if err := f.failing[key]; err != nil {
				return []byte("boom\n"), err
			}
			out, ok := f.commands[key]
			if !ok {
				f.t.Errorf("unexpected command %q", key)
				return nil, errors.New("unexpected command")
			}
			return []byte(out), nil
		},
		resolveAccel: func(_ context.Context, want hypervisor.Accelerator, cfg hypervisor.AccelProbe) (hypervisor.AccelChoice, error) {
			f.resolves = append(f.resolves, want)
			f.lastCfg = cfg
			return f.accel(want, cfg)
		},
		newNetNS: func() error { return f.netnsErr },
	}
}

func (f *fakeHost) run(opts Options) Report {
	opts.host = f.host()
	return Run(context.Background(), opts)
}

func find(t *testing.T, rep Report, name string) Result {
	t.Helper()
	for _, r := range rep.Results {
		if r.Name == name {
			return r
		}
	}
	t.Fatalf("no %q check in %+v", name, rep.Results)
	return Result{}
}

func expect(t *testing.T, rep Report, name string, status Status, detailHas ...string) Result {
	t.Helper()
	r := find(t, rep, name)
	if r.Status != status {
		t.Errorf("%s: status %s, want %s (detail %q)", name, r.Status, status, r.Detail)
	}
	for _, s := range detailHas {
		if !strings.Contains(r.Detail, s) {
			t.Errorf("%s: detail %q lacks %q", name, r.Detail, s)
		}
	}
	return r
}

func TestHealthyHost(t *testing.T) {
	f := newFakeHost(t)
	rep := f.run(Options{})
	if !rep.CanRun || len(rep.Failed()) != 0 {
		t.Fatalf("healthy host cannot run: %+v", rep.Failed())
	}
	want := []string{"root", "qemu", "machine q35", "machine microvm", "kvm", "tcg", "virtiofsd",
		"/dev/net/tun", "/dev/fuse", "vhost-vsock", "vhost-net", "cgroups", "network namespaces",
		"kernel module tun", "kernel module veth", "kernel module bridge", "kernel module sch_ingress",
		"kernel module act_mirred", "guest image"}
	var got []string
	for _, r := range rep.Results {
		got = append(got, r.Name)
		if r.Status != StatusOK {
			t.Errorf("%s: %s: %s", r.Name, r.Status, r.Detail)
		}
		if r.Detail == "" {
			t.Errorf("%s has no detail", r.Name)
		}
	}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("checks %q, want %q", got, want)
	}
	expect(t, rep, "qemu", StatusOK, "7.2.22", fakeQEMU)
	expect(t, rep, "virtiofsd", StatusOK, "7.2.22", fakeVirtio)
	expect(t, rep, "kvm", StatusOK, "KVM works")
	expect(t, rep, "tcg", StatusOK, "not needed")
	expect(t, rep, "cgroups", StatusOK, "v2 (unified) at /sys/fs/cgroup", "memory")
	expect(t, rep, "kernel module tun", StatusOK, "loaded")
	expect(t, rep, "kernel module veth", StatusOK, "built into the kernel")
	expect(t, rep, "kernel module bridge", StatusOK, "module")
	if len(f.resolves) != 1 || f.resolves[0] != hypervisor.AccelAuto {
		t.Errorf("accelerator resolved as %v, want one auto probe", f.resolves)
	}
	if f.lastCfg.Kernel != "/var/lib/cocoon/images/current/vmlinux" || f.lastCfg.CacheDir != "/var/lib/cocoon/cache" || f.lastCfg.Binary != fakeQEMU {
		t.Errorf("probe config %+v", f.lastCfg)
	}
}

func TestNotRoot(t *testing.T) {
	f := newFakeHost(t)
	f.uid = 1000
	rep := f.run(Options{})
	expect(t, rep, "root", StatusFail, "uid 1000", "sudo")
	if rep.CanRun || len(rep.Failed()) != 1 || rep.Failed()[0].Name != "root" {
		t.Fatalf("CanRun=%v failed=%+v, want only root failed", rep.CanRun, rep.Failed())
	}
}

func TestQEMUVersions(t *testing.T) {
	for _, tc := range []struct {
		out    string
		status Status
		detail string
	}{
		{"QEMU emulator version 6.1.1\n", StatusFail, "too old"},
		{"QEMU emulator version 5.2.0 (Debian 1:5.2+dfsg-11)\n", StatusFail, "too old"},
		{"QEMU emulator version 6.2.0 (Debian 1:6.2+dfsg-2ubuntu6)\n", StatusOK, "6.2.0"},
		{"QEMU emulator version 10.0\n", StatusOK, "10.0"},
		{"QEMU emulator version 8.2.2\n", StatusOK, "8.2.2"},
		{"something else\n", StatusWarn, "cannot parse"},
	} {
		f := newFakeHost(t)
		f.commands[fakeQEMU+" --version"] = tc.out
		rep := f.run(Options{})
		expect(t, rep, "qemu", tc.status, tc.detail)
		if got := rep.CanRun; got != (tc.status != StatusFail) {
			t.Errorf("qemu %q: CanRun=%v", tc.out, got)
		}
	}
}

func TestQEMUMissing(t *testing.T) {
	f := newFakeHost(t)
	f.remove(fakeQEMU)
	f.accel = func(hypervisor.Accelerator, hypervisor.AccelProbe) (hypervisor.AccelChoice, error) {
		return hypervisor.AccelChoice{}, errors.New("probe kvm: find qemu: not found")
	}
	rep := f.run(Options{})
	expect(t, rep, "qemu", StatusFail, "not found", "apt-get install qemu-system-x86")
	expect(t, rep, "machine q35", StatusFail, "not checked")
	expect(t, rep, "kvm", StatusWarn, "could not probe")
	tcg := expect(t, rep, "tcg", StatusFail, "not checked")
	if !tcg.Required {
		t.Error("tcg not required although KVM is not usable")
	}
	if rep.CanRun {
		t.Fatal("CanRun without qemu")
	}

	f = newFakeHost(t)
	rep = f.run(Options{QEMUPath: "/opt/qemu/bin/qemu-system-x86_64"})
	expect(t, rep, "qemu", StatusFail, "/opt/qemu/bin/qemu-system-x86_64")

	f = newFakeHost(t)
	f.failing[fakeQEMU+" --version"] = errors.New("exit status 1")
	rep = f.run(Options{})
	expect(t, rep, "qemu", StatusFail, "--version` failed: exit status 1: boom")
}

func TestMachines(t *testing.T) {
	f := newFakeHost(t)
	f.commands[fakeQEMU+" -machine help"] = "Supported machines are:\npc                   Standard PC\nq35                  Standard PC (Q35 + ICH9, 2009)\n"
	rep := f.run(Options{})
	expect(t, rep, "machine q35", StatusOK, "Q35")
	expect(t, rep, "machine microvm", StatusWarn, "does not support machine type microvm")
	if !rep.CanRun {
		t.Error("missing microvm made the host unusable")
	}

	f = newFakeHost(t)
	f.commands[fakeQEMU+" -machine help"] = "Supported machines are:\nmicrovm              microvm (i386)\n"
	rep = f.run(Options{})
	expect(t, rep, "machine q35", StatusFail, "does not support machine type q35")
	if rep.CanRun {
		t.Error("CanRun without q35")
	}
}

func TestKVM(t *testing.T) {
	emulated := hypervisor.AccelChoice{Accelerator: hypervisor.AccelTCG, Reason: "KVM is emulated: guest hit 'KVM internal error' after 0.40s"}

	t.Run("auto unusable", func(t *testing.T) {
		f := newFakeHost(t)
		f.accel = func(hypervisor.Accelerator, hypervisor.AccelProbe) (hypervisor.AccelChoice, error) {
			return emulated, nil
		}
		f.write("/sys/module/kvm_pvm/parameters/x", "")
		rep := f.run(Options{DataDir: "/data"})
		expect(t, rep, "kvm", StatusWarn, "sandboxes will use TCG", emulated.Reason, "kvm_pvm")
		if tcg := expect(t, rep, "tcg", StatusOK, "sandboxes will run under TCG"); !tcg.Required {
			t.Error("tcg not required though it will be used")
		}
		if !rep.CanRun {
			t.Errorf("unusable KVM in auto mode blocks the host: %+v", rep.Failed())
		}
		if f.lastCfg.Kernel != "/data/images/current/vmlinux" || f.lastCfg.CacheDir != "/data/cache" {
			t.Errorf("probe config %+v", f.lastCfg)
		}
	})

	t.Run("auto cached", func(t *testing.T) {
		f := newFakeHost(t)
		f.accel = func(hypervisor.Accelerator, hypervisor.AccelProbe) (hypervisor.AccelChoice, error) {
			r := emulated
			r.Cached, r.CheckedAt = true, time.Date(2026, 1, 2, 3, 4, 5, 0, time.Local)
			return r, nil
		}
		rep := f.run(Options{CacheDir: "/elsewhere"})
		expect(t, rep, "kvm", StatusWarn, "cached probe from 2026-01-02 03:04:05")
		if f.lastCfg.CacheDir != "/elsewhere" {
			t.Errorf("cache dir %q", f.lastCfg.CacheDir)
		}
	})

	t.Run("forced tcg", func(t *testing.T) {
		f := newFakeHost(t)
		rep := f.run(Options{Accelerator: hypervisor.AccelTCG})
		expect(t, rep, "kvm", StatusOK, "forced to tcg")
		if tcg := find(t, rep, "tcg"); !tcg.Required {
			t.Error("tcg not required when forced")
		}
		if len(f.resolves) != 0 {
			t.Errorf("resolved %v for forced tcg", f.resolves)
		}
	})

	t.Run("forced kvm unusable", func(t *testing.T) {
		f := newFakeHost(t)
		f.accel = func(want hypervisor.Accelerator, _ hypervisor.AccelProbe) (hypervisor.AccelChoice, error) {
			if want != hypervisor.AccelKVM {
				t.Errorf("probed %s after forced kvm failed", want)
			}
			return hypervisor.AccelChoice{}, fmt.Errorf("KVM is not usable: /dev/kvm does not exist: %w", os.ErrNotExist)
		}
		rep := f.run(Options{Accelerator: hypervisor.AccelKVM})
		kvm := expect(t, rep, "kvm", StatusFail, "/dev/kvm does not exist", "--accel auto")
		if !kvm.Required || rep.CanRun {
			t.Errorf("forced unusable KVM: required=%v CanRun=%v", kvm.Required, rep.CanRun)
		}
		if tcg := expect(t, rep, "tcg", StatusOK, "forced to kvm"); tcg.Required {
			t.Error("tcg required though kvm is forced")
		}
	})

	t.Run("forced kvm but probe says no", func(t *testing.T) {
		f := newFakeHost(t)
		f.accel = func(want hypervisor.Accelerator, _ hypervisor.AccelProbe) (hypervisor.AccelChoice, error) {
			if want == hypervisor.AccelKVM {
				return hypervisor.AccelChoice{Accelerator: hypervisor.AccelKVM, Reason: "forced by configuration"}, nil
			}
			return emulated, nil
		}
		rep := f.run(Options{Accelerator: hypervisor.AccelKVM})
		expect(t, rep, "kvm", StatusWarn, "passes the device checks", emulated.Reason)
		if !rep.CanRun {
			t.Error("a warned KVM blocks the host")
		}
	})
}

func TestTCGMissing(t *testing.T) {
	f := newFakeHost(t)
	f.commands[fakeQEMU+" -accel help"] = "Accelerators supported in QEMU binary:\nkvm\n"
	f.accel = func(hypervisor.Accelerator, hypervisor.AccelProbe) (hypervisor.AccelChoice, error) {
		return hypervisor.AccelChoice{Accelerator: hypervisor.AccelTCG, Reason: "no guest kernel to probe KVM with (run `cocoon image build`)", NoKernel: true}, nil
	}
	rep := f.run(Options{})
	expect(t, rep, "tcg", StatusFail, "without TCG")
	if rep.CanRun {
		t.Error("CanRun with neither KVM nor TCG")
	}
}

func TestVirtiofsd(t *testing.T) {
	f := newFakeHost(t)
	f.remove(fakeVirtio)
	f.exe("/usr/libexec/virtiofsd")
	f.commands["/usr/libexec/virtiofsd --version"] = "virtiofsd 1.10.1\n"
	rep := f.run(Options{})
	expect(t, rep, "virtiofsd", StatusOK, "1.10.1", "/usr/libexec/virtiofsd")

	f = newFakeHost(t)
	f.remove(fakeVirtio)
	rep = f.run(Options{})
	expect(t, rep, "virtiofsd", StatusFail, "not found", "/usr/lib/qemu/virtiofsd", "install virtiofsd")
	if rep.CanRun {
		t.Error("CanRun without virtiofsd")
	}

	f = newFakeHost(t)
	f.failing[fakeVirtio+" --version"] = errors.New("exit status 1")
	rep = f.run(Options{})
	expect(t, rep, "virtiofsd", StatusWarn, "found at "+fakeVirtio)
}

func TestDevices(t *testing.T) {
	f := newFakeHost(t)
	f.remove("/dev/vhost-vsock")
	f.remove("/dev/vhost-net")
	f.remove("/dev/fuse")
	f.remove("/dev/net/tun")
	f.write("/dev/net/tun", "not a device")
	rep := f.run(Options{})
	expect(t, rep, "vhost-vsock", StatusWarn, "absent", "agent will use virtio-serial")
	expect(t, rep, "vhost-net", StatusWarn, "absent", "vhost_net")
	expect(t, rep, "/dev/fuse", StatusWarn, "absent")
	expect(t, rep, "/dev/net/tun", StatusFail, "not a character device")
	if rep.CanRun {
		t.Error("CanRun without a tun device")
	}
	f.remove("/dev/net/tun")
	rep = f.run(Options{})
	expect(t, rep, "/dev/net/tun", StatusFail, "absent", "modprobe tun")
}

func TestCgroups(t *testing.T) {
	for _, tc := range []struct {
		name, mountinfo, controllers string
		status                       Status
		detail                       []string
	}{
		{"v2", mountinfoV2, "cpu memory pids", StatusOK, []string{"v2 (unified) at /sys/fs/cgroup", "v2 controllers cpu,memory,pids"}},
		{"v2 without memory", mountinfoV2, "cpu pids", StatusWarn, []string{"memory not available"}},
		{"v1", mountinfoV1, "", StatusOK, []string{"v1 (legacy): controllers cpu,cpuacct,memory,pids"}},
		{"hybrid", mountinfoHybrid, "", StatusOK, []string{"hybrid: v1 controllers cpu,cpuacct,memory,pids; v2 at /sys/fs/cgroup/unified", "no v2 controllers"}},
		{"none", "24 1 259:1 / / rw - ext4 /dev/root rw\n", "", StatusFail, []string{"no cgroup filesystem"}},
		{"escaped", `30 24 0:26 / /sys/fs/cgroup\040x rw - cgroup2 cgroup2 rw` + "\n", "", StatusWarn, []string{"v2 (unified) at /sys/fs/cgroup x"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeHost(t)
			f.write("/proc/self/mountinfo", tc.mountinfo)
			f.remove("/sys/fs/cgroup")
			if tc.controllers != "" {
				f.write("/sys/fs/cgroup/cgroup.controllers", tc.controllers+"\n")
			}
			rep := f.run(Options{})
			expect(t, rep, "cgroups", tc.status, tc.detail...)
			if rep.CanRun != (tc.status != StatusFail) {
				t.Errorf("CanRun=%v", rep.CanRun)
			}
		})
	}
}

func TestNetNS(t *testing.T) {
	f := newFakeHost(t)
	f.netnsErr = errors.New("unshare(CLONE_NEWNET): operation not permitted")
	rep := f.run(Options{})
	expect(t, rep, "network namespaces", StatusFail, "operation not permitted", "CAP_SYS_ADMIN")
	if rep.CanRun {
		t.Error("CanRun without network namespaces")
	}

	f = newFakeHost(t)
	f.write("/proc/sys/user/max_net_namespaces", "0\n")
	rep = f.run(Options{})
	expect(t, rep, "network namespaces", StatusFail, "max_net_namespaces is 0")

	f = newFakeHost(t)
	f.remove("/proc/self/ns/net")
	rep = f.run(Options{})
	expect(t, rep, "network namespaces", StatusFail, "CONFIG_NET_NS")
}

func TestModules(t *testing.T) {
	gz := func(s string) string {
		var b bytes.Buffer
		zw := gzip.NewWriter(&b)
		zw.Write([]byte(s))
		zw.Close()
		return b.String()
	}
	rel := "/lib/modules/" + fakeRelease

	t.Run("kernel config", func(t *testing.T) {
		f := newFakeHost(t)
		f.remove("/proc/modules")
		f.remove(rel)
		f.write("/sys/module/bridge/parameters/x", "")
		f.write("/proc/config.gz", gz("CONFIG_TUN=y\nCONFIG_VETH=m\n# CONFIG_NET_SCH_INGRESS is not set\n"))
		rep := f.run(Options{})
		expect(t, rep, "kernel module tun", StatusOK, "CONFIG_TUN=y in /proc/config.gz")
		expect(t, rep, "kernel module veth", StatusOK, "CONFIG_VETH=m")
		expect(t, rep, "kernel module bridge", StatusOK, "built into the kernel")
		expect(t, rep, "kernel module sch_ingress", StatusFail, "CONFIG_NET_SCH_INGRESS is not set", "tc ingress")
		expect(t, rep, "kernel module act_mirred", StatusWarn, "cannot determine")
		if rep.CanRun {
			t.Error("CanRun without sch_ingress")
		}
	})

	t.Run("boot config and module tree", func(t *testing.T) {
		f := newFakeHost(t)
		f.remove("/proc/modules")
		f.write(rel+"/modules.builtin", "kernel/drivers/net/tun.ko\n")
		f.write(rel+"/modules.dep", "kernel/net/sched/act_mirred.ko.zst:\n")
		f.write("/sys/module/sch_ingress/initstate", "live\n")
		f.write("/boot/config-"+fakeRelease, "CONFIG_TUN=y\nCONFIG_VETH=m\nCONFIG_BRIDGE=m\nCONFIG_NET_ACT_MIRRED=m\n")
		rep := f.run(Options{})
		expect(t, rep, "kernel module tun", StatusOK, "modules.builtin")
		expect(t, rep, "kernel module sch_ingress", StatusOK, "loaded")
		expect(t, rep, "kernel module act_mirred", StatusOK, "CONFIG_NET_ACT_MIRRED=m")
		expect(t, rep, "kernel module veth", StatusFail, "veth.ko is not installed")
		// bridge is not required: missing is a warning.
		expect(t, rep, "kernel module bridge", StatusWarn, "bridge.ko is not installed")
	})

	t.Run("module tree only", func(t *testing.T) {
		f := newFakeHost(t)
		f.remove("/proc/modules")
		f.write(rel+"/modules.builtin", "kernel/drivers/net/tun.ko\n")
		f.write(rel+"/modules.dep", "kernel/net/sched/act_mirred.ko.xz:\n")
		rep := f.run(Options{})
		expect(t, rep, "kernel module act_mirred", StatusOK, "modprobe act_mirred")
		expect(t, rep, "kernel module veth", StatusFail, "neither built into kernel "+fakeRelease)
	})
}

func TestGuestImage(t *testing.T) {
	f := newFakeHost(t)
	rep := f.run(Options{DataDir: "/srv/cocoon"})
	expect(t, rep, "guest image", StatusWarn, "/srv/cocoon/images/current/manifest.json not found", "cocoon image build")
	if !rep.CanRun {
		t.Error("a missing image blocks the host")
	}
	f.write("/srv/cocoon/images/current/manifest.json", "{}")
	rep = f.run(Options{DataDir: "/srv/cocoon"})
	expect(t, rep, "guest image", StatusOK, "/srv/cocoon/images/current/manifest.json")
}

func TestParseHelpers(t *testing.T) {
	if maj, min, v, ok := parseQEMUVersion([]byte(qemuVersionOut)); !ok || maj != 7 || min != 2 || v != "7.2.22" {
		t.Errorf("parseQEMUVersion = %d %d %q %v", maj, min, v, ok)
	}
	m := helpList([]byte(machineHelpOut))
	if _, ok := m["Supported"]; ok {
		t.Error("header parsed as a machine")
	}
	if m["q35"] != "Standard PC (Q35 + ICH9, 2009) (alias of pc-q35-7.2)" {
		t.Errorf("q35 = %q", m["q35"])
	}
	if got := moduleName("kernel/net/sched/act-mirred.ko.xz"); got != "act_mirred" {
		t.Errorf("moduleName = %q", got)
	}
}

// TestNewNetNSReal creates a network namespace on this host and checks the
// process is left in its own.
func TestNewNetNSReal(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	before, err := os.Readlink("/proc/self/ns/net")
	if err != nil {
		t.Skip(err)
	}
	for range 3 {
		if err := tryNewNetNS(); err != nil {
			t.Skipf("cannot create network namespaces here: %v", err)
		}
	}
	// Every thread of the process must still be in the original namespace.
	tasks, _ := filepath.Glob("/proc/self/task/*/ns/net")
	for _, p := range tasks {
		if ns, err := os.Readlink(p); err == nil && ns != before {
			t.Errorf("%s is in %s, want %s", p, ns, before)
		}
	}
}

// TestRunOnThisHost runs every real check (but the slow KVM probe) and
// checks the report is well-formed.
func TestRunOnThisHost(t *testing.T) {
	rep := Run(context.Background(), Options{Accelerator: hypervisor.AccelTCG, DataDir: t.TempDir()})
	failed := 0
	for _, r := range rep.Results {
		t.Logf("%-26s %-4s %s", r.Name, r.Status, r.Detail)
		switch r.Status {
		case StatusOK, StatusWarn:
		case StatusFail:
			if r.Required {
				failed++
			}
		default:
			t.Errorf("%s: status %q", r.Name, r.Status)
		}
		if r.Detail == "" {
			t.Errorf("%s: no detail", r.Name)
		}
	}
	if rep.CanRun != (failed == 0) {
		t.Errorf("CanRun=%v with %d required failures", rep.CanRun, failed)
	}
	expect(t, rep, "guest image", StatusWarn, "cocoon image build")
}
