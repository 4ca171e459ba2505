package network

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// vethNetNS makes a netns (removed at the test's end) holding veth eth0,
// whose peer is left in the netns as peer0, both up.
func vethNetNS(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	path := filepath.Join(t.TempDir(), "ns")
	if err := NewNetNS(path); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { DeleteNetNS(path) })
	h, closeNS, err := handleAt(path)
	if err != nil {
		t.Fatal(err)
	}
	defer closeNS()
	v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0", HardwareAddr: net.HardwareAddr{2, 0xcc, 0, 0, 0, 2}}, PeerName: "peer0"}
	if err := h.LinkAdd(v); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"eth0", "peer0"} {
		l, err := h.LinkByName(n)
		if err != nil {
			t.Fatal(err)
		}
		if err := h.LinkSetUp(l); err != nil {
			t.Fatal(err)
		}
	}
	return path
}

// sendFrame writes a broadcast Ethernet frame out of dev in the netns at
// path, with a packet socket.
func sendFrame(t *testing.T, path, dev string) {
	t.Helper()
	err := inNetNS(path, false, func() error {
		l, err := netlink.LinkByName(dev)
		if err != nil {
			return err
		}
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		frame := append([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 2, 0xcc, 0, 0, 0, 9, 0x88, 0xb5}, make([]byte, 50)...)
		return unix.Sendto(fd, frame, 0, &unix.SockaddrLinklayer{Ifindex: l.Attrs().Index, Halen: 6})
	})
	if err != nil {
		t.Fatal(err)
	}
}

// readsFrame reports whether a frame arrives on f within a second.
func readsFrame(t *testing.T, f *os.File) bool {
	t.Helper()
	fds := []unix.PollFd{{Fd: int32(f.Fd()), Events: unix.POLLIN}}
	n, err := unix.Poll(fds, 1000)
	return err == nil && n == 1
}

// Each model hands back a file on which the frames the veth receives
// arrive, and Remove leaves nothing Cocoon made.
func TestAttachModels(t *testing.T) {
	if _, err := exec.LookPath("tc"); err != nil {
		t.Skip("no tc")
	}
	for _, tc := range []struct {
		m      Model
		queues int
	}{{ModelTCFilter, 1}, {ModelMacvtap, 1}, {ModelTCFilter, 2}, {ModelMacvtap, 2}} {
		m := tc.m
		t.Run(fmt.Sprintf("%s-%d", m, tc.queues), func(t *testing.T) {
			path := vethNetNS(t)
			eps, _, _, err := Plan(path, m)
			if err != nil {
				t.Fatal(err)
			}
			var ep *Endpoint
			for i := range eps {
				if eps[i].Link == "eth0" {
					ep = &eps[i]
				}
			}
			if ep == nil || ep.Model != m {
				t.Fatalf("plan: %+v", eps)
			}
			mounts := sysMounts(t)
			files, err := Attach(path, []Endpoint{*ep}, tc.queues)
			if err != nil {
				t.Fatal(err)
			}
			// The netns's sysfs, mounted to read the macvtap's device
			// number, stays in the thread's own mount namespace.
			if got := sysMounts(t); got != mounts {
				t.Errorf("mounts on /sys: %d after Attach, %d before", got, mounts)
			}
			if len(files) != 1 || len(files[0]) != tc.queues {
				t.Fatalf("files %v, want %d queues", files, tc.queues)
			}
			sendFrame(t, path, "peer0")
			time.Sleep(100 * time.Millisecond)
			// One queue takes the frame, chosen by the kernel.
			got := false
			for _, f := range files[0] {
				got = got || readsFrame(t, f)
			}
			if !got {
				t.Errorf("no frame from the veth on the %s files", m)
			}
			CloseAll(files)
			if err := Remove(RecordOf(path, []Endpoint{*ep})); err != nil {
				t.Fatal(err)
			}
			out, _ := exec.Command("ip", "-n", filepath.Base(path), "link").CombinedOutput()
			h, closeNS, err := handleAt(path)
			if err != nil {
				t.Fatal(err)
			}
			defer closeNS()
			links, _ := h.LinkList()
			for _, l := range links {
				if strings.HasPrefix(l.Attrs().Name, "cctap") {
					t.Errorf("left after Remove: %s (%s)\n%s", l.Attrs().Name, l.Type(), out)
				}
			}
		})
	}
}

