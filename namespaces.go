package cocoon

import (
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/cocoon-runtime/cocoon/agent/protocol"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// Namespaces of a pod's containers.
//
// A container manager names the pod's namespaces by the path of the pod's
// task process: containerd's CRI gives a container of a pod
// /proc/<pid>/ns/ipc and /proc/<pid>/ns/uts of the sandbox task (and
// /proc/<pid>/ns/pid with PodPID). Every task of a Cocoon sandbox reports
// the VM's process as its pid, so such a path means "the pod's namespace
// of that type": the container joins, inside the VM, the namespace of the
// sandbox's pod container (its first container, the CRI's pause
// container). A path naming anything else is refused: it is a namespace
// of the host, which a container in a VM cannot join.
//
// The network namespace is the VM's whatever the spec says: a host path
// (the CNI's netns) means nothing in the guest.

// joinedNamespaces returns the namespaces of container id's spec nss
// that it joins: type → the container whose namespace of that type it
// joins. vmPids are the sandbox's VM processes; pod is its pod container.
func joinedNamespaces(id string, nss []specs.LinuxNamespace, vmPids []int, pod string) (map[specs.LinuxNamespaceType]string, error) {
	var join map[specs.LinuxNamespaceType]string
	for _, ns := range nss {
		if ns.Type == specs.NetworkNamespace || ns.Path == "" {
			continue
		}
		pid, file, ok := parseNamespacePath(ns.Path)
		want, known := protocol.NamespaceFile(string(ns.Type))
		if !known {
			return nil, fmt.Errorf("%w: unknown namespace type %q", ErrInvalidConfig, ns.Type)
		}
		if !ok || file != want || !slices.Contains(vmPids, pid) {
			return nil, fmt.Errorf("%w: %s namespace %s names no container of this pod: a container in a VM cannot join a host namespace", ErrInvalidConfig, ns.Type, ns.Path)
		}
		if pod == "" || pod == id {
			return nil, fmt.Errorf("%w: %s namespace %s: the pod has no container yet whose namespace could be joined", ErrInvalidConfig, ns.Type, ns.Path)
		}
		if join == nil {
			join = map[specs.LinuxNamespaceType]string{}
		}
		join[ns.Type] = pod
	}
	return join, nil
}

// parseNamespacePath splits /proc/<pid>/ns/<file>.
func parseNamespacePath(p string) (pid int, file string, ok bool) {
	rest, ok := strings.CutPrefix(p, "/proc/")
	if !ok {
		return 0, "", false
	}
	num, file, ok := strings.Cut(rest, "/ns/")
	if !ok || strings.Contains(file, "/") {
		return 0, "", false
	}
	pid, err := strconv.Atoi(num)
	if err != nil || pid <= 0 || strconv.Itoa(pid) != num {
		return 0, "", false
	}
	return pid, file, true
}

// podNamespaces checks the namespaces of container id's spec and returns
// those it joins; pod is the sandbox's pod container.
func (s *Sandbox) podNamespaces(id string, spec *specs.Spec, pod string) (map[specs.LinuxNamespaceType]string, error) {
	if spec.Linux == nil {
		return nil, nil
	}
	s.mu.Lock()
	v := s.vm
	s.mu.Unlock()
	var pids []int
	if v != nil {
		pids = v.PIDs()
	}
	return joinedNamespaces(id, spec.Linux.Namespaces, pids, pod)
}
