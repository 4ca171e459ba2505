package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/cocoon-runtime/cocoon/agent/protocol"
	"golang.org/x/sys/unix"
)

// blockDir is where block storages are mounted, each in a directory of
// its serial.
const blockDir = "/run/cocoon/block"

// blockWait bounds the wait for a hot-plugged disk to appear.
const blockWait = 10 * time.Second

// blockFSTypes are the file systems a block storage may hold.
var blockFSTypes = map[string]bool{"ext4": true, "xfs": true, "erofs": true}

// blockMounts are the sandbox's mounted block storages: containers' roots
// and block volumes, each disk mounted once, at dir/<serial>.
type blockMounts struct {
	dir   string
	sysfs string // /sys/block
	dev   string // /dev
	mu    sync.Mutex
	// mounted maps a container to the serials of its mounted disks.
	mounted map[string][]string
}

// mountRoot mounts the block storage st as container id's root
// filesystem and returns the mount point.
func (b *blockMounts) mountRoot(ctx context.Context, id string, st *protocol.Storage) (string, error) {
	return b.mount(ctx, id, "root storage", st)
}

// mountVolume mounts the block storage st, a block volume of container
// id, and returns the mount point, which the container's mount binds.
func (b *blockMounts) mountVolume(ctx context.Context, id string, st *protocol.Storage) (string, error) {
	return b.mount(ctx, id, "block volume", st)
}

func (b *blockMounts) mount(ctx context.Context, id, what string, st *protocol.Storage) (string, error) {
	if st.Kind != protocol.Storage_BLOCK {
		return "", fmt.Errorf("%s: kind %d, want a block device", what, int32(st.Kind))
	}
	if !protocol.ValidDiskSerial(st.Path) {
		return "", fmt.Errorf("%s: bad serial %q", what, st.Path)
	}
	if !blockFSTypes[st.Fstype] {
		return "", fmt.Errorf("%s %s: file system %q is not one of ext4, xfs, erofs", what, st.Path, st.Fstype)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, serials := range b.mounted {
		if slices.Contains(serials, st.Path) {
			return "", fmt.Errorf("%s %s mounted already", what, st.Path)
		}
	}
	dev, err := b.find(ctx, st.Path)
	if err != nil {
		return "", err
	}
	b.tune(filepath.Base(dev))
	p := filepath.Join(b.dir, st.Path)
	if err := os.MkdirAll(p, 0o700); err != nil {
		return "", fmt.Errorf("%s %s: %w", what, st.Path, err)
	}
	var flags uintptr
	if st.Readonly {
		flags |= unix.MS_RDONLY
	}
	if err := unix.Mount(dev, p, st.Fstype, flags, ""); err != nil {
		os.Remove(p)
		return "", fmt.Errorf("%s %s: mount %s (%s): %w", what, st.Path, dev, st.Fstype, err)
	}
	b.mounted[id] = append(b.mounted[id], st.Path)
	return p, nil
}

// diskQueue is how a container's disk is queued: no I/O scheduler (the
// host's does the scheduling; in the guest it only costs CPU, which under
// emulation is dear), not rotational, and a 4 MiB readahead, so a
// sequential read crosses virtio-blk in a few large requests rather than
// many 128 KiB ones.
var diskQueue = [][2]string{{"scheduler", "none"}, {"rotational", "0"}, {"read_ahead_kb", "4096"}}

// tune sets diskQueue on disk name (below /sys/block), best effort: a
// kernel without a setting keeps its default.
func (b *blockMounts) tune(name string) {
	for _, kv := range diskQueue {
		f, err := os.OpenFile(filepath.Join(b.sysfs, name, "queue", kv[0]), os.O_WRONLY|os.O_TRUNC, 0)
		if err != nil {
			continue
		}
		f.WriteString(kv[1])
		f.Close()
	}
}

// unmount unmounts every disk of container id (its root, its block
// volumes), if it has any.
func (b *blockMounts) unmount(id string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	var errs []error
	var left []string
	for _, serial := range b.mounted[id] {
		p := filepath.Join(b.dir, serial)
		if err := unix.Unmount(p, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
			errs = append(errs, fmt.Errorf("unmount disk %s of %s: %w", serial, id, err))
			left = append(left, serial)
			continue
		}
		os.Remove(p)
	}
	if len(left) > 0 {
		b.mounted[id] = left
	} else {
		delete(b.mounted, id)
	}
	return errors.Join(errs...)
}

// find waits for the disk whose serial is serial and returns its device
// node.
func (b *blockMounts) find(ctx context.Context, serial string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, blockWait)
	defer cancel()
	for {
		entries, _ := os.ReadDir(b.sysfs)
		for _, e := range entries {
			data, err := os.ReadFile(filepath.Join(b.sysfs, e.Name(), "serial"))
			if err == nil && strings.TrimSpace(string(data)) == serial {
				return filepath.Join(b.dev, e.Name()), nil
			}
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("no disk with serial %s after %v", serial, blockWait)
		case <-time.After(20 * time.Millisecond):
		}
	}
}
