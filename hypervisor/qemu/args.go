package qemu

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/cocoon-runtime/cocoon/agent/protocol"
	"github.com/cocoon-runtime/cocoon/hypervisor"
)

// Machine types.
const (
	MachineQ35     = "q35"
	MachineMicrovm = "microvm"
)

// DefaultMachine is the machine type used when the config names none. q35
// is the default because it supports PCI(e) hotplug, which block and
// network hotplug need; microvm boots faster but cannot hotplug (see the
// benchmark in bench/ for the measured difference).
const DefaultMachine = MachineQ35

// tcgCacheMiB caps TCG's translation cache. It costs only what it fills
// (~50 MiB for an idle VM, the same at 64 MiB or 512 MiB), but too small a
// cache thrashes: measured with a 16 MiB cache, an exec into a container took
// 1.5 s and a cold container run 8 s; with 64 MiB, 0.18 s and 3.9 s.
// 128 MiB leaves headroom for containers that run more code.
const tcgCacheMiB = 128

// baseKernelParams are tuned for fast boot of a minimal guest: no hardware
// probing we do not need, no self-tests, expedited RCU, the entropy pool
// trusted from the CPU, and a single UART.
var baseKernelParams = []string{
	"console=ttyS0", "panic=-1", "reboot=t",
	"no_timer_check", "tsc=reliable", "nokaslr",
	"mitigations=off", "audit=0", "cryptomgr.notests",
	"rcupdate.rcu_expedited=1", "random.trust_cpu=on",
	"8250.nr_uarts=1", "i8042.noaux", "i8042.nomux", "i8042.nopnp", "i8042.dumbkbd",
	"rdinit=/init",
	// Built-in initcalls a container VM has no use for, the slowest under
	// TCG by initcall_debug (guest time, Debian's cloud kernel 6.1):
	// kprobe trace events 136-172 ms, tracing's enum maps 80 ms, the
	// KDF108 self-test 28-40 ms, IMA 12-16 ms.
	"initcall_blacklist=init_kprobe_trace,trace_eval_init,crypto_kdf108_init,init_ima",
}

// launch is everything needed to build QEMU's command line.
type launch struct {
	id      string
	cfg     hypervisor.Config
	accel   hypervisor.Accelerator
	machine string
	files   files
	// vsockCID is the guest's CID when the agent uses vsock.
	vsockCID uint32
	// tscKHz is the host TSC frequency, needed by microvm under TCG.
	tscKHz uint64
	// incoming launches QEMU waiting for a saved state (RestoreVM); the
	// shared file system is then hot-plugged, since QEMU cannot migrate
	// a vhost-user-fs device.
	incoming bool
	// confined runs QEMU under its seccomp sandbox, as an unprivileged
	// uid of its own in an empty chroot (see confinement.go).
	confined bool
}

// AgentPorts is the number of virtio-serial ports for the agent: how many
// host processes can talk to one VM's agent at the same time.
const AgentPorts = 6

var _ [protocol.MaxAgentPorts - AgentPorts]struct{} // AgentPorts <= protocol.MaxAgentPorts

// files are the per-VM files in the VM's runtime directory.
type files struct {
	dir, qmp, console, pid, log, state string
	// root is the empty directory a confined QEMU is chrooted into.
	root string
}

// agentSockets are the unix sockets of the agent's serial ports.
func (f files) agentSockets() []string {
	s := make([]string, AgentPorts)
	for i := range s {
		s[i] = filepath.Join(f.dir, fmt.Sprintf("agent.%d.sock", i))
	}
	return s
}

// transport is the agent transport this launch uses.
func (l launch) transport() hypervisor.Transport {
	if l.vsockCID != 0 {
		return hypervisor.TransportVsock
	}
	return hypervisor.TransportSerial
}

