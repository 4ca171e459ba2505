package network

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// handleAt opens the netns at path and a netlink handle in it.
func handleAt(path string) (*netlink.Handle, func(), error) {
	ns, err := netns.GetFromPath(path)
	if err != nil {
		return nil, nil, fmt.Errorf("open network namespace %s: %w", path, err)
	}
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		ns.Close()
		return nil, nil, fmt.Errorf("network namespace %s: netlink: %w", path, err)
	}
	return h, func() { h.Close(); ns.Close() }, nil
}

// inNetNS runs fn on a locked thread switched into the netns at path: a
// tun device binds the netns of the thread that opens it. With sysfs, the
// thread first gets a mount namespace of its own with the netns's sysfs
// on /sys (which shows a netns's devices only from within it), and so
// ends with fn rather than serve others; without, it is switched back.
func inNetNS(path string, sysfs bool, fn func() error) error {
	target, err := netns.GetFromPath(path)
	if err != nil {
		return fmt.Errorf("open network namespace %s: %w", path, err)
	}
	defer target.Close()
	ch := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			ch <- fmt.Errorf("current network namespace: %w", err)
			return
		}
		defer orig.Close()
		if sysfs {
			// The thread is not unlocked again: it goes with the goroutine.
			if err := unix.Unshare(unix.CLONE_NEWNS); err != nil {
				ch <- fmt.Errorf("mount namespace: %w", err)
				return
			}
			if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
				ch <- fmt.Errorf("mount namespace: %w", err)
				return
			}
		}
		if err := netns.Set(target); err != nil {
			if !sysfs {
				runtime.UnlockOSThread()
			}
			ch <- fmt.Errorf("enter network namespace %s: %w", path, err)
			return
		}
		if sysfs {
			if err := unix.Mount("sysfs", "/sys", "sysfs", unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NOEXEC|unix.MS_NODEV, ""); err != nil {
				ch <- fmt.Errorf("network namespace %s: mount its sysfs: %w", path, err)
				return
			}
			ch <- fn()
			return
		}
		ferr := fn()
		if err := netns.Set(orig); err != nil {
			// The thread stays locked, so it ends with this goroutine
			// rather than serve others in the pod's netns.
			ch <- fmt.Errorf("leave network namespace %s: %w (after %v)", path, err, ferr)
			return
		}
		runtime.UnlockOSThread()
		ch <- ferr
	}()
	if err := <-ch; err != nil {
		return fmt.Errorf("network namespace %s: %w", path, err)
	}
	return nil
}

// openTap creates tap name in the netns at path and returns a file for
// each of its queues: more than one makes it multi-queue.
func openTap(path, name string, queues int) (files []*os.File, err error) {
	err = inNetNS(path, false, func() error {
		for i := range queues {
			f, err := tapFile(name, i == 0, queues > 1)
			if err != nil {
				for _, f := range files {
					f.Close()
				}
				files = nil
				return err
			}
			files = append(files, f)
		}
		return nil
	})
	return files, err
}

// OpenGivenTap opens tap name, which another made (a CNI plugin, a DAN
// device), in the netns at path, or in this process's when path is "".
func OpenGivenTap(path, name string) (*os.File, error) {
	if path == "" {
		return tapFile(name, false, false)
	}
	var f *os.File
	err := inNetNS(path, false, func() (err error) {
		f, err = tapFile(name, false, false)
		return err
	})
	return f, err
}

// tapFile opens tap name in the current thread's netns: with create, a
// new one (non-persistent) that must not exist yet, since one that does is
// another's; without, one that exists (with multiQueue, one more queue of
// a multi-queue tap). IFF_VNET_HDR lets the VMM pass checksum and
// segmentation offloads through.
func tapFile(name string, create, multiQueue bool) (*os.File, error) {
	if !create && !multiQueue {
		l, err := netlink.LinkByName(name)
		if err != nil {
			return nil, fmt.Errorf("tap %s: %w", name, err)
		}
		if l.Type() != "tuntap" {
			return nil, fmt.Errorf("tap %s: a %s, not a tap", name, l.Type())
		}
	}
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open /dev/net/tun: %w", err)
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("tap %q: %w", name, err)
	}
	flags := uint16(unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR)
	if create {
		flags |= unix.IFF_TUN_EXCL
	}
	if multiQueue {
		flags |= unix.IFF_MULTI_QUEUE
	}
	ifr.SetUint16(flags)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("open tap %s: %w", name, err)
	}
	return os.NewFile(uintptr(fd), "tap:"+name), nil
}

// openMacvtap opens the character device of macvtap name in the netns at
// path. Its node in /dev is named after the ifindex, which another
// netns's macvtap may share, so the device number is read from the
// netns's own sysfs and the device opened through a node of Cocoon's,
// made for the open and removed after.
func openMacvtap(h *netlink.Handle, path, name string, queues int) (files []*os.File, err error) {
	l, err := h.LinkByName(name)
	if err != nil {
		return nil, fmt.Errorf("macvtap %s: %w", name, err)
	}
	if l.Type() != "macvtap" {
		return nil, fmt.Errorf("macvtap %s: a %s, not a macvtap", name, l.Type())
	}
	var dev uint64
	err = inNetNS(path, true, func() error {
		b, err := os.ReadFile(filepath.Join("/sys/class/net", name, "macvtap", fmt.Sprintf("tap%d", l.Attrs().Index), "dev"))
		if err != nil {
			return fmt.Errorf("macvtap %s: device number: %w", name, err)
		}
		dev, err = parseDevNum(strings.TrimSpace(string(b)))
		if err != nil {
			return fmt.Errorf("macvtap %s: %w", name, err)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "cocoon-macvtap-")
	if err != nil {
		return nil, fmt.Errorf("macvtap %s: %w", name, err)
	}
	defer os.RemoveAll(dir)
	node := filepath.Join(dir, "tap")
	if err := unix.Mknod(node, unix.S_IFCHR|0o600, int(dev)); err != nil {
		return nil, fmt.Errorf("macvtap %s: device node: %w", name, err)
	}
	// Each open is a queue of the macvtap.
	for range queues {
		fd, err := unix.Open(node, unix.O_RDWR|unix.O_CLOEXEC, 0)
		if err != nil {
			for _, f := range files {
				f.Close()
			}
			return nil, fmt.Errorf("open macvtap %s: %w", name, err)
		}
		files = append(files, os.NewFile(uintptr(fd), "macvtap:"+name))
	}
	return files, nil
}

// OpenVhostNet opens n files of the vhost-net device at path, for the
// kernel to move a NIC's frames; none when the host has no such device.
func OpenVhostNet(path string, n int) ([]*os.File, error) {
	if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	var files []*os.File
	for range n {
		f, err := os.OpenFile(path, os.O_RDWR, 0)
		if err != nil {
			for _, f := range files {
				f.Close()
			}
			return nil, fmt.Errorf("vhost-net: %w", err)
		}
		files = append(files, f)
	}
	return files, nil
}

// parseDevNum reads a device number in sysfs's "major:minor" form.
func parseDevNum(s string) (uint64, error) {
	maj, min, ok := strings.Cut(s, ":")
	a, err1 := strconv.ParseUint(maj, 10, 32)
	b, err2 := strconv.ParseUint(min, 10, 32)
	if !ok || err1 != nil || err2 != nil {
		return 0, fmt.Errorf("bad device number %q", s)
	}
	return unix.Mkdev(uint32(a), uint32(b)), nil
}
