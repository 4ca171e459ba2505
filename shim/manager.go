package shim

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"github.com/cocoon-runtime/cocoon"
	"github.com/containerd/containerd/mount"
	"github.com/containerd/containerd/namespaces"
	cshim "github.com/containerd/containerd/runtime/v2/shim"
	"github.com/containerd/log"
)

// manager starts shim processes and cleans up after dead ones: the part of
// the shim binary that runs as a short-lived command ("start", "delete").
type manager struct{ name string }

func (m manager) Name() string { return m.name }

// Start starts the shim process serving the task's pod, or returns the
// address of the one already serving it: every task of a pod shares one
// shim (and so one VM handle).
func (m manager) Start(ctx context.Context, id string, opts cshim.StartOpts) (_ string, retErr error) {
	ns, err := namespaces.NamespaceRequired(ctx)
	if err != nil {
		return "", err
	}
	spec, err := cocoon.LoadSpec(".") // containerd runs "start" in the bundle
	if err != nil {
		return "", err
	}
	group := podOf(id, spec.Annotations).sandboxID
	address, err := cshim.SocketAddress(ctx, opts.Address, group)
	if err != nil {
		return "", err
	}
	socket, err := cshim.NewSocket(address)
	if err != nil {
		if !cshim.SocketEaddrinuse(err) {
			return "", fmt.Errorf("create shim socket: %w", err)
		}
		// The pod's shim already runs: join it.
		if cshim.CanConnect(address) {
			if err := cshim.WriteAddress("address", address); err != nil {
				return "", fmt.Errorf("write shim address: %w", err)
			}
			return address, nil
		}
		// A dead shim's socket.
		if err := cshim.RemoveSocket(address); err != nil {
			return "", fmt.Errorf("remove stale shim socket: %w", err)
		}
		if socket, err = cshim.NewSocket(address); err != nil {
			return "", fmt.Errorf("create shim socket: %w", err)
		}
	}
	defer func() {
		if retErr != nil {
			socket.Close()
			cshim.RemoveSocket(address)
		}
	}()
	if err := cshim.WriteAddress("address", address); err != nil {
		return "", err
	}
	f, err := socket.File()
	if err != nil {
		return "", err
	}
	defer f.Close()
	self, err := os.Executable()
	if err != nil {
		return "", err
	}
	cwd, err := os.Getwd()
	if err != nil {
		return "", err
	}
	args := []string{"-namespace", ns, "-id", id, "-address", opts.Address}
	if opts.Debug {
		args = append(args, "-debug")
	}
	cmd := exec.Command(self, args...)
	cmd.Dir = cwd
	cmd.Env = append(os.Environ(), "GOMAXPROCS=2")
	cmd.ExtraFiles = []*os.File{f} // fd 3: the listening socket
	// Its own process group: a signal to containerd's group does not
	// reach the pod.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return "", fmt.Errorf("start shim: %w", err)
	}
	go cmd.Wait()
	// Lowering the shim's OOM score needs CAP_SYS_RESOURCE, which not
	// every host grants root; a shim that keeps containerd's score works.
	if err := cshim.AdjustOOMScore(cmd.Process.Pid); err != nil {
		log.G(ctx).WithError(err).Debug("shim keeps containerd's oom score")
	}
	return address, nil
}

// Stop cleans up after a shim that died: containerd runs it ("delete") in
// the task's bundle for every task the dead shim served. The task's
// container, and with the pod's sandbox task the whole VM, are removed.
func (m manager) Stop(ctx context.Context, id string) (cshim.StopStatus, error) {
	bundle, err := os.Getwd()
	if err != nil {
		return cshim.StopStatus{}, err
	}
	// A shim that was killed could not remove its socket.
	if address, err := cshim.ReadAddress(filepath.Join(bundle, "address")); err == nil && !cshim.CanConnect(address) {
		if err := cshim.RemoveSocket(address); err != nil {
			log.G(ctx).WithError(err).Warn("remove dead shim's socket")
		}
	}
	if rec, err := readBundleRecord(bundle); err == nil {
		rt, err := cocoon.New(cocoon.Options{StateDir: rec.StateDir, DataDir: rec.DataDir})
		if err == nil {
			if rec.SandboxID == id {
				err = rt.DeleteSandbox(ctx, id)
			} else if sb, ferr := rt.FetchSandbox(ctx, rec.SandboxID); ferr == nil {
				err = sb.DeleteContainer(ctx, id)
				sb.Release()
			}
		}
		if err != nil {
			log.G(ctx).WithError(err).Warn("cocoon cleanup after dead shim")
		}
	} else if !os.IsNotExist(err) {
		log.G(ctx).WithError(err).Warn("read cocoon bundle record")
	}
	if err := mount.UnmountRecursive(filepath.Join(bundle, "rootfs"), 0); err != nil {
		log.G(ctx).WithError(err).Warn("unmount rootfs")
	}
	return cshim.StopStatus{ExitedAt: time.Now(), ExitStatus: 128 + int(syscall.SIGKILL)}, nil
}

// bundleRecord is what the shim leaves in a task's bundle so that the
// "delete" command finds the sandbox after the shim died.
type bundleRecord struct {
	SandboxID string `json:"sandbox_id"`
	StateDir  string `json:"state_dir"`
	DataDir   string `json:"data_dir"`
}

const bundleRecordFile = "cocoon.json"

func writeBundleRecord(bundle string, rec bundleRecord) error {
	b, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(bundle, bundleRecordFile), b, 0o600)
}

func readBundleRecord(bundle string) (bundleRecord, error) {
	var rec bundleRecord
	b, err := os.ReadFile(filepath.Join(bundle, bundleRecordFile))
	if err != nil {
		return rec, err
	}
	if err := json.Unmarshal(b, &rec); err != nil {
		return rec, fmt.Errorf("%s: %w", bundleRecordFile, err)
	}
	return rec, nil
}
