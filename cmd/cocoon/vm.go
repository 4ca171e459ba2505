package main

import (
	"encoding/json"
	"fmt"
	"io"
	"path/filepath"
	"time"

	"github.com/cocoon-runtime/cocoon"
	"github.com/cocoon-runtime/cocoon/hypervisor"
	"github.com/cocoon-runtime/cocoon/image"
	"github.com/cocoon-runtime/cocoon/internal/agent"
	"github.com/cocoon-runtime/cocoon/internal/layout"
	"github.com/cocoon-runtime/cocoon/internal/vm"
	"github.com/spf13/cobra"
)

// vmFlags are the flags that describe a VM to boot.
type vmFlags struct {
	kernel, initrd, qemu, machine, accel, transport string
	vcpus, memory                                   uint32
	hotplugSlots                                    int
	debug                                           bool
	bootTimeout                                     time.Duration
}

func (f *vmFlags) register(cmd *cobra.Command) {
	fl := cmd.Flags()
	fl.StringVar(&f.kernel, "kernel", "", "guest kernel (default: the current image's)")
	fl.StringVar(&f.initrd, "initrd", "", "guest initramfs (default: the current image's)")
	fl.StringVar(&f.qemu, "qemu", "", "QEMU binary (default: qemu-system-x86_64 on PATH)")
	fl.StringVar(&f.machine, "machine", "", "machine type: q35 or microvm (default q35)")
	fl.StringVar(&f.accel, "accel", "auto", "accelerator: auto, kvm or tcg")
	fl.StringVar(&f.transport, "transport", "auto", "agent channel: auto, virtio-serial or vsock")
	fl.Uint32Var(&f.vcpus, "vcpus", 1, "number of vCPUs")
	fl.Uint32Var(&f.memory, "memory", 256, "guest memory in MiB")
	fl.IntVar(&f.hotplugSlots, "hotplug-slots", 0, "PCIe root ports for device hotplug (q35)")
	fl.BoolVar(&f.debug, "debug", false, "verbose guest kernel and agent logs on the console")
	fl.DurationVar(&f.bootTimeout, "boot-timeout", vm.DefaultBootTimeout, "how long to wait for the guest agent")
}

// sizeFlags bound a VM sized for its container's limits, and how far it
// may grow.
type sizeFlags struct {
	maxVCPUs, maxMemory uint32
	fixed               bool
}

func (f *sizeFlags) register(cmd *cobra.Command) {
	fl := cmd.Flags()
	fl.Uint32Var(&f.maxVCPUs, "max-vcpus", 0, "most vCPUs the VM may get for its containers' CPU limits, beyond --vcpus (0: the host's CPU count)")
	fl.Uint32Var(&f.maxMemory, "max-memory", 0, "most memory in MiB the VM may have with its containers' memory limits on top of --memory (0: the host's)")
	fl.BoolVar(&f.fixed, "fixed-size", false, "boot the VM at its container's size with no room to grow (boots faster under TCG)")
}

// bound sets vm's ceilings: --vcpus and --memory are its base, which the
// runtime grows by the limits in the containers' linux.resources (see
// cocoon.SizeVM).
func (f *sizeFlags) bound(vm cocoon.VMConfig) cocoon.VMConfig {
	vm.MaxVCPUs, vm.MaxMemoryMiB, vm.FixedSize = f.maxVCPUs, f.maxMemory, f.fixed
	return vm
}

// sandboxVM is the VM the flags describe, for a sandbox.
func (f *vmFlags) sandboxVM() cocoon.VMConfig {
	return cocoon.VMConfig{
		Path: f.qemu, Kernel: f.kernel, Initrd: f.initrd, MachineType: f.machine,
		Accelerator: hypervisor.Accelerator(f.accel), AgentTransport: hypervisor.Transport(f.transport),
		VCPUs: f.vcpus, MemoryMiB: f.memory, HotplugSlots: f.hotplugSlots, Debug: f.debug,
	}
}

// config is the VM the flags describe, for a bare VM (no sandbox).
func (f *vmFlags) config(g *globalOptions) (hypervisor.Config, error) {
	cfg := f.sandboxVM().HypervisorConfig()
	cfg.StateDir = g.bareVMDir()
	var err error
	cfg.Kernel, cfg.Initrd, err = image.OrCurrent(g.dataDir, cfg.Kernel, cfg.Initrd)
	return cfg, err
}

func (g *globalOptions) vmOptions(bootTimeout time.Duration) vm.Options {
	return vm.Options{Log: g.logger(), CacheDir: layout.CacheDir(g.dataDir), BootTimeout: bootTimeout}
}

func newVMCommand(g *globalOptions) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "vm",
		Short: "Boot and manage bare sandbox VMs (no containers)",
		Long: "Boot and manage bare sandbox VMs: the guest agent answers but no container runs.\n" +
			"Useful to check that this host can boot Cocoon guests and to measure boot time.",
	}
	cmd.AddCommand(newVMBootCommand(g), newVMStartCommand(g), newVMDetailsCommand(g),
		newVMStopCommand(g), newVMPauseCommand(g, true), newVMPauseCommand(g, false))
	return cmd
}

