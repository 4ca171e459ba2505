package shim

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
}

// podOf reads a task's pod from its spec's annotations.
func podOf(id string, ann map[string]string) pod {
	kind, sandbox := ann[annContainerType], ann[annSandboxID]
	if kind == "" {
		kind, sandbox = ann[annCRIOContainerType], ann[annCRIOSandboxID]
	}
	if kind == "container" && sandbox != "" && sandbox != id {
		return pod{sandboxID: sandbox}
	}
	return pod{sandboxID: id, createsVM: true}
}
