package ociimage

import (
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"

	"github.com/cocoon-runtime/cocoon/internal/specutil"
)

// The local images Cocoon's containerd recipe imports (no registry needed).
const (
	// BusyboxName is a busybox image whose default command is sh.
	BusyboxName = "cocoon.local/busybox:latest"
	// PauseName is the CRI sandbox image (sandbox_image in containerd's
	// configuration).
	PauseName = "cocoon.local/pause:latest"
)

// PauseScript is what the pause image runs with /bin/sh -c: it waits
// forever and exits 0 on SIGTERM or SIGINT. The trap matters: as PID 1 of
// a PID namespace, a process without a handler ignores those signals. The
// shell waiting on its child also reaps orphans when the pod shares its
// PID namespace.
const PauseScript = "trap 'exit 0' TERM INT; while :; do sleep 3600 & wait; done"

// BusyboxConfig is the configuration of the busybox image: `sh` in /.
func BusyboxConfig() ImageConfig {
	return ImageConfig{Cmd: []string{"sh"}, WorkingDir: "/"}
}

// PauseConfig is the configuration of the pause image.
func PauseConfig() ImageConfig {
	return ImageConfig{Entrypoint: []string{"/bin/sh", "-c", PauseScript}, WorkingDir: "/"}
}

// BusyboxImage is the busybox image, named name (BusyboxName when empty),
// for WriteBusybox.
func BusyboxImage(name string) Image {
	if name == "" {
		name = BusyboxName
	}
	return Image{Name: name, Config: BusyboxConfig()}
}

// PauseImage is the pause image, named name (PauseName when empty), for
// WriteBusybox.
func PauseImage(name string) Image {
	if name == "" {
		name = PauseName
	}
	return Image{Name: name, Config: PauseConfig()}
}

// WriteBusybox writes to w one archive holding images, all made of one
// busybox rootfs (their Rootfs is ignored) that specutil.BusyboxRootfs
// builds from the host's static busybox; they share their layer blob.
func WriteBusybox(w io.Writer, images ...Image) error {
	dir, err := os.MkdirTemp("", "ociimage-rootfs-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	if err := os.Chmod(dir, 0o755); err != nil {
		return err
	}
	if err := specutil.BusyboxRootfs(dir, ""); err != nil {
		return err
	}
	if err := normalizeModes(dir); err != nil {
		return fmt.Errorf("busybox rootfs: %w", err)
	}
	images = slices.Clone(images)
	for i := range images {
		images[i].Rootfs = dir
	}
	_, err = WriteImages(w, images...)
	return err
}

// WriteBusyboxFile writes the archive WriteBusybox makes to the file path,
// atomically (a temporary file in the same directory, renamed).
func WriteBusyboxFile(path string, images ...Image) error {
	return writeFileAtomic(path, func(w io.Writer) error { return WriteBusybox(w, images...) })
}

// Busybox writes to w an archive of the busybox image, named name
// (BusyboxName when empty).
func Busybox(w io.Writer, name string) error { return WriteBusybox(w, BusyboxImage(name)) }

// Pause writes to w an archive of the pause image, named name (PauseName
// when empty).
func Pause(w io.Writer, name string) error { return WriteBusybox(w, PauseImage(name)) }

// normalizeModes undoes the umask on a rootfs built by
// specutil.BusyboxRootfs: directories 0755 (/tmp 1777), executables 0755,
// other files 0644. Symlinks have no mode of their own.
func normalizeModes(root string) error {
	return filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		switch {
		case d.IsDir() && path == filepath.Join(root, "tmp"):
			// Not 0o1777: os.Chmod takes the sticky bit as fs.ModeSticky.
			return os.Chmod(path, fs.ModeSticky|0o777)
		case d.IsDir():
			return os.Chmod(path, 0o755)
		case d.Type().IsRegular():
			fi, err := d.Info()
			if err != nil {
				return err
			}
			mode := fs.FileMode(0o644)
			if fi.Mode()&0o111 != 0 {
				mode = 0o755
			}
			return os.Chmod(path, mode)
		}
		return nil
	})
}
