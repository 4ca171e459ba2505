package qemu

import (
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/cocoon-runtime/cocoon/hypervisor"
)

func testLaunch(machine string) launch {
	return launch{
		id:      "vm1",
		machine: machine,
		accel:   hypervisor.AccelTCG,
		cfg:     hypervisor.Config{Kernel: "/k", Initrd: "/i", VCPUs: 1, MemoryMiB: 256},
		files:   vmFiles("/run/cocoon/vm/vm1"),
		tscKHz:  2100000,
	}
}

// argValue returns the value after the n-th occurrence of flag.
func argValues(args []string, flag string) []string {
	var out []string
	for i := 0; i+1 < len(args); i++ {
		if args[i] == flag {
			out = append(out, args[i+1])
		}
	}
	return out
}

func TestArgsQ35(t *testing.T) {
	l := testLaunch(MachineQ35)
	args := l.args()
	for _, want := range []string{"-S", "-no-reboot", "-nodefaults", "-no-user-config"} {
		if !slices.Contains(args, want) {
			t.Errorf("missing %s in %v", want, args)
		}
	}
	if m := argValues(args, "-machine"); len(m) != 1 || !strings.HasPrefix(m[0], "q35,") {
		t.Errorf("-machine = %v", m)
	}
	if a := argValues(args, "-accel"); len(a) != 1 || a[0] != fmt.Sprintf("tcg,tb-size=%d", tcgCacheMiB) {
		t.Errorf("-accel = %v", a)
	}
	devs := strings.Join(argValues(args, "-device"), " ")
	for _, want := range []string{"virtio-serial-pci", "virtserialport,bus=vser0.0,chardev=agent0,name=agent.0", "virtio-balloon-pci"} {
		if !strings.Contains(devs, want) {
			t.Errorf("devices %q lack %q", devs, want)
		}
	}
	if strings.Contains(devs, "pcie-root-port") {
		t.Errorf("root ports without hotplug slots: %s", devs)
	}
	kp := l.kernelParams()
	for _, want := range []string{"acpi=off", "pci=lastbus=0", "quiet"} {
		if !strings.Contains(kp, want) {
			t.Errorf("kernel params %q lack %q", kp, want)
		}
	}
	if strings.Contains(kp, "tsc_early_khz") {
		t.Errorf("q35 does not need tsc_early_khz: %q", kp)
	}
}

func TestArgsHotplugKeepsWhatItNeeds(t *testing.T) {
	l := testLaunch(MachineQ35)
	l.cfg.HotplugSlots = 3
	devs := strings.Join(argValues(l.args(), "-device"), " ")
	if n := strings.Count(devs, "pcie-root-port"); n != 3 {
		t.Errorf("%d root ports, want 3", n)
	}
	if kp := l.kernelParams(); strings.Contains(kp, "pci=lastbus=0") || strings.Contains(kp, "acpi=off") {
		t.Errorf("hotplug needs bridge scanning and ACPI: %q", kp)
	}
	// CPU hotplug needs ACPI.
	l.cfg.HotplugSlots = 0
	l.cfg.MaxVCPUs = 4
	if kp := l.kernelParams(); strings.Contains(kp, "acpi=off") {
		t.Errorf("CPU hotplug needs ACPI: %q", kp)
	}
	if smp := argValues(l.args(), "-smp"); len(smp) != 1 || smp[0] != "1,maxcpus=4" {
		t.Errorf("-smp = %v", smp)
	}
	// So does a second vCPU: without ACPI the guest brings up one.
	l.cfg.MaxVCPUs, l.cfg.VCPUs = 0, 2
	if kp := l.kernelParams(); strings.Contains(kp, "acpi=off") {
		t.Errorf("two vCPUs need ACPI: %q", kp)
	}
	l.cfg.VCPUs = 1
	if kp := l.kernelParams(); !strings.Contains(kp, "acpi=off") {
		t.Errorf("one vCPU and no hotplug: ACPI is off, %q", kp)
	}
}

