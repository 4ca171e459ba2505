package image

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

func testInitramfs(t *testing.T) ([]byte, []byte) {
	t.Helper()
	agent := fakeAgent(t, "1", false)
	mods := []moduleFile{
		{Name: "virtio_ring", Data: []byte("ring module")},
		{Name: "virtio", Data: []byte("virtio module!")},
		{Name: "overlay", Data: []byte("ovl")},
	}
	var b bytes.Buffer
	n, err := writeInitramfs(&b, agent, "6.1.0-test", mods)
	if err != nil {
		t.Fatal(err)
	}
	if n != int64(b.Len()) {
		t.Errorf("reported %d bytes, wrote %d", n, b.Len())
	}
	return b.Bytes(), agent
}

func TestInitramfsContents(t *testing.T) {
	archive, agent := testInitramfs(t)
	members := map[string]cpioMember{}
	var order []string
	for _, m := range readNewc(t, archive) {
		if _, dup := members[m.Name]; dup {
			t.Errorf("duplicate member %s", m.Name)
		}
		members[m.Name] = m
		order = append(order, m.Name)
		if m.UID != 0 || m.GID != 0 || m.Mtime != 0 {
			t.Errorf("%s: uid %d gid %d mtime %d, want zeros", m.Name, m.UID, m.GID, m.Mtime)
		}
	}
	for i := 1; i < len(order); i++ {
		if order[i-1] >= order[i] {
			t.Errorf("members not sorted: %s before %s", order[i-1], order[i])
		}
	}

	check := func(name string, mode, major, minor uint32) cpioMember {
		t.Helper()
		m, ok := members[name]
		if !ok {
			t.Fatalf("no %s in initramfs; have %v", name, order)
		}
		if m.Mode != mode || m.RdevMajor != major || m.RdevMinor != minor {
			t.Errorf("%s: mode %o rdev %d,%d; want mode %o rdev %d,%d", name, m.Mode, m.RdevMajor, m.RdevMinor, mode, major, minor)
		}
		return m
	}
	if m := check("init", 0o100755, 0, 0); !bytes.Equal(m.Data, agent) {
		t.Error("/init is not the agent")
	}
	if m := check("sbin/cocoon-modprobe", 0o120777, 0, 0); string(m.Data) != "/init" {
		t.Errorf("sbin/cocoon-modprobe links to %q", m.Data)
	}
	check("dev/console", 0o020600, 5, 1)
	check("dev/null", 0o020666, 1, 3)
	for _, d := range []string{"dev", "proc", "sys", "run", "etc", "etc/cocoon", "lib", "lib/modules", "lib/modules/6.1.0-test"} {
		check(d, 0o040755, 0, 0)
	}
	check("tmp", 0o041777, 0, 0)
	if m := check("lib/modules/6.1.0-test/virtio.ko", 0o100644, 0, 0); string(m.Data) != "virtio module!" {
		t.Errorf("virtio.ko holds %q", m.Data)
	}
	list := check("etc/cocoon/modules", 0o100644, 0, 0)
	want := "/lib/modules/6.1.0-test/virtio_ring.ko\n/lib/modules/6.1.0-test/virtio.ko\n/lib/modules/6.1.0-test/overlay.ko\n"
	if string(list.Data) != want {
		t.Errorf("modules list:\n%s\nwant:\n%s", list.Data, want)
	}
}

func TestInitramfsDeterministic(t *testing.T) {
	a, _ := testInitramfs(t)
	b, _ := testInitramfs(t)
	if !bytes.Equal(a, b) {
		t.Error("same inputs gave different archives")
	}
}

// GNU cpio, an independent reader, must agree.
func TestInitramfsGNUCpio(t *testing.T) {
	if _, err := exec.LookPath("cpio"); err != nil {
		t.Skip("cpio not installed")
	}
	archive, agent := testInitramfs(t)
	dir := t.TempDir()
	arc := filepath.Join(dir, "initramfs.cpio")
	if err := os.WriteFile(arc, archive, 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("cpio", "-itv", "-F", arc)
	cmd.Env = append(os.Environ(), "LC_ALL=C", "TZ=UTC")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("cpio -itv: %v\n%s", err, out)
	}
	listing := string(out)
	for _, re := range []string{
		`(?m)^crw-------\s+1 root\s+root\s+5,\s+1 .* dev/console$`,
		`(?m)^crw-rw-rw-\s+1 root\s+root\s+1,\s+3 .* dev/null$`,
		`(?m)^-rwxr-xr-x\s+1 root\s+root\s+\d+ .* init$`,
		`(?m)^-rw-r--r--\s+1 root\s+root\s+\d+ .* lib/modules/6.1.0-test/overlay.ko$`,
	} {
		if !regexp.MustCompile(re).MatchString(listing) {
			t.Errorf("cpio -itv output does not match %s:\n%s", re, listing)
		}
	}

	cmd = exec.Command("cpio", "-i", "--to-stdout", "-F", arc, "etc/cocoon/modules", "init")
	out, err = cmd.Output()
	if err != nil {
		t.Fatalf("cpio -i --to-stdout: %v", err)
	}
	if !bytes.Contains(out, agent) || !strings.Contains(string(out), "/lib/modules/6.1.0-test/overlay.ko\n") {
		t.Errorf("cpio extracted unexpected contents (%d bytes)", len(out))
	}
}
