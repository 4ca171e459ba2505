package integration

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cocoon-runtime/cocoon/internal/ctrtest"
	"github.com/cocoon-runtime/cocoon/internal/testutil"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// needBlockfile skips t where the shared containerd has no blockfile
// snapshotter (containerd before 1.7, Debian 12's 1.6).
func needBlockfile(t *testing.T, e *env) {
	t.Helper()
	if !e.ctrd.Blockfile() {
		t.Skip("this containerd has no blockfile snapshotter (1.7 or later has; make test runs these under containerd 2.x)")
	}
}

func (e *env) blockfileRoot() string {
	return filepath.Join(e.ctrd.Root, "io.containerd.snapshotter.v1.blockfile")
}

// checkBlockRoot checks what a container printed for
// `grep ' / ' /proc/mounts; echo written > /f && cat /f`: its root is an
// ext4 virtio-blk disk, writable.
func checkBlockRoot(t *testing.T, out string) {
	t.Helper()
	if !strings.Contains(out, "/dev/vd") || !strings.Contains(out, " / ext4 rw") || !strings.Contains(out, "written") {
		t.Fatalf("the container's root: %q; want a writable ext4 on /dev/vd*", out)
	}
}

const blockRootScript = "grep ' / ' /proc/mounts; echo written > /f && cat /f"

// ctr run with containerd 2.x's blockfile snapshotter: the snapshot (an
// ext4 image file) reaches the VM as a virtio-blk disk, `/` in the
// container is /dev/vd*, and while the container runs the host has no
// mount of its snapshot (no loop device of the host backed by it; ctr
// itself mounts it a moment to read the image's /etc/group before
// creating the task); afterwards nothing is left.
func TestCtrBlockfileRootfs(t *testing.T) {
	e := needContainerd(t)
	needBlockfile(t, e)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cid := id(t)
	e.removeOnCleanup(t, cid)
	args := append([]string{"run", "-d", "--snapshotter", "blockfile"}, e.runtimeFlags()...)
	e.ctr(t, ctx, append(args, ctrtest.BusyboxImage, cid, "sleep", "1000")...)
	out, _, err := e.ctrd.Ctr(ctx, "task", "exec", "--exec-id", "root", cid, "sh", "-c", blockRootScript)
	if err != nil {
		t.Fatalf("exec: %v (%q)", err, out)
	}
	checkBlockRoot(t, out)
	if l := testutil.LoopsBackedBy(e.blockfileRoot(), true); len(l) > 0 {
		t.Errorf("the host mounted the snapshot itself (loop devices backed by %v)", l)
	}
	e.ctr(t, ctx, "task", "kill", "-s", "KILL", cid)
	e.ctr(t, ctx, "task", "delete", "-f", cid)
	e.ctr(t, ctx, "container", "delete", cid)
	e.assertNoLeaks(t, cid)
}

// The Kubernetes path: a pod of RuntimeClass handler cocoon-blockfile
// (containerd 2.x, snapshotter blockfile at the runtime level) runs its
// containers from virtio-blk disks, its pause container's too; removing
// the pod leaves nothing, the snapshots included.
func TestCRIBlockfileRootfs(t *testing.T) {
	e := needContainerd(t)
	needBlockfile(t, e)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	rs := criAPI(t, ctx, e)
	p, err := runPodConfig(t, ctx, e, rs, ctrtest.BlockfileHandler, e.podConfig(t, "blockfile"))
	if err != nil {
		t.Fatalf("RunPodSandbox: %v\n%s", err, e.ctrd.LogTail(30))
	}
	cid := p.start(t, ctx, "app", "sleep", "1000")
	checkBlockRoot(t, p.exec(t, ctx, cid, "sh", "-c", blockRootScript))
	// Two disks: the pause container's root and the app's.
	if n := p.exec(t, ctx, cid, "sh", "-c", "ls /sys/block | grep -c vd"); n != "2" {
		t.Errorf("%s virtio-blk disks in the VM, want 2 (pause and app roots)", n)
	}
	if l := testutil.LoopsBackedBy(e.blockfileRoot(), true); len(l) > 0 {
		t.Errorf("the host mounted the snapshots itself (loop devices backed by %v)", l)
	}
	snapshots := func() int {
		m, _ := filepath.Glob(filepath.Join(e.blockfileRoot(), "snapshots", "*"))
		return len(m)
	}
	withPod := snapshots()
	if _, err := rs.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: p.id}); err != nil {
		t.Fatal(err)
	}
	if _, err := rs.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: p.id}); err != nil {
		t.Fatal(err)
	}
	e.assertNoLeaks(t, p.id)
	// containerd's garbage collector removes the snapshots a moment later.
	after := snapshots()
	for deadline := time.Now().Add(30 * time.Second); after != withPod-2 && time.Now().Before(deadline); after = snapshots() {
		time.Sleep(200 * time.Millisecond)
	}
	if after != withPod-2 {
		t.Errorf("%d blockfile snapshots with the pod, %d after removing it: want its two gone", withPod, after)
	}
}