func newVMBootCommand(g *globalOptions) *cobra.Command {
	var f vmFlags
	cmd := &cobra.Command{
		Use:   "boot",
		Short: "Boot a VM, print what its agent reports, and stop it",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := f.config(g)
			if err != nil {
				return err
			}
			id := fmt.Sprintf("boot-%d", time.Now().UnixNano())
			start := time.Now()
			v, err := vm.Start(cmd.Context(), id, cfg, g.vmOptions(f.bootTimeout))
			if err != nil {
				return err
			}
			booted := time.Since(start)
			defer v.Stop(cmd.Context())
			return printDetails(cmd, g, v, booted)
		},
	}
	f.register(cmd)
	return cmd
}

func newVMStartCommand(g *globalOptions) *cobra.Command {
	var f vmFlags
	cmd := &cobra.Command{
		Use:   "start ID",
		Short: "Boot a VM and leave it running",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := f.config(g)
			if err != nil {
				return err
			}
			start := time.Now()
			v, err := vm.Start(cmd.Context(), args[0], cfg, g.vmOptions(f.bootTimeout))
			if err != nil {
				return err
			}
			defer v.Close()
			fmt.Fprintf(cmd.OutOrStdout(), "vm %s running (agent answered after %v)\n", v.ID, time.Since(start).Round(time.Millisecond))
			return nil
		},
	}
	f.register(cmd)
	return cmd
}

func openVM(cmd *cobra.Command, g *globalOptions, id string) (*vm.VM, error) {
	return vm.Open(cmd.Context(), g.bareVMDir(), id, g.vmOptions(0))
}

func newVMDetailsCommand(g *globalOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "details ID",
		Short: "Print what the agent of a running VM reports",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			v, err := openVM(cmd, g, args[0])
			if err != nil {
				return err
			}
			defer v.Close()
			return printDetails(cmd, g, v, 0)
		},
	}
}

func newVMStopCommand(g *globalOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "stop ID",
		Short: "Power a VM off and remove everything it left on the host",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			v, err := openVM(cmd, g, args[0])
			if v == nil {
				return err
			}
			// A VM whose guest died is still cleaned up.
			return v.Stop(cmd.Context())
		},
	}
}

func newVMPauseCommand(g *globalOptions, pause bool) *cobra.Command {
	use, short := "pause ID", "Pause a VM's vCPUs"
	if !pause {
		use, short = "resume ID", "Resume a paused VM"
	}
	return &cobra.Command{
		Use:   use,
		Short: short,
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			v, err := vm.Open(cmd.Context(), g.bareVMDir(), args[0], g.vmOptions(0))
			if v == nil {
				return err
			}
			defer v.Close()
			if pause {
				return v.Pause(cmd.Context())
			}
			return v.Resume(cmd.Context())
		},
	}
}

func printDetails(cmd *cobra.Command, g *globalOptions, v *vm.VM, booted time.Duration) error {
	ctx := cmd.Context()
	ver, err := v.Agent.Version(ctx)
	if err != nil {
		return err
	}
	d, err := v.Agent.GuestDetails(ctx)
	if err != nil {
		return err
	}
	caps := v.HV.Capabilities(ctx)
	out := cmd.OutOrStdout()
	if g.json {
		return json.NewEncoder(out).Encode(struct {
			VM           string                  `json:"vm"`
			BootTime     time.Duration           `json:"boot_time_ns,omitempty"`
			Version      agent.VersionInfo       `json:"version"`
			Details      agent.GuestDetails      `json:"guest"`
			Capabilities hypervisor.Capabilities `json:"capabilities"`
		}{v.ID, booted, ver, d, caps})
	}
	w := func(k string, v any) { fmt.Fprintf(out, "%-18s %v\n", k+":", v) }
	w("vm", v.ID)
	if booted > 0 {
		w("launch to agent", booted.Round(time.Millisecond))
	}
	w("machine", fmt.Sprintf("%s (%s)", caps.MachineType, caps.AcceleratorUsed))
	w("agent", fmt.Sprintf("%s (protocol %d)", ver.Agent, ver.Protocol))
	w("guest kernel", d.KernelRelease)
	w("hostname", d.Hostname)
	w("cpus", d.OnlineCPUs)
	w("memory", fmt.Sprintf("%d MiB total, %d MiB free", d.MemTotal>>20, d.MemFree>>20))
	w("kernel to agent", d.BootToServe.Round(time.Millisecond))
	w("modules", len(d.Modules))
	_, err = io.WriteString(out, "")
	return err
}

// bareVMDir holds the VMs of `cocoon vm`: apart from sandboxes' VMs, so
// that `cocoon gc` never takes one for a leftover of a sandbox.
func (g *globalOptions) bareVMDir() string { return filepath.Join(g.root, "bare-vm") }
