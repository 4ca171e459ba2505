package qemu

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ReclaimBootMemory asks the host kernel to drop QEMU's resident pages of
// the guest kernel and initramfs files. QEMU keeps both mapped as ROM images
// for a guest reset, which a sandbox never does (QEMU runs with -no-reboot),
// so once the guest booted those pages are dead weight: ~50 MiB of a
// 256 MiB VM. They are clean page cache, so paging them out costs no I/O,
// and if QEMU ever touches them again they are read back from the files.
func (q *QEMU) ReclaimBootMemory() error {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.proc == nil || !q.proc.Alive() {
		return nil
	}
	var paths []string
	for _, p := range []string{q.launch.cfg.Kernel, q.launch.cfg.Initrd} {
		if p == "" {
			continue
		}
		if r, err := filepath.EvalSymlinks(p); err == nil {
			p = r
		}
		paths = append(paths, p)
	}
	ranges, err := fileMappings(q.proc.Pid(), paths)
	if err != nil {
		return fmt.Errorf("reclaim boot memory of vm %s: %w", q.id, err)
	}
	if len(ranges) == 0 {
		return nil
	}
	// struct iovec, laid out by hand: the addresses are QEMU's, not ours, so
	// they must never become Go pointers.
	type remoteIovec struct{ base, len uintptr }
	iov := make([]remoteIovec, len(ranges))
	for i, r := range ranges {
		iov[i] = remoteIovec{r[0], r[1] - r[0]}
	}
	_, _, errno := unix.Syscall6(unix.SYS_PROCESS_MADVISE, uintptr(q.proc.Pidfd()),
		uintptr(unsafe.Pointer(&iov[0])), uintptr(len(iov)), unix.MADV_PAGEOUT, 0, 0)
	if errno != 0 {
		return fmt.Errorf("reclaim boot memory of vm %s: process_madvise: %w", q.id, errno)
	}
	return nil
}

// fileMappings returns the address ranges [start, end) where pid maps any
// of paths.
func fileMappings(pid int, paths []string) ([][2]uintptr, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/maps", pid))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	want := make(map[string]bool, len(paths))
	for _, p := range paths {
		want[p] = true
	}
	var out [][2]uintptr
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 6 || !want[fields[5]] {
			continue
		}
		lo, hi, ok := strings.Cut(fields[0], "-")
		if !ok {
			continue
		}
		start, err1 := strconv.ParseUint(lo, 16, 64)
		end, err2 := strconv.ParseUint(hi, 16, 64)
		if err1 == nil && err2 == nil && end > start {
			out = append(out, [2]uintptr{uintptr(start), uintptr(end)})
		}
	}
	return out, sc.Err()
}
