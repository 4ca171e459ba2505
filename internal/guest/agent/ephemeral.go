package agent

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"

	"github.com/cocoon-runtime/cocoon/agent/protocol"
	"golang.org/x/sys/unix"
)

// ephemeralDir is where the tmpfs of EPHEMERAL storages are mounted, each
// in a directory of its name.
const ephemeralDir = "/run/cocoon/ephemeral"

// maxEphemeralSize bounds an EPHEMERAL storage's size: a tmpfs's size is
// only a limit (its pages are the guest's memory, taken as written), but
// a number the kernel would refuse or overflow is refused first.
const maxEphemeralSize = 1 << 50

// ephemeralStorages are the sandbox's guest-only tmpfs volumes (memory
// emptyDirs): one for each name, made the first time a container names
// it and kept for the sandbox's life, so that the pod's containers share
// it.
type ephemeralStorages struct {
	dir     string
	mu      sync.Mutex
	mounted map[string]string // name → mount point
}

// mount returns the mount point of storage name, mounting a tmpfs of size
// bytes there the first time.
func (e *ephemeralStorages) mount(name string, size uint64) (string, error) {
	if !validEphemeralName(name) {
		return "", fmt.Errorf("ephemeral storage %q: want %d lowercase hex digits", name, protocol.EphemeralNameLen)
	}
	if size == 0 || size > maxEphemeralSize {
		return "", fmt.Errorf("ephemeral storage %s: size %d out of range", name, size)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if p, ok := e.mounted[name]; ok {
		return p, nil
	}
	p := filepath.Join(e.dir, name)
	if err := os.MkdirAll(p, 0o700); err != nil {
		return "", fmt.Errorf("ephemeral storage %s: %w", name, err)
	}
	// As the kubelet mounts a memory emptyDir: a world-writable directory
	// (the volume's own mode), no devices or set-uid programs.
	opts := "mode=0777,size=" + strconv.FormatUint(size, 10)
	if err := unix.Mount("tmpfs", p, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, opts); err != nil {
		return "", fmt.Errorf("ephemeral storage %s: mount tmpfs: %w", name, err)
	}
	e.mounted[name] = p
	return p, nil
}

func validEphemeralName(s string) bool {
	if len(s) != protocol.EphemeralNameLen {
		return false
	}
	for _, c := range []byte(s) {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}
