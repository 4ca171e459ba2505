// Command storage measures file I/O inside a container: sequential write
// and read MB/s, 4 KiB random read and write IOPS, and small-file
// operations (create, stat and read, remove) per second, for a Cocoon
// container on a host directory bound in as a volume (it reaches the VM
// through virtio-fs) and on its own rootfs, an ext4 image the VM gets as a
// virtio-blk disk, and for a runc container on the same host directory
// (the host's own file system), in one run.
//
//	go run ./bench/storage -mb 512 -ios 20000 -files 2000
//
// The load generator is iotool, a static binary put in the containers'
// rootfs. The files are larger than the VM's memory by default, so that
// the guest's page cache cannot hold them and reads cross virtio-fs or
// virtio-blk; on the host the same files sit in the page cache, which is
// what runc reads. The volume and the image are on the host's disk-backed
// /var/tmp.
package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"github.com/cocoon-runtime/cocoon/bench/internal/measure"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"github.com/cocoon-runtime/cocoon"
	"github.com/cocoon-runtime/cocoon/hypervisor"
	"github.com/cocoon-runtime/cocoon/internal/layout"
	"github.com/cocoon-runtime/cocoon/internal/specutil"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

func main() {
	mb := flag.Int("mb", 512, "MB of each sequential and random file")
	ios := flag.Int("ios", 20000, "random 4 KiB reads, and as many writes")
	files := flag.Int("files", 2000, "small files created, read and removed")
	accel := flag.String("accel", "auto", "accelerator: auto, kvm, tcg")
	dataDir := flag.String("data-dir", layout.DataDir, "Cocoon data directory (guest image)")
	flag.Parse()
	if err := run(*mb, *ios, *files, cocoon.VMConfig{Accelerator: hypervisor.Accelerator(*accel), VCPUs: 1, MemoryMiB: 256}, *dataDir); err != nil {
		fmt.Fprintln(os.Stderr, "storage:", err)
		os.Exit(1)
	}
}

// loads are the iotool commands measured, with what their figures are.
func loads(dir string, mb, ios, files int) []struct {
	args   []string
	labels []string
} {
	m, n := strconv.Itoa(mb), strconv.Itoa(ios)
	return []struct {
		args   []string
		labels []string
	}{
		{[]string{"seq", dir, m}, []string{"sequential write MB/s", "sequential read MB/s"}},
		{[]string{"rand", dir, m, n}, []string{"4 KiB random read IOPS", "4 KiB random write IOPS"}},
		{[]string{"small", dir, strconv.Itoa(files)}, []string{"small files (4 KiB: create, stat+read, remove) per s"}},
	}
}