func TestArgsMicrovm(t *testing.T) {
	l := testLaunch(MachineMicrovm)
	args := l.args()
	devs := strings.Join(argValues(args, "-device"), " ")
	if strings.Contains(devs, "-pci") {
		t.Errorf("microvm has no PCI: %s", devs)
	}
	if !strings.Contains(devs, "virtio-serial-device") {
		t.Errorf("microvm devices %s", devs)
	}
	kp := l.kernelParams()
	if !strings.Contains(kp, "tsc_early_khz=2100000") || strings.Contains(kp, "acpi=off") {
		t.Errorf("microvm kernel params %q", kp)
	}
}

func TestArgsVsockAndKVM(t *testing.T) {
	l := testLaunch(MachineQ35)
	l.vsockCID, l.accel = 42, hypervisor.AccelKVM
	args := l.args()
	devs := strings.Join(argValues(args, "-device"), " ")
	if !strings.Contains(devs, "vhost-vsock-pci,id=vsock0,guest-cid=42") || strings.Contains(devs, "virtserialport") {
		t.Errorf("vsock devices %s", devs)
	}
	if !strings.Contains(l.kernelParams(), "cocoon.transport=vsock") {
		t.Errorf("kernel params lack the vsock transport")
	}
	if a := argValues(args, "-accel"); a[0] != "kvm" || argValues(args, "-cpu")[0] != "host" {
		t.Errorf("kvm args %v %v", a, argValues(args, "-cpu"))
	}
}

func TestArgsSharedFSNeedsSharedMemory(t *testing.T) {
	l := testLaunch(MachineQ35)
	l.cfg.SharedFSSocket = "/run/x/vfs.sock"
	args := l.args()
	if m := argValues(args, "-machine")[0]; !strings.Contains(m, "memory-backend=mem") {
		t.Errorf("-machine %s", m)
	}
	if o := strings.Join(argValues(args, "-object"), " "); !strings.Contains(o, "memory-backend-memfd,id=mem,size=256M,share=on") {
		t.Errorf("-object %s", o)
	}
	if d := strings.Join(argValues(args, "-device"), " "); !strings.Contains(d, "vhost-user-fs-pci,chardev=vfs,tag=cocoon") {
		t.Errorf("-device %s", d)
	}
}

func TestRunState(t *testing.T) {
	for qmp, want := range map[string]hypervisor.RunState{
		"running": hypervisor.StateRunning, "paused": hypervisor.StatePaused, "shutdown": hypervisor.StateShutdown,
		"internal-error": hypervisor.StateCrashed, "guest-panicked": hypervisor.StateCrashed, "io-error": hypervisor.StateCrashed,
		"inmigrate": hypervisor.StateOther, "prelaunch": hypervisor.StateOther,
	} {
		if got := runState(qmp); got != want {
			t.Errorf("runState(%q) = %q, want %q", qmp, got, want)
		}
	}
}

func TestCIDForIsStableAndValid(t *testing.T) {
	a, b := cidFor("pod-a"), cidFor("pod-b")
	if a < 3 || b < 3 || a == b || cidFor("pod-a") != a {
		t.Errorf("cids %d %d", a, b)
	}
}

