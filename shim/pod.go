package shim

import (
	"fmt"
	"slices"
	"strconv"

	"github.com/cocoon-runtime/cocoon"
	"github.com/containerd/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// Annotations by which container managers say which pod a container
// belongs to (containerd's CRI plugin and CRI-O).
const (
	annContainerType     = "io.kubernetes.cri.container-type"
	annSandboxID         = "io.kubernetes.cri.sandbox-id"
	annCRIOContainerType = "io.kubernetes.cri-o.ContainerType"
	annCRIOSandboxID     = "io.kubernetes.cri-o.SandboxID"
)

// pod says where a task belongs: in the VM of sandbox sandboxID, which it
// creates when it is the pod's first container (the CRI's sandbox, or a
// container started on its own, as `ctr run` does).
type pod struct {
	sandboxID string
	// createsVM is true for the task that brings up the sandbox VM.
	createsVM bool
	// cri is true for a task of a Kubernetes pod (a CRI's sandbox or
	// container).
	cri bool
}

// podOf reads a task's pod from its spec's annotations.
func podOf(id string, ann map[string]string) pod {
	kind, sandbox := ann[annContainerType], ann[annSandboxID]
	if kind == "" {
		kind, sandbox = ann[annCRIOContainerType], ann[annCRIOSandboxID]
	}
	if kind == "container" && sandbox != "" && sandbox != id {
		return pod{sandboxID: sandbox, cri: true}
	}
	return pod{sandboxID: id, createsVM: true, cri: kind != ""}
}

// hostNamespaces refuses a Kubernetes pod's task that asks for one of the
// host's namespaces (hostNetwork, hostPID, hostIPC: the CRI leaves that
// namespace out of the spec, for the task to share the runtime's). In a
// VM the task would get the VM's namespace, not the host's, and a pod
// that expects the host's would half-work, so it is refused, as Kata
// refuses hostNetwork.
func hostNamespaces(spec *specs.Spec) error {
	has := func(t specs.LinuxNamespaceType) bool {
		return spec.Linux != nil && slices.ContainsFunc(spec.Linux.Namespaces, func(ns specs.LinuxNamespace) bool { return ns.Type == t })
	}
	for _, ns := range []struct {
		typ  specs.LinuxNamespaceType
		name string
	}{{specs.NetworkNamespace, "hostNetwork"}, {specs.PIDNamespace, "hostPID"}, {specs.IPCNamespace, "hostIPC"}} {
		if !has(ns.typ) {
			return fmt.Errorf("%w: %s pods cannot run in a Cocoon VM: the pod would see the VM's %s namespace, not the host's", errdefs.ErrInvalidArgument, ns.name, ns.typ)
		}
	}
	return nil
}

// The CRI's sandbox annotations (containerd 1.7 and later) carrying the
// pod's resources: the sum of its containers' limits.
const (
	annSandboxCPUPeriod = "io.kubernetes.cri.sandbox-cpu-period"
	annSandboxCPUQuota  = "io.kubernetes.cri.sandbox-cpu-quota"
	annSandboxMemory    = "io.kubernetes.cri.sandbox-memory"
)

// podResources is what the pod whose sandbox task has spec asks for, to
// size its VM: the CRI's sandbox annotations where containerd sets them,
// else the task's own linux.resources (ctr run, an older containerd).
func podResources(spec *specs.Spec) (cocoon.Resources, error) {
	ann := spec.Annotations
	_, hasQuota := ann[annSandboxCPUQuota]
	_, hasMem := ann[annSandboxMemory]
	if !hasQuota && !hasMem {
		return cocoon.ResourcesOf(spec), nil
	}
	var res cocoon.Resources
	var err error
	parse := func(key string, set func(string) error) {
		if v, ok := ann[key]; ok && err == nil {
			if perr := set(v); perr != nil {
				err = fmt.Errorf("%w: annotation %s=%q: %w", cocoon.ErrInvalidConfig, key, v, perr)
			}
		}
	}
	parse(annSandboxCPUQuota, func(v string) (e error) { res.CPUQuota, e = strconv.ParseInt(v, 10, 64); return })
	parse(annSandboxCPUPeriod, func(v string) (e error) { res.CPUPeriod, e = strconv.ParseUint(v, 10, 64); return })
	parse(annSandboxMemory, func(v string) (e error) { res.MemoryBytes, e = strconv.ParseInt(v, 10, 64); return })
	return res, err
}
