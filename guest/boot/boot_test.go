package boot

import "testing"

func TestParseCmdline(t *testing.T) {
	p := ParseCmdline("console=ttyS0 quiet cocoon.transport=vsock cocoon.hostname=pod-1 cocoon.debug=1")
	if p.Transport != "vsock" || p.Hostname != "pod-1" || !p.Debug {
		t.Fatalf("ParseCmdline = %+v", p)
	}
	d := ParseCmdline("console=ttyS0")
	if d.Transport != "virtio-serial" || d.Hostname != "cocoon" || d.Debug {
		t.Fatalf("defaults = %+v", d)
	}
	// A hostname with characters the kernel would accept but we do not is
	// ignored rather than applied.
	if h := ParseCmdline("cocoon.hostname=a/b").Hostname; h != "cocoon" {
		t.Fatalf("invalid hostname accepted: %q", h)
	}
}