// kernelParams is the guest kernel command line.
func (l launch) kernelParams() string {
	p := append([]string{}, baseKernelParams...)
	if !l.cfg.Debug {
		p = append(p, "quiet", "loglevel=3")
	} else {
		p = append(p, protocol.ParamDebug+"=1")
	}
	if l.machine == MachineQ35 {
		if l.cfg.HotplugSlots == 0 {
			// Nothing sits behind a bridge: skip scanning for one.
			p = append(p, "pci=lastbus=0")
		}
		if !l.needsACPI() {
			// Interpreting q35's ACPI tables costs a third of the kernel's
			// boot under TCG; only hotplug needs them (measured: PCIe
			// hotplug into root ports does not work without ACPI either).
			// Debian's cloud kernel has no MP-table support, so without
			// ACPI there is no MSI: virtio falls back to INTx, with a
			// one-time kernel warning. Measured: no difference in agent
			// RPC, exec or stream throughput (acpi=ht is ignored by this
			// kernel, so it is all or nothing).
			p = append(p, "acpi=off")
		}
	}
	if l.accel == hypervisor.AccelTCG && l.needsACPI() {
		// With ACPI the guest picks the TSC as its clocksource, and reading
		// it is slow under TCG: measured with a root port (ACPI on), exec
		// 388 ms and stdout 9.5 MB/s with the TSC, 318 ms and 21.4 MB/s
		// with jiffies, as without ACPI (where the guest has no APIC and
		// uses refined-jiffies anyway).
		p = append(p, "clocksource=refined-jiffies")
	}
	if l.hotMemoryMiB() > 0 || l.cfg.MemoryMiB > 3072 {
		// Memory above 4 GiB makes the kernel set aside a 64 MiB bounce
		// buffer for devices limited to 32-bit DMA, which virtio devices
		// are not: measured, a 256 MiB guest with room to grow had 65 MiB
		// less MemTotal. 4 MiB (2048 slabs of 2 KiB) stays for the odd
		// passed-through device.
		p = append(p, "swiotlb=2048")
	}
	if l.machine == MachineMicrovm && l.accel == hypervisor.AccelTCG && l.tscKHz > 0 {
		// microvm has no PIT to calibrate the TSC against under TCG.
		p = append(p, fmt.Sprintf("tsc_early_khz=%d", l.tscKHz))
	}
	if l.transport() == hypervisor.TransportVsock {
		p = append(p, protocol.ParamTransport+"="+protocol.TransportVsock)
	} else {
		p = append(p, fmt.Sprintf("%s=%d", protocol.ParamAgentPorts, AgentPorts))
	}
	p = append(p, l.cfg.KernelParams...)
	return strings.Join(p, " ")
}

// needsACPI reports whether the VM needs ACPI: for device, CPU or memory
// hotplug, and for a second vCPU (Debian's cloud kernel has no MP-table
// support: without ACPI's MADT the guest brings up one CPU only).
func (l launch) needsACPI() bool {
	// The generation ID device is announced through ACPI too.
	return l.cfg.HotplugSlots > 0 || l.cfg.VCPUs > 1 || l.canGrowCPUs() || l.hotMemoryMiB() > 0 || l.cfg.GenerationID
}

