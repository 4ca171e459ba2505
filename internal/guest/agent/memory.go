package agent

import (
	"context"
	"os"
	"runtime/debug"
	"strconv"
	"strings"

	"github.com/cocoon-runtime/cocoon/agent/protocol"
	"golang.org/x/sys/unix"
)

// Zeroing free memory stops this far above the kernel's minimum free
// memory, so that the guest never comes near its OOM killer.
const (
	zeroChunk   = 4 << 20
	zeroReserve = 8 << 20
)

// ReclaimMemory drops clean caches and zeroes the free memory: it maps
// anonymous memory, which the kernel hands out zeroed, until little is
// left free, and unmaps it again. A page the guest freed still holds its
// old bytes in the VM's RAM; once zeroed, the host can leave it out of a
// template's RAM file, and every clone's copy is that much smaller.
func (a *Agent) ReclaimMemory(ctx context.Context, _ *protocol.ReclaimMemoryRequest) (*protocol.ReclaimMemoryResponse, error) {
	debug.FreeOSMemory()
	unix.Sync()
	if err := os.WriteFile("/proc/sys/vm/drop_caches", []byte("3"), 0); err != nil {
		a.log.Debug("drop caches", "err", err)
	}
	reserve := uint64(zeroReserve) + 2*minFreeBytes()
	var chunks [][]byte
	var zeroed uint64
	for ctx.Err() == nil && freeBytes() > reserve+zeroChunk {
		c, err := unix.Mmap(-1, 0, zeroChunk, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_POPULATE)
		if err != nil {
			break
		}
		chunks = append(chunks, c)
		zeroed += zeroChunk
	}
	for _, c := range chunks {
		unix.Munmap(c)
	}
	a.log.Info("memory reclaimed", "zeroed_mib", zeroed>>20, "free_mib", freeBytes()>>20)
	return &protocol.ReclaimMemoryResponse{ZeroedBytes: zeroed, MemFreeBytes: freeBytes()}, ctx.Err()
}

func freeBytes() uint64 {
	var si unix.Sysinfo_t
	if unix.Sysinfo(&si) != nil {
		return 0
	}
	return uint64(si.Freeram) * uint64(si.Unit)
}

// minFreeBytes is the kernel's vm.min_free_kbytes, in bytes.
func minFreeBytes() uint64 {
	b, err := os.ReadFile("/proc/sys/vm/min_free_kbytes")
	if err != nil {
		return 4 << 20
	}
	kib, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		return 4 << 20
	}
	return kib << 10
}