func run(mb, ios, files int, vm cocoon.VMConfig, dataDir string) error {
	work, err := os.MkdirTemp("", "cocoon-bench-storage-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	rootfs := filepath.Join(work, "rootfs")
	if err := specutil.BusyboxRootfs(rootfs, ""); err != nil {
		return err
	}
	build := exec.Command("go", "build", "-trimpath", "-o", filepath.Join(rootfs, "iotool"), "github.com/cocoon-runtime/cocoon/bench/storage/iotool")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		return fmt.Errorf("build iotool: %w: %s", err, out)
	}
	// The volume is on the host's disk-backed /var/tmp, not a tmpfs.
	vol, err := os.MkdirTemp("/var/tmp", "cocoon-bench-vol-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(vol)
	// The virtio-blk rootfs: the same files in an ext4 image, with room
	// for the largest file iotool writes in /data.
	if err := os.Mkdir(filepath.Join(rootfs, "data"), 0o755); err != nil {
		return err
	}
	img := filepath.Join(vol+"-image", "rootfs.ext4")
	if err := os.Mkdir(filepath.Dir(img), 0o700); err != nil {
		return err
	}
	defer os.RemoveAll(filepath.Dir(img))
	if out, err := exec.Command("mkfs.ext4", "-q", "-d", rootfs, img, strconv.Itoa(mb+256)+"M").CombinedOutput(); err != nil {
		return fmt.Errorf("mkfs.ext4: %w: %s", err, out)
	}
	bundle := func(name, root string) (string, error) {
		dir := filepath.Join(work, name)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return "", err
		}
		spec := specutil.Default("sleep", "100000")
		spec.Root.Path = root
		spec.Mounts = append(spec.Mounts, specs.Mount{Destination: "/vol", Type: "bind", Source: vol, Options: []string{"rbind", "rw"}})
		return dir, specutil.WriteBundle(dir, spec)
	}

	rt, _, done, err := measure.Runtime(dataDir)
	if err != nil {
		return err
	}
	defer done()
	ctx := context.Background()
	cb, err := bundle("cocoon", img)
	if err != nil {
		return err
	}
	const id = "bench-storage"
	defer rt.DeleteSandbox(context.Background(), id)
	sb, err := rt.RunSandbox(ctx, cocoon.SandboxConfig{ID: id, VM: vm, Containers: []cocoon.ContainerConfig{{ID: id, Bundle: cb}}})
	if err != nil {
		return err
	}
	for _, path := range []struct{ name, dir string }{{"virtio-fs", "/vol"}, {"virtio-blk", "/data"}} {
		for _, l := range loads(path.dir, mb, ios, files) {
			out, err := cocoonExec(ctx, sb, id, append([]string{"/iotool"}, l.args...))
			if err != nil {
				return err
			}
			if err := report("cocoon", path.name, l.labels, out); err != nil {
				return err
			}
		}
	}
	sb.Release()
	if err := rt.DeleteSandbox(ctx, id); err != nil {
		return err
	}

	runc, err := exec.LookPath("runc")
	if err != nil {
		fmt.Println("runc    not installed: no comparison")
		return nil
	}
	rb, err := bundle("runc", rootfs)
	if err != nil {
		return err
	}
	root := filepath.Join(work, "runc-root")
	if err := exec.Command(runc, "--root", root, "run", "-d", "--bundle", rb, id).Run(); err != nil {
		return fmt.Errorf("runc run: %w", err)
	}
	defer exec.Command(runc, "--root", root, "delete", "-f", id).Run()
	for _, l := range loads("/vol", mb, ios, files) {
		out, err := exec.Command(runc, append([]string{"--root", root, "exec", id, "/iotool"}, l.args...)...).Output()
		if err != nil {
			return fmt.Errorf("runc exec iotool %s: %w", strings.Join(l.args, " "), err)
		}
		if err := report("runc", "host fs", l.labels, string(out)); err != nil {
			return err
		}
	}
	return nil
}

// report prints iotool's figures out under labels.
func report(who, path string, labels []string, out string) error {
	f := strings.Fields(out)
	if len(f) != len(labels) {
		return fmt.Errorf("iotool printed %q", out)
	}
	for i, l := range labels {
		fmt.Printf("%-7s %-10s %s: %s\n", who, path, l, f[i])
	}
	return nil
}

// cocoonExec runs args in container id and returns its stdout.
func cocoonExec(ctx context.Context, sb *cocoon.Sandbox, id string, args []string) (string, error) {
	execID, err := sb.EnterContainer(ctx, id, "", specs.Process{Args: args, Cwd: "/"})
	if err != nil {
		return "", err
	}
	in, out, errs, err := sb.IOStream(ctx, id, execID)
	if err != nil {
		return "", err
	}
	in.Close()
	var stdout, stderr bytes.Buffer
	var wg sync.WaitGroup
	for _, c := range []struct {
		r io.ReadCloser
		w *bytes.Buffer
	}{{out, &stdout}, {errs, &stderr}} {
		if c.r == nil {
			continue
		}
		wg.Add(1)
		go func() { defer wg.Done(); io.Copy(c.w, c.r); c.r.Close() }()
	}
	wg.Wait()
	st, err := sb.WaitProcess(ctx, id, execID)
	if err != nil {
		return "", err
	}
	if st.Code != 0 {
		return "", fmt.Errorf("%s in the container: exit %d: %s", strings.Join(args, " "), st.Code, stderr.String())
	}
	return stdout.String(), nil
}
