// Package agent implements the cocoon-agent's ttrpc services: the API the
// host drives the guest with.
//
// This code runs inside the sandbox VM, as PID 1.
package agent

import (
	"bufio"
	"context"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/cocoon-runtime/cocoon/agent/protocol"
	"github.com/cocoon-runtime/cocoon/internal/guest/boot"
	"github.com/cocoon-runtime/cocoon/internal/guest/container"
	"github.com/cocoon-runtime/cocoon/internal/version"
	"github.com/containerd/ttrpc"
	"golang.org/x/sys/unix"
)

// Agent serves the guest API.
type Agent struct {
	log       *slog.Logger
	modules   func(context.Context) ([]string, error)
	bootServe time.Duration
	// powerOff is called (once, asynchronously) to take the VM down.
	powerOff func()

	containers *container.Manager
	shared     *sharedFS
	// outBufs recycles the buffers that copy process output: allocating
	// and zeroing 256 KiB per stream, and collecting them, costs every
	// exec under TCG.
	outBufs sync.Pool
	// portSlots holds a token for each port connection being served.
	portSlots chan struct{}
	// ephemeral holds the sandbox's EPHEMERAL storages.
	ephemeral *ephemeralStorages
	// blocks holds the containers' block root filesystems.
	blocks *blockMounts
}

// Config configures an Agent.
type Config struct {
	Log *slog.Logger
	// Modules waits for the kernel modules loaded at boot and returns them
	// in load order.
	Modules func(context.Context) ([]string, error)
	// BootToServe is the time from kernel start to the agent serving.
	BootToServe time.Duration
	// PowerOff takes the VM down; it is called after DestroySandbox replied.
	PowerOff func()
	// Containers runs the containers; nil when the agent cannot.
	Containers *container.Manager
	// SharedMount is where the host's shared directory is mounted.
	SharedMount string
	// SharedMounted, if not nil, is called once the shared directory is
	// mounted, with its mount point, before any container uses it.
	SharedMounted func(mountPoint string)
}

// New returns an Agent.
func New(cfg Config) *Agent {
	return &Agent{
		log: cfg.Log, modules: cfg.Modules, bootServe: cfg.BootToServe, powerOff: cfg.PowerOff,
		containers: cfg.Containers, shared: &sharedFS{mountPoint: cfg.SharedMount, mounted: cfg.SharedMounted},
		portSlots: make(chan struct{}, maxPortConns),
		ephemeral: &ephemeralStorages{dir: ephemeralDir, mounted: map[string]string{}},
		blocks:    &blockMounts{dir: blockDir, sysfs: "/sys/block", dev: "/dev", mounted: map[string][]string{}},
	}
}

// Register registers the agent's services on srv.
func (a *Agent) Register(srv *ttrpc.Server) {
	protocol.RegisterHealthService(srv, healthService{log: a.log})
	protocol.RegisterAgentService(srv, a)
}

type healthService struct{ log *slog.Logger }

// Check answers the health check every host connection starts with. It
// also makes a VM restored from a template its own, since the host's
// first call after the restore is this one: the clock is brought back in
// line with the hardware clock (the VM resumed with the template's time)
// and the kernel's random number generator is reseeded from the host's
// (it resumed with the template's state).
func (h healthService) Check(context.Context, *protocol.CheckRequest) (*protocol.CheckResponse, error) {
	if step, err := boot.SyncClockFromRTC(2 * time.Second); err != nil {
		h.log.Debug("clock sync", "err", err)
	} else if step != 0 {
		h.log.Info("clock stepped to the hardware clock", "step", step)
	}
	if err := boot.ReseedRandom(time.Second); err != nil {
		h.log.Warn("reseed random", "err", err)
	}
	return &protocol.CheckResponse{Status: protocol.CheckResponse_SERVING}, nil
}

func (healthService) Version(context.Context, *protocol.VersionRequest) (*protocol.VersionResponse, error) {
	return &protocol.VersionResponse{AgentVersion: version.Version, ProtocolVersion: protocol.Version}, nil
}

// GetGuestDetails describes the guest kernel and resources.
func (a *Agent) GetGuestDetails(ctx context.Context, _ *protocol.GetGuestDetailsRequest) (*protocol.GuestDetails, error) {
	modules, err := a.modules(ctx)
	if err != nil {
		return nil, fmt.Errorf("kernel modules: %w", err)
	}
	var u unix.Utsname
	unix.Uname(&u)
	var si unix.Sysinfo_t
	unix.Sysinfo(&si)
	d := &protocol.GuestDetails{
		KernelRelease:     unix.ByteSliceToString(u.Release[:]),
		KernelVersion:     unix.ByteSliceToString(u.Version[:]),
		Machine:           unix.ByteSliceToString(u.Machine[:]),
		Hostname:          unix.ByteSliceToString(u.Nodename[:]),
		OnlineCpus:        uint32(onlineCPUs()),
		MemTotalBytes:     uint64(si.Totalram) * uint64(si.Unit),
		MemFreeBytes:      uint64(si.Freeram) * uint64(si.Unit),
		UptimeNs:          uint64(si.Uptime) * uint64(time.Second),
		Modules:           modules,
		BootToServeNs:     uint64(a.bootServe),
		AgentVersion:      version.Version,
		MemBlockSizeBytes: memBlockSize(),
		BlockDevices:      blockDevices(),
	}
	return d, nil
}

// DestroySandbox flushes the guest's file systems, replies, and powers
// the VM off shortly after. Once the reply says synced, the host may end
// the VM at once rather than wait for the guest's power-off, which under
// TCG takes a hundred milliseconds or more.
func (a *Agent) DestroySandbox(context.Context, *protocol.DestroySandboxRequest) (*protocol.DestroySandboxResponse, error) {
	a.log.Info("destroy requested: flushing and powering off")
	// Every container is gone by now (the host removes them first); what
	// they wrote through mmap, and any block device's file system, is
	// flushed before the host may pull the plug.
	unix.Sync()
	// Give ttrpc time to write the reply before the VM goes away.
	time.AfterFunc(20*time.Millisecond, a.powerOff)
	return &protocol.DestroySandboxResponse{Synced: true}, nil
}

// onlineCPUs counts the CPUs in /sys/devices/system/cpu/online ("0-3,5").
func onlineCPUs() int {
	b, err := os.ReadFile("/sys/devices/system/cpu/online")
	if err != nil {
		return 0
	}
	return countCPUList(strings.TrimSpace(string(b)))
}

func countCPUList(s string) int {
	n := 0
	for _, part := range strings.Split(s, ",") {
		lo, hi, isRange := strings.Cut(part, "-")
		a, err := strconv.Atoi(lo)
		if err != nil {
			continue
		}
		if !isRange {
			n++
			continue
		}
		b, err := strconv.Atoi(hi)
		if err == nil && b >= a {
			n += b - a + 1
		}
	}
	return n
}

func memBlockSize() uint64 {
	f, err := os.Open("/sys/devices/system/memory/block_size_bytes")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	if !sc.Scan() {
		return 0
	}
	v, _ := strconv.ParseUint(strings.TrimSpace(sc.Text()), 16, 64)
	return v
}

// blockDevices lists the disks the kernel sees, without loop and ram disks.
func blockDevices() []string {
	entries, err := os.ReadDir("/sys/block")
	if err != nil {
		return nil
	}
	var out []string
	for _, e := range entries {
		if n := e.Name(); !strings.HasPrefix(n, "loop") && !strings.HasPrefix(n, "ram") {
			out = append(out, n)
		}
	}
	return out
}
