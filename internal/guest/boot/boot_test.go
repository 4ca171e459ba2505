package boot

import "testing"

func TestParseCmdline(t *testing.T) {
	p := ParseCmdline("console=ttyS0 quiet cocoon.transport=vsock cocoon.hostname=pod-1 cocoon.debug=1 cocoon.agent_ports=6")
	if p.Transport != "vsock" || p.Hostname != "pod-1" || !p.Debug || p.AgentPorts != 6 {
		t.Fatalf("ParseCmdline = %+v", p)
	}
	d := ParseCmdline("console=ttyS0")
	if d.Transport != "virtio-serial" || d.Hostname != "cocoon" || d.Debug || d.AgentPorts != 1 {
		t.Fatalf("defaults = %+v", d)
	}
	// A hostname with characters the kernel would accept but we do not is
	// ignored rather than applied.
	if h := ParseCmdline("cocoon.hostname=a/b").Hostname; h != "cocoon" {
		t.Fatalf("invalid hostname accepted: %q", h)
	}
}

func TestParseCmdlineBoundsPorts(t *testing.T) {
	for _, bad := range []string{"0", "-1", "32", "x"} {
		if n := ParseCmdline("cocoon.agent_ports=" + bad).AgentPorts; n != 1 {
			t.Errorf("agent_ports=%s gave %d", bad, n)
		}
	}
}
