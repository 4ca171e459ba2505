package qemu

import (
	"fmt"
	"os"
)

// QEMU is the first thing a hostile guest attacks, so a confined QEMU
// (the default) runs with the least privilege that works:
//
//   - its seccomp sandbox: no obsolete system calls, no fork or exec (so
//     migration goes to a file descriptor the host opened, not through
//     "exec:"), no scheduler or resource changes;
//   - as a uid and gid of its own (per VM, so one compromised QEMU cannot
//     signal another VM's), with no capabilities;
//   - chrooted into an empty directory, so it can open no host file by
//     name: every file it needs after start (a saved state, a hot-plugged
//     disk, a tap, the shared file system's socket) is opened by the host
//     and passed over QMP.
//
// QEMU opens what its command line names (kernel, sockets, console, guest
// RAM file, /dev/kvm) while it starts, as root, and drops to the
// unprivileged uid and the chroot before the guest runs (it starts stopped
// and is continued over QMP).
//
// QEMU 7.2 installs its seccomp filter before it drops privileges, so the
// filter cannot deny the set*uid calls of -runas
// (elevateprivileges=deny kills QEMU with SIGSYS there): elevation is
// instead impossible because, once the uids are not root, the process has
// no capabilities left, and no_new_privs (set with the filter) and the
// exec ban keep it from gaining any.
const sandboxArg = "on,obsolete=deny,elevateprivileges=allow,spawn=deny,resourcecontrol=deny"

// uidBase is the first of the uids confined QEMUs run as; each VM gets
// one of uidRange uids after it, derived from its ID. No account needs to
// exist for them.
const (
	uidBase  = 0x70000000
	uidRange = 1 << 20
)

// confinedUID is the uid (and gid) the QEMU of VM id runs as.
func confinedUID(id string) uint32 {
	var h uint32 = 2166136261
	for i := 0; i < len(id); i++ {
		h = (h ^ uint32(id[i])) * 16777619
	}
	return uidBase + h%uidRange
}

func (l launch) confinementArgs() []string {
	uid := confinedUID(l.id)
	return []string{
		"-sandbox", sandboxArg,
		"-runas", fmt.Sprintf("%d:%d", uid, uid),
		"-chroot", l.files.root,
	}
}

// makeRoot creates the empty, root-owned directory a confined QEMU is
// chrooted into.
func makeRoot(dir string) error {
	if err := os.Mkdir(dir, 0o555); err != nil && !os.IsExist(err) {
		return fmt.Errorf("qemu chroot: %w", err)
	}
	return nil
}
