package container

import (
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// vmDevices lists the device nodes below dev (the VM's devtmpfs) that a
// privileged container gets instead of the host's, which the host's spec
// lists but which mean nothing in the VM. Left out, as containerd leaves
// them out of a host's list: the pseudo-terminal, shared memory and queue
// directories and the console; and the agent's own channel to the host
// (the virtio-serial ports and hypervisor consoles).
func vmDevices(dev string) ([]specs.LinuxDevice, error) {
	var out []specs.LinuxDevice
	err := filepath.WalkDir(dev, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if p == dev {
				return err
			}
			return nil // vanished while walking
		}
		rel, _ := filepath.Rel(dev, p)
		if d.IsDir() {
			if slices.Contains([]string{"pts", "shm", "mqueue", "fd", "virtio-ports"}, rel) {
				return filepath.SkipDir
			}
			return nil
		}
		if rel == "console" || strings.HasPrefix(rel, "vport") || strings.HasPrefix(rel, "hvc") {
			return nil
		}
		var st unix.Stat_t
		if unix.Lstat(p, &st) != nil {
			return nil
		}
		var typ string
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFCHR:
			typ = "c"
		case unix.S_IFBLK:
			typ = "b"
		default:
			return nil
		}
		mode := os.FileMode(st.Mode & 0o777)
		uid, gid := st.Uid, st.Gid
		out = append(out, specs.LinuxDevice{
			Path: filepath.Join("/dev", rel), Type: typ,
			Major: int64(unix.Major(st.Rdev)), Minor: int64(unix.Minor(st.Rdev)),
			FileMode: &mode, UID: &uid, GID: &gid,
		})
		return nil
	})
	return out, err
}
