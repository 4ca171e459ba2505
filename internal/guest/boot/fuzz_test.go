package boot

import (
	"strings"
	"testing"
)

// FuzzParseCmdline checks what the agent takes from any kernel command
// line: a bounded port count, a valid hostname, each value from the last
// cocoon.* parameter that sets it, and nothing from other parameters.
func FuzzParseCmdline(f *testing.F) {
	f.Add("console=ttyS0 quiet cocoon.transport=vsock cocoon.hostname=pod-1 cocoon.debug=1 cocoon.agent_ports=6")
	f.Add("cocoon.hostname=a/b cocoon.agent_ports=32 cocoon.agent_ports=-1 cocoon.debug=yes")
	f.Add("cocoon.hostname=" + strings.Repeat("h", 65) + " cocoon.agent_ports=0x10")
	f.Add("cocoon.transport cocoon.hostname= cocoon.agent_ports=31\tcocoon.debug=true\n")
	f.Add("")
	f.Fuzz(func(t *testing.T, cmdline string) {
		p := ParseCmdline(cmdline)
		if p.AgentPorts < 1 || p.AgentPorts > 31 {
			t.Fatalf("%d agent ports", p.AgentPorts)
		}
		if !validHostname(p.Hostname) {
			t.Fatalf("hostname %q", p.Hostname)
		}
		// A value that is not the default was given by a parameter.
		given := func(key, value string) bool {
			for _, f := range strings.Fields(cmdline) {
				if k, v, _ := strings.Cut(f, "="); k == key && v == value {
					return true
				}
			}
			return false
		}
		if p.Hostname != "cocoon" && !given("cocoon.hostname", p.Hostname) {
			t.Fatalf("hostname %q is not on the command line", p.Hostname)
		}
		if p.Transport != "virtio-serial" && !given("cocoon.transport", p.Transport) {
			t.Fatalf("transport %q is not on the command line", p.Transport)
		}

		// Other parameters change nothing; a later cocoon.* parameter
		// wins.
		if q := ParseCmdline(cmdline + " cocoon.debugx=1 xcocoon.hostname=x console=cocoon.agent_ports=2"); q != p {
			t.Fatalf("other parameters changed %+v to %+v", p, q)
		}
		q := ParseCmdline(cmdline + " cocoon.agent_ports=7 cocoon.hostname=last cocoon.debug=0 cocoon.transport=vsock")
		if q.AgentPorts != 7 || q.Hostname != "last" || q.Debug || q.Transport != "vsock" {
			t.Fatalf("later parameters did not win: %+v", q)
		}
		// An invalid value leaves the one before it.
		if q := ParseCmdline(cmdline + " cocoon.agent_ports=32 cocoon.hostname=a_b"); q.AgentPorts != p.AgentPorts || q.Hostname != p.Hostname {
			t.Fatalf("invalid values changed %+v to %+v", p, q)
		}
	})
}
