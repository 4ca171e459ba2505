package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/cocoon-runtime/cocoon/agent/protocol"
	"golang.org/x/sys/unix"
)

// The host hot-plugs vCPUs (ACPI CPU hotplug) and memory (virtio-mem)
// into a running VM; the guest kernel sees them and, for memory, onlines
// them itself (boot.AutoOnlineMemory set the policy), but leaves a new
// vCPU offline until asked. OnlineResources asks. To shrink, the host
// unplugs memory and, under KVM, vCPUs; under TCG it cannot plug a vCPU
// again once unplugged (QEMU 7.2 never frees a vCPU's TCG context), so
// it keeps them and asks for fewer online: OnlineResources then takes the
// highest-numbered ones offline.

const (
	sysCPU    = "/sys/devices/system/cpu"
	sysMemory = "/sys/devices/system/memory"
	// maxOnlineWait bounds a host's timeout_ms.
	maxOnlineWait = 30 * time.Second
)

// OnlineResources makes req.Vcpus vCPUs online (waiting for the guest
// kernel to see as many, or offlining the highest-numbered beyond them),
// onlines every offline memory block, and reports what is online.
func (a *Agent) OnlineResources(ctx context.Context, req *protocol.OnlineResourcesRequest) (*protocol.GuestResources, error) {
	wait := min(time.Duration(req.TimeoutMs)*time.Millisecond, maxOnlineWait)
	ctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	for {
		online, err := setOnlineCPUs(sysCPU, int(req.Vcpus))
		if err != nil {
			return nil, err
		}
		if err := onlineMemory(sysMemory); err != nil {
			return nil, err
		}
		if uint32(online) >= req.Vcpus || ctx.Err() != nil {
			var si unix.Sysinfo_t
			unix.Sysinfo(&si)
			a.log.Debug("resources online", "cpus", online, "asked", req.Vcpus)
			return &protocol.GuestResources{OnlineCpus: uint32(online), MemTotalBytes: uint64(si.Totalram) * uint64(si.Unit)}, nil
		}
		select {
		case <-ctx.Done():
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// sysDevice is a vCPU or memory block under /sys/devices/system.
type sysDevice struct {
	n    int
	file string // its online (vCPU) or state (memory) file; "" for none
}

// sysDevices lists dir's devices named prefix<N> in N's order.
func sysDevices(dir, prefix, file string) ([]sysDevice, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("list %ss: %w", prefix, err)
	}
	var out []sysDevice
	for _, e := range ents {
		s, ok := strings.CutPrefix(e.Name(), prefix)
		if !ok {
			continue
		}
		n, err := strconv.Atoi(s)
		if err != nil || n < 0 {
			continue
		}
		d := sysDevice{n: n, file: filepath.Join(dir, e.Name(), file)}
		if _, err := os.Stat(d.file); errors.Is(err, os.ErrNotExist) {
			d.file = "" // the boot CPU has no online file
		}
		out = append(out, d)
	}
	slices.SortFunc(out, func(a, b sysDevice) int { return a.n - b.n })
	return out, nil
}

// state reads d's online or state file; a device without one is online.
func (d sysDevice) state() (string, error) {
	if d.file == "" {
		return "1", nil
	}
	b, err := os.ReadFile(d.file)
	if err != nil {
		return "", fmt.Errorf("read %s: %w", d.file, err)
	}
	return strings.TrimSpace(string(b)), nil
}

// setOnlineCPUs onlines the lowest-numbered offline vCPUs of dir, or
// offlines the highest-numbered online ones, until want are online (or
// no more can be), and returns how many are online.
func setOnlineCPUs(dir string, want int) (int, error) {
	cpus, err := sysDevices(dir, "cpu", "online")
	if err != nil {
		return 0, err
	}
	var online, offline []sysDevice
	for _, c := range cpus {
		st, err := c.state()
		if err != nil {
			return 0, err
		}
		if st == "0" {
			offline = append(offline, c)
		} else {
			online = append(online, c)
		}
	}
	for len(online) < want && len(offline) > 0 {
		c := offline[0]
		offline = offline[1:]
		// A vCPU the kernel cannot bring up stays offline; the count
		// says so.
		if os.WriteFile(c.file, []byte("1"), 0) == nil {
			online = append(online, c)
		}
	}
	for i := len(online) - 1; len(online) > want && i >= 0; i-- {
		if c := online[i]; c.file != "" && os.WriteFile(c.file, []byte("0"), 0) == nil {
			online = slices.Delete(online, i, i+1)
		}
	}
	return len(online), nil
}

// onlineMemory onlines every offline memory block of dir. A block that
// cannot go online (no room for its memory map) stays offline; what is
// online is reported either way.
func onlineMemory(dir string) error {
	blocks, err := sysDevices(dir, "memory", "state")
	if err != nil {
		return err
	}
	for _, b := range blocks {
		st, err := b.state()
		if err != nil {
			return err
		}
		if st == "offline" {
			os.WriteFile(b.file, []byte("online"), 0)
		}
	}
	return nil
}
