package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestDeviceCommands: `cocoon device add|ls|rm` hot-plug an image file
// into a running sandbox and out again, each from a process of its own
// (the device is recorded with the sandbox); the guest sees the disk by
// its name as serial while it is attached.
func TestDeviceCommands(t *testing.T) {
	c := needVM(t)
	id := "devhot"
	c.deleteAtEnd(t, id)
	c.ok(t, "run", "-d", "--boot-timeout", "2m", "--hotplug-slots", "1", "--bundle", c.bundle(t, "sleep", "600"), id)
	img := filepath.Join(t.TempDir(), "data.img")
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, 16<<20); err != nil {
		t.Fatal(err)
	}
	serials := func() string {
		return c.ok(t, "exec", id, "sh", "-c", "cat /sys/block/*/serial 2>/dev/null; true")
	}
	waitSerial := func(present bool) {
		t.Helper()
		for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
			if strings.Contains(serials(), "data0") == present {
				return
			}
		}
		t.Fatalf("guest disks' serials %q: data0 present = %v expected", serials(), present)
	}

	c.ok(t, "device", "add", id, "data0", img)
	waitSerial(true)
	var ds []struct {
		ID   string `json:"id"`
		Path string `json:"path"`
	}
	if err := json.Unmarshal([]byte(c.ok(t, "--json", "device", "ls", id)), &ds); err != nil || len(ds) != 1 || ds[0].ID != "data0" || ds[0].Path != img {
		t.Fatalf("device ls: %+v, %v", ds, err)
	}
	if r := c.run(t, nil, "device", "add", id, "data0", img); r.code == 0 {
		t.Errorf("adding data0 twice: %v", r)
	}
	if r := c.run(t, nil, "device", "add", id, "../x", img); r.code == 0 || !strings.Contains(r.stderr, "../x") {
		t.Errorf("a bad name: %v", r)
	}
	if r := c.run(t, nil, "device", "add", id, "chr", "/dev/null"); r.code == 0 {
		t.Errorf("a character device: %v", r)
	}

	c.ok(t, "device", "rm", id, "data0")
	waitSerial(false)
	if r := c.run(t, nil, "device", "rm", id, "data0"); r.code == 0 {
		t.Errorf("removing data0 twice: %v", r)
	}
	if out := c.ok(t, "--json", "device", "ls", id); strings.TrimSpace(out) != "[]" {
		t.Errorf("device ls after rm: %q", out)
	}
}