// A tap or macvtap another made is opened as it is (ModelNone), whatever
// model the sandbox has, and Remove leaves it.
func TestAttachGiven(t *testing.T) {
	for _, kind := range []string{"tuntap", "macvtap"} {
		t.Run(kind, func(t *testing.T) {
			path := vethNetNS(t)
			h, closeNS, err := handleAt(path)
			if err != nil {
				t.Fatal(err)
			}
			defer closeNS()
			if kind == "tuntap" {
				// As a plugin would: a persistent tap, no file open on it.
				if out, err := exec.Command("nsenter", "--net="+path, "ip", "tuntap", "add", "dev", "given0", "mode", "tap", "vnet_hdr").CombinedOutput(); err != nil {
					t.Fatalf("%v: %s", err, out)
				}
			} else {
				eth0, err := h.LinkByName("eth0")
				if err != nil {
					t.Fatal(err)
				}
				attrs := netlink.NewLinkAttrs()
				attrs.Name, attrs.ParentIndex = "given0", eth0.Attrs().Index
				if err := h.LinkAdd(&netlink.Macvtap{Macvlan: netlink.Macvlan{LinkAttrs: attrs, Mode: netlink.MACVLAN_MODE_BRIDGE}}); err != nil {
					t.Fatal(err)
				}
			}
			l, err := h.LinkByName("given0")
			if err != nil {
				t.Fatal(err)
			}
			if err := h.LinkSetUp(l); err != nil {
				t.Fatal(err)
			}
			ep, _, _, err := PlanInterface(path, "given0", ModelTCFilter, nil)
			if err != nil {
				t.Fatal(err)
			}
			if ep.Model != ModelNone || ep.Tap != "given0" || ep.Kind != kind {
				t.Fatalf("endpoint %+v", ep)
			}
			files, err := Attach(path, []Endpoint{ep}, 4)
			if err != nil {
				t.Fatal(err)
			}
			defer CloseAll(files)
			if len(files[0]) != 1 {
				t.Fatalf("%d files for a given %s, want 1", len(files[0]), kind)
			}
			dev := "given0"
			if kind == "macvtap" {
				dev = "peer0"
			}
			sendFrame(t, path, dev)
			time.Sleep(100 * time.Millisecond)
			if !readsFrame(t, files[0][0]) {
				t.Errorf("no frame on the %s's file", kind)
			}
			if err := Remove(RecordOf(path, []Endpoint{ep})); err != nil {
				t.Fatal(err)
			}
			if _, err := h.LinkByName("given0"); err != nil {
				t.Errorf("the given %s went with Remove: %v", kind, err)
			}
		})
	}
}

// No vhost-net device: no files, and the userspace path.
func TestOpenVhostNetAbsent(t *testing.T) {
	files, err := OpenVhostNet(filepath.Join(t.TempDir(), "vhost-net"), 2)
	if err != nil || files != nil {
		t.Fatalf("files %v, err %v", files, err)
	}
	// A device that is there is opened once a queue (here a stand-in file).
	dev := filepath.Join(t.TempDir(), "dev")
	if err := os.WriteFile(dev, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	files, err = OpenVhostNet(dev, 2)
	if err != nil || len(files) != 2 {
		t.Fatalf("files %v, err %v", files, err)
	}
	CloseAll([][]*os.File{files})
}

// sysMounts counts this process's mounts on /sys.
func sysMounts(t *testing.T) int {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) > 4 && f[4] == "/sys" {
			n++
		}
	}
	return n
}