// A confined QEMU runs under its seccomp sandbox with fork and exec
// denied, as a uid of its own per VM, chrooted into an empty directory.
func TestArgsConfined(t *testing.T) {
	l := testLaunch(MachineQ35)
	if slices.Contains(l.args(), "-sandbox") {
		t.Fatal("an unconfined launch has a sandbox")
	}
	l.confined = true
	args := l.args()
	sb := argValues(args, "-sandbox")
	if len(sb) != 1 {
		t.Fatalf("-sandbox = %v", sb)
	}
	for _, want := range []string{"on", "obsolete=deny", "spawn=deny", "resourcecontrol=deny"} {
		if !slices.Contains(strings.Split(sb[0], ","), want) {
			t.Errorf("-sandbox %s lacks %s", sb[0], want)
		}
	}
	uid := confinedUID(l.id)
	if r := argValues(args, "-runas"); len(r) != 1 || r[0] != fmt.Sprintf("%d:%d", uid, uid) {
		t.Errorf("-runas = %v, want %d:%d", r, uid, uid)
	}
	if uid < uidBase || confinedUID(l.id+"x") == uid {
		t.Errorf("uid %d: want one per VM at or above %d", uid, uidBase)
	}
	if c := argValues(args, "-chroot"); len(c) != 1 || c[0] != l.files.root {
		t.Errorf("-chroot = %v, want %s", c, l.files.root)
	}
	for _, a := range args {
		if strings.Contains(a, "exec:") || a == "-daemonize" {
			t.Errorf("argument %q needs a fork or exec the sandbox denies", a)
		}
	}
}

func TestArgsNetDevices(t *testing.T) {
	for _, machine := range []string{MachineQ35, MachineMicrovm} {
		l := testLaunch(machine)
		one := []*os.File{nil} // args only count the files
		l.cfg.NetDevices = []hypervisor.NetDevice{{ID: "net0", MAC: "02:00:00:00:00:01", QueueSize: 512, Taps: one}, {ID: "net1", MAC: "02:00:00:00:00:02", Taps: one}}
		args := l.args()
		nd := argValues(args, "-netdev")
		if !slices.Equal(nd, []string{"tap,id=net-net0,fd=3,vhost=off", "tap,id=net-net1,fd=4,vhost=off"}) {
			t.Errorf("%s: -netdev %v", machine, nd)
		}
		drv := "virtio-net-pci,romfile="
		if machine == MachineMicrovm {
			drv = "virtio-net-device"
		}
		if want := drv + ",netdev=net-net1,id=net1,mac=02:00:00:00:00:02"; !slices.Contains(argValues(args, "-device"), want) {
			t.Errorf("%s: no -device %s in %v", machine, want, args)
		}
		if want := drv + ",netdev=net-net0,id=net0,mac=02:00:00:00:00:01,rx_queue_size=512"; !slices.Contains(argValues(args, "-device"), want) {
			t.Errorf("%s: no -device %s in %v", machine, want, args)
		}
	}
}

// Several taps make a multi-queue NIC; vhost-net files turn vhost on, each
// numbered after the files before it in netFiles' order.
func TestArgsNetQueuesAndVhost(t *testing.T) {
	l := testLaunch(MachineQ35)
	files := func(n int) []*os.File { return make([]*os.File, n) }
	l.cfg.NetDevices = []hypervisor.NetDevice{
		{ID: "net0", MAC: "02:00:00:00:00:01", Taps: files(2), VhostNet: files(2)},
		{ID: "net1", MAC: "02:00:00:00:00:02", Taps: files(1), VhostNet: files(1)},
		{ID: "net2", MAC: "02:00:00:00:00:03", Taps: files(2)},
	}
	args := l.args()
	want := []string{
		"tap,id=net-net0,fds=3:4,vhost=on,vhostfds=5:6",
		"tap,id=net-net1,fd=7,vhost=on,vhostfd=8",
		"tap,id=net-net2,fds=9:10,vhost=off",
	}
	if nd := argValues(args, "-netdev"); !slices.Equal(nd, want) {
		t.Errorf("-netdev %v, want %v", nd, want)
	}
	devs := argValues(args, "-device")
	if !slices.Contains(devs, "virtio-net-pci,romfile=,netdev=net-net0,id=net0,mac=02:00:00:00:00:01,mq=on,vectors=6") {
		t.Errorf("no multi-queue net0 in %v", devs)
	}
	if !slices.Contains(devs, "virtio-net-pci,romfile=,netdev=net-net1,id=net1,mac=02:00:00:00:00:02") {
		t.Errorf("net1 in %v", devs)
	}
	if n := len(netFiles(l.cfg.NetDevices)); n != 8 {
		t.Errorf("netFiles: %d files, want 8", n)
	}
}
