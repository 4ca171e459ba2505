package integration

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cocoon-runtime/cocoon/internal/testutil"
	"golang.org/x/sys/unix"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// checkPassedDisk checks, from inside container cid, that the node at
// path is a disk of the guest's (not the host's numbers) holding head,
// and writable.
func (p *criPod) checkPassedDisk(t *testing.T, ctx context.Context, cid, path, head string, host string) {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(host, &st); err != nil {
		t.Fatal(err)
	}
	hostNums := fmt.Sprintf("%x:%x", unix.Major(st.Rdev), unix.Minor(st.Rdev))
	out := p.exec(t, ctx, cid, "sh", "-c", fmt.Sprintf("stat -c %%t:%%T %s; head -c %d %s; echo; echo W | dd of=%s bs=512 seek=8 conv=notrunc,fsync 2>/dev/null && echo wrote", path, len(head), path, path))
	lines := strings.Split(out, "\n")
	if len(lines) != 3 || lines[1] != head || lines[2] != "wrote" {
		t.Fatalf("%s in the container: %q; want its numbers, %q, wrote", path, out, head)
	}
	if lines[0] == hostNums {
		t.Errorf("%s has the host's numbers %s, want the guest disk's", path, hostNums)
	}
}

// A Kubernetes raw block volume (the CRI's devices: a host block device
// at a path in the container) reaches the pod as a disk of the VM's own,
// usable at the path the CRI asked, with the guest's numbers.
func TestCRIRawBlockVolume(t *testing.T) {
	e := needContainerd(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	rs := criAPI(t, ctx, e)
	loop := testutil.LoopDevice(t, "RAW-BLOCK-VOLUME", 16<<20)
	runDiskPod(t, ctx, e, rs, "rawblock", &runtimeapi.ContainerConfig{
		Devices: []*runtimeapi.Device{{ContainerPath: "/dev/xvdb", HostPath: loop, Permissions: "rwm"}},
	}, "/dev/xvdb", "RAW-BLOCK-VOLUME", loop)
}

// runDiskPod runs a pod (with a root port for the disk) and in it
// container app (a sleep, with c's devices), checks the disk at path with
// checkPassedDisk, removes the pod and checks nothing is left.
func runDiskPod(t *testing.T, ctx context.Context, e *env, rs runtimeapi.RuntimeServiceClient, name string, c *runtimeapi.ContainerConfig, path, head, host string) {
	t.Helper()
	cfg := e.podConfig(t, name)
	cfg.Annotations = map[string]string{"io.cocoon.config.hypervisor.hotplug_slots": "1"}
	p, err := runPodConfig(t, ctx, e, rs, "cocoon", cfg)
	if err != nil {
		t.Fatalf("RunPodSandbox: %v", err)
	}
	c.Metadata, c.Command = &runtimeapi.ContainerMetadata{Name: "app"}, []string{"sleep", "1000"}
	cid := p.createIn(t, ctx, c)
	p.checkPassedDisk(t, ctx, cid, path, head, host)
	p.remove(t, ctx, true)
	e.assertNoLeaks(t, p.id)
}

// A CDI device (what device plugins and DRA hand Kubernetes pods):
// containerd injects the spec's device node, and Cocoon passes it to the
// VM like any block device of linux.devices.
func TestCRICDIDevice(t *testing.T) {
	e := needContainerd(t)
	if e.ctrd.CDISpecDir == "" {
		t.Skip("this containerd has no CDI (1.7 or later has; make test runs this under containerd 2.x)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	rs := criAPI(t, ctx, e)
	loop := testutil.LoopDevice(t, "CDI-DISK", 16<<20)
	spec := fmt.Sprintf(`{"cdiVersion":"0.6.0","kind":"cocoon.test/disk","devices":[{"name":"one","containerEdits":{"deviceNodes":[{"path":"/dev/cdidisk","hostPath":%q,"permissions":"rw"}]}}]}`, loop)
	specFile := filepath.Join(e.ctrd.CDISpecDir, fmt.Sprintf("%s.json", id(t)))
	if err := os.WriteFile(specFile, []byte(spec), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(specFile) })
	runDiskPod(t, ctx, e, rs, "cdi", &runtimeapi.ContainerConfig{
		CDIDevices: []*runtimeapi.CDIDevice{{Name: "cocoon.test/disk=one"}},
	}, "/dev/cdidisk", "CDI-DISK", loop)
}
