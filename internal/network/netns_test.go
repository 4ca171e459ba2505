package network

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

func TestNewNetNS(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	path := filepath.Join(t.TempDir(), "ns", "test")
	if err := NewNetNS(path); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { DeleteNetNS(path) })
	if err := NewNetNS(path); err == nil {
		t.Fatal("a second NewNetNS at the same path did not fail")
	}
	h, closeNS, err := handleAt(path)
	if err != nil {
		t.Fatal(err)
	}
	links, err := h.LinkList()
	closeNS()
	if err != nil {
		t.Fatal(err)
	}
	if len(links) != 1 || links[0].Attrs().Name != "lo" || links[0].Attrs().Flags&unix.IFF_UP == 0 {
		t.Fatalf("new netns links: %v, want lo, up", links)
	}
	// It is not the host's (nor the test's thread's).
	host, err := netlink.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	if len(host) < 2 {
		t.Fatalf("the test's own netns has %d links: NewNetNS left it in the new one", len(host))
	}
	if err := DeleteNetNS(path); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Fatalf("netns file after delete: %v", err)
	}
	if err := DeleteNetNS(path); err != nil {
		t.Fatalf("second delete: %v", err)
	}
}