// args builds QEMU's command line (without the binary).
func (l launch) args() []string {
	c := l.cfg
	pci := l.machine != MachineMicrovm
	dev := func(pciName, mmioName string) string {
		if pci {
			return pciName
		}
		return mmioName
	}

	machine := "q35,smm=off,vmport=off,sata=off,usb=off,i8042=off,graphics=off,hpet=off"
	if l.machine == MachineMicrovm {
		machine = "microvm,x-option-roms=off,rtc=on,isa-serial=on,pit=off,pic=off,acpi=on,pcie=off"
	}
	if c.SharedFSSocket != "" || c.MemoryFile != "" {
		// vhost-user devices need guest RAM the daemon can map.
		machine += ",memory-backend=mem"
	}

	accel := "tcg,tb-size=" + fmt.Sprint(tcgCacheMiB)
	cpu := "qemu64"
	if l.accel == hypervisor.AccelKVM {
		accel, cpu = "kvm", "host"
	}

	mem := fmt.Sprintf("%dM", c.MemoryMiB)
	hot := l.hotMemoryMiB()
	if hot > 0 {
		mem += fmt.Sprintf(",maxmem=%dM", c.MemoryMiB+hot)
	}
	maxCPUs := c.VCPUs
	if l.machine == MachineQ35 {
		maxCPUs = max(c.MaxVCPUs, c.VCPUs) // only q35 hot-plugs CPUs
	}

	a := []string{
		"-name", "cocoon-" + l.id + ",debug-threads=on",
		"-no-user-config", "-nodefaults", "-display", "none",
		"-machine", machine,
		"-accel", accel,
		"-cpu", cpu,
		"-smp", fmt.Sprintf("%d,maxcpus=%d", c.VCPUs, maxCPUs),
		"-m", mem,
		"-kernel", c.Kernel,
		"-append", l.kernelParams(),
		"-chardev", "socket,id=qmp,path=" + l.files.qmp + ",server=on,wait=off",
		"-mon", "chardev=qmp,mode=control",
		"-chardev", "file,id=console,path=" + l.files.console,
		"-serial", "chardev:console",
	}
	if c.Initrd != "" {
		a = append(a, "-initrd", c.Initrd)
	}
	if l.machine == MachineMicrovm {
		a = append(a, "-global", "virtio-mmio.force-legacy=false")
	}
	switch {
	case c.MemoryFile != "":
		a = append(a, "-object", fmt.Sprintf("memory-backend-file,id=mem,size=%dM,share=on,mem-path=%s", c.MemoryMiB, c.MemoryFile))
	case c.SharedFSSocket != "":
		a = append(a, "-object", fmt.Sprintf("memory-backend-memfd,id=mem,size=%dM,share=on", c.MemoryMiB))
	}

	if hot > 0 {
		// Memory to grow into: a virtio-mem device the guest plugs blocks
		// of when asked (it starts with none). Its memory is shared, like
		// the boot memory, for virtiofsd to map what the guest plugs.
		a = append(a,
			"-object", fmt.Sprintf("memory-backend-memfd,id=%s,size=%dM,share=on", memBackend, hot),
			"-device", fmt.Sprintf("virtio-mem-pci,id=%s,memdev=%s,block-size=%dM,requested-size=0", memDeviceID, memBackend, memBlockMiB))
	}
	switch l.transport() {
	case hypervisor.TransportVsock:
		a = append(a, "-device", fmt.Sprintf("%s,id=vsock0,guest-cid=%d", dev("vhost-vsock-pci", "vhost-vsock-device"), l.vsockCID))
	default:
		a = append(a, "-device", fmt.Sprintf("%s,id=vser0,max_ports=%d", dev("virtio-serial-pci", "virtio-serial-device"), AgentPorts+1))
		for i, sock := range l.files.agentSockets() {
			a = append(a,
				"-chardev", fmt.Sprintf("socket,id=agent%d,path=%s,server=on,wait=off", i, sock),
				"-device", fmt.Sprintf("virtserialport,bus=vser0.0,chardev=agent%d,name=%s", i, protocol.SerialPortName(i)),
			)
		}
	}
	if c.SharedFSSocket != "" && !l.incoming {
		a = append(a,
			"-chardev", "socket,id=vfs,path="+c.SharedFSSocket,
			"-device", dev("vhost-user-fs-pci", "vhost-user-fs-device")+",chardev=vfs,tag="+protocol.SharedFSTag+",queue-size=1024",
		)
	}
	// Network devices: each tap (and vhost-net file) was opened by the
	// host and is inherited (QEMU, confined, could open none), as
	// numbered by netFiles.
	fd := netFilesFD
	nic := dev("virtio-net-pci,romfile=", "virtio-net-device") // no option ROM: the kernel boots directly
	for _, d := range c.NetDevices {
		taps, vhosts := fdRange(&fd, len(d.Taps)), fdRange(&fd, len(d.VhostNet))
		netdev := fmt.Sprintf("tap,id=net-%s,", d.ID)
		if len(taps) == 1 {
			netdev += "fd=" + taps[0]
		} else {
			netdev += "fds=" + strings.Join(taps, ":")
		}
		switch {
		case len(vhosts) == 1:
			netdev += ",vhost=on,vhostfd=" + vhosts[0]
		case len(vhosts) > 1:
			netdev += ",vhost=on,vhostfds=" + strings.Join(vhosts, ":")
		default:
			netdev += ",vhost=off"
		}
		device := fmt.Sprintf("%s,netdev=net-%s,id=%s,mac=%s%s", nic, d.ID, d.ID, d.MAC, queueSize(d.QueueSize))
		if n := len(d.Taps); n > 1 {
			// A vector for each queue of each pair, one for control, one
			// for configuration changes.
			device += fmt.Sprintf(",mq=on,vectors=%d", 2*n+2)
		}
		a = append(a, "-netdev", netdev, "-device", device)
	}
	// Free page reporting hands memory the guest freed (the unpacked
	// initramfs, boot-time allocations) back to the host.
	a = append(a, "-device", dev("virtio-balloon-pci", "virtio-balloon-device")+",id=balloon0,free-page-reporting=on,deflate-on-oom=on")
	// The guest's entropy comes from the host.
	a = append(a, "-object", "rng-random,id=rng0,filename=/dev/urandom", "-device", dev("virtio-rng-pci", "virtio-rng-device")+",rng=rng0")

	if pci {
		for i := 0; i < c.HotplugSlots; i++ {
			a = append(a, "-device", fmt.Sprintf("pcie-root-port,id=%s,bus=pcie.0,chassis=%d", rootPort(i), i+1))
		}
	}
	if c.GenerationID {
		a = append(a, "-device", "vmgenid,guid=auto")
	}
	if l.incoming {
		a = append(a, "-incoming", "defer")
	}
	if !l.incoming {
		// The guest starts only once QEMU dropped its privileges: StartVM
		// continues it over QMP.
		a = append(a, "-S")
	}
	if l.confined {
		a = append(a, l.confinementArgs()...)
	}
	a = append(a, "-no-reboot", "-pidfile", l.files.pid)
	return a
}

func rootPort(i int) string { return fmt.Sprintf("rp%d", i) }

// maxNetQueues bounds a NIC's queue pairs.
const maxNetQueues = 8

// netFilesFD is QEMU's fd of the first of netFiles: the files after
// stdin, stdout and stderr.
const netFilesFD = 3

// netFiles are the files of the network devices in the order QEMU
// inherits them: each device's taps, then its vhost-net files.
func netFiles(devs []hypervisor.NetDevice) []*os.File {
	var out []*os.File
	for _, d := range devs {
		out = append(append(out, d.Taps...), d.VhostNet...)
	}
	return out
}

// fdRange numbers the next n inherited files, from *next on.
func fdRange(next *int, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = strconv.Itoa(*next)
		*next++
	}
	return out
}

// queueSize is the NIC option of a receive ring of n entries.
func queueSize(n int) string {
	if n == 0 {
		return ""
	}
	return fmt.Sprintf(",rx_queue_size=%d", n)
}
