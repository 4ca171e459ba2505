package agent

import (
	"errors"
	"strings"
	"testing"

	"github.com/cocoon-runtime/cocoon/agent/protocol"
)

func TestValidateDetailsRejectsHostileReplies(t *testing.T) {
	cases := map[string]*protocol.GuestDetails{
		"too many modules": {Modules: make([]string, maxModules+1)},
		"too many disks":   {BlockDevices: make([]string, maxModules+1)},
		"absurd cpus":      {OnlineCpus: maxCPUs + 1},
		"absurd memory":    {MemTotalBytes: maxMemory + 1},
		"free above total": {MemTotalBytes: 10, MemFreeBytes: 11},
	}
	for name, r := range cases {
		if _, err := validateDetails(r); !errors.Is(err, ErrProtocol) {
			t.Errorf("%s: err = %v, want ErrProtocol", name, err)
		}
	}
}

func TestValidateDetailsSanitizes(t *testing.T) {
	d, err := validateDetails(&protocol.GuestDetails{
		KernelRelease: "6.1\x1b[31m\n" + strings.Repeat("A", 1000),
		Hostname:      "h\x00ost",
		Modules:       []string{"virtio\x07"},
		MemTotalBytes: 100, MemFreeBytes: 50, OnlineCpus: 2,
	})
	if err != nil {
		t.Fatal(err)
	}
	if strings.ContainsAny(d.KernelRelease, "\x1b\n") || len(d.KernelRelease) > maxFieldSize {
		t.Errorf("kernel release not sanitized: %q", d.KernelRelease)
	}
	if d.Hostname != "host" || d.Modules[0] != "virtio" {
		t.Errorf("hostname %q modules %q", d.Hostname, d.Modules)
	}
}
