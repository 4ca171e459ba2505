package network

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// NewNetNS makes a new network namespace and bind-mounts it at path, as
// `ip netns add` does, with its loopback up. path must not exist; its
// directory is made (mode 0755) if missing. On error nothing is left.
func NewNetNS(path string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("new network namespace %s: %w", path, err)
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_RDONLY, 0o444)
	if err != nil {
		return fmt.Errorf("new network namespace %s: %w", path, err)
	}
	f.Close()
	errc := make(chan error, 1)
	go func() {
		// The thread is never unlocked: it ends with this goroutine, in
		// the new namespace, rather than run others there.
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("unshare: %w", err)
			return
		}
		self := fmt.Sprintf("/proc/%d/task/%d/ns/net", os.Getpid(), unix.Gettid())
		if err := unix.Mount(self, path, "", unix.MS_BIND, ""); err != nil {
			errc <- fmt.Errorf("bind mount: %w", err)
			return
		}
		lo, err := netlink.LinkByName("lo")
		if err == nil {
			err = netlink.LinkSetUp(lo)
		}
		if err != nil {
			errc <- fmt.Errorf("loopback up: %w", err)
			return
		}
		errc <- nil
	}()
	if err := <-errc; err != nil {
		DeleteNetNS(path)
		return fmt.Errorf("new network namespace %s: %w", path, err)
	}
	return nil
}

// DeleteNetNS unmounts the network namespace bind-mounted at path and
// removes the file; the namespace goes with its last user. A path that
// does not exist, or holds no mount, is not an error.
func DeleteNetNS(path string) error {
	if err := unix.Unmount(path, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("delete network namespace %s: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !os.IsNotExist(err) {
		return fmt.Errorf("delete network namespace %s: %w", path, err)
	}
	return nil
}

// Do runs fn on a thread switched into the network namespace at path,
// and switches back: a socket fn makes belongs to that namespace.
func Do(path string, fn func() error) error { return inNetNS(path, false, fn) }
