package storage

import (
	"crypto/sha256"
	"encoding/hex"
	"strings"

	"github.com/cocoon-runtime/cocoon/agent/protocol"
	"golang.org/x/sys/unix"
)

// emptyDirPart is in the host path of every Kubernetes emptyDir volume
// (the kubelet's /var/lib/kubelet/pods/<uid>/volumes/kubernetes.io~empty-dir/<name>).
const emptyDirPart = "/volumes/kubernetes.io~empty-dir/"

// MemoryEmptyDir reports whether the bind source src is a Kubernetes
// emptyDir of medium Memory: a directory of that path whose filesystem
// is a tmpfs (the kubelet mounts one, sized by the volume's sizeLimit).
// Such a volume is made a tmpfs in the guest instead of being shared: it
// is memory of the pod, and the guest's memory is where the pod runs.
// name identifies it in the sandbox (the same for every container that
// binds it) and size is the host tmpfs's.
func MemoryEmptyDir(src string) (name string, size uint64, ok bool) {
	if !strings.Contains(src, emptyDirPart) {
		return "", 0, false
	}
	var st unix.Statfs_t
	if err := unix.Statfs(src, &st); err != nil || st.Type != unix.TMPFS_MAGIC || st.Blocks == 0 {
		return "", 0, false
	}
	var stx unix.Statx_t
	if err := unix.Statx(unix.AT_FDCWD, src, unix.AT_SYMLINK_NOFOLLOW, unix.STATX_TYPE, &stx); err != nil || stx.Mode&unix.S_IFMT != unix.S_IFDIR {
		return "", 0, false
	}
	sum := sha256.Sum256([]byte(src))
	return hex.EncodeToString(sum[:])[:protocol.EphemeralNameLen], st.Blocks * uint64(st.Bsize), true
}
