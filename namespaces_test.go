package cocoon

import (
	"errors"
	"maps"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

func TestJoinedNamespaces(t *testing.T) {
	vm := []int{4242}
	cases := []struct {
		name string
		nss  []specs.LinuxNamespace
		id   string
		want map[specs.LinuxNamespaceType]string
		err  bool
	}{
		{name: "new namespaces", id: "c", nss: []specs.LinuxNamespace{{Type: "pid"}, {Type: "ipc"}, {Type: "mount"}}},
		{name: "CRI container", id: "c", nss: []specs.LinuxNamespace{
			{Type: "pid", Path: "/proc/4242/ns/pid"}, {Type: "ipc", Path: "/proc/4242/ns/ipc"},
			{Type: "uts", Path: "/proc/4242/ns/uts"}, {Type: "network", Path: "/proc/4242/ns/net"}, {Type: "mount"},
		}, want: map[specs.LinuxNamespaceType]string{"pid": "pod", "ipc": "pod", "uts": "pod"}},
		{name: "CNI netns", id: "c", nss: []specs.LinuxNamespace{{Type: "network", Path: "/var/run/netns/cni-1"}}},
		{name: "host namespace", id: "c", nss: []specs.LinuxNamespace{{Type: "ipc", Path: "/proc/1/ns/ipc"}}, err: true},
		{name: "wrong file", id: "c", nss: []specs.LinuxNamespace{{Type: "ipc", Path: "/proc/4242/ns/uts"}}, err: true},
		{name: "other path", id: "c", nss: []specs.LinuxNamespace{{Type: "ipc", Path: "/run/ipcns"}}, err: true},
		{name: "dotted pid", id: "c", nss: []specs.LinuxNamespace{{Type: "ipc", Path: "/proc/04242/ns/ipc"}}, err: true},
		{name: "deeper path", id: "c", nss: []specs.LinuxNamespace{{Type: "ipc", Path: "/proc/4242/ns/ipc/x"}}, err: true},
		{name: "unknown type", id: "c", nss: []specs.LinuxNamespace{{Type: "bogus", Path: "/proc/4242/ns/bogus"}}, err: true},
		{name: "the pod container itself", id: "pod", nss: []specs.LinuxNamespace{{Type: "ipc", Path: "/proc/4242/ns/ipc"}}, err: true},
	}
	for _, c := range cases {
		got, err := joinedNamespaces(c.id, c.nss, vm, "pod")
		if c.err {
			if !errors.Is(err, ErrInvalidConfig) {
				t.Errorf("%s: err %v, want ErrInvalidConfig", c.name, err)
			}
			continue
		}
		if err != nil || !maps.Equal(got, c.want) {
			t.Errorf("%s: %v, %v; want %v", c.name, got, err, c.want)
		}
	}
}
