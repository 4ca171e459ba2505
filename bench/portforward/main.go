// Command portforward measures kubectl port-forward into a pod, the whole
// way kubectl goes: the CRI's PortForward, the port-forward protocol over
// SPDY (client-go) to containerd's streaming server, containerd dialling
// localhost:<port> in the pod's netns, and, for Cocoon, the forwarder
// there carrying the connection into the VM. It prints, for a Cocoon pod
// and a runc pod in one run: the throughput of one forwarded HTTP
// download (median of -runs), and the connect latency of a forwarded
// connection (streams opened to the first byte of a small response,
// median and p99 of -connects), plus ten downloads at once.
//
//	go run ./bench/portforward -runs 5 -mb 100 -connects 200
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/cocoon-runtime/cocoon/bench/internal/measure"
	"github.com/cocoon-runtime/cocoon/image"
	"github.com/cocoon-runtime/cocoon/internal/ctrtest"
	"github.com/cocoon-runtime/cocoon/internal/layout"
	"github.com/cocoon-runtime/cocoon/internal/storage"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

const port = 8080

func main() {
	runs := flag.Int("runs", 5, "downloads timed for throughput")
	mb := flag.Int("mb", 48, "MB in each download (served from the pod's /dev/shm, 64 MiB)")
	connects := flag.Int("connects", 200, "forwarded connections timed for latency")
	handlers := flag.String("handlers", "cocoon,runc", "CRI runtime handlers to measure")
	accel := flag.String("accel", "auto", "accelerator: auto, kvm, tcg")
	dataDir := flag.String("data-dir", layout.DataDir, "Cocoon data directory (guest image)")
	flag.Parse()
	if err := run(*runs, *mb, *connects, strings.Split(*handlers, ","), *accel, *dataDir); err != nil {
		fmt.Fprintln(os.Stderr, "portforward:", err)
		os.Exit(1)
	}
}

func run(runs, mb, connects int, handlers []string, accel, dataDir string) error {
	// Short: Cocoon's sockets below its state directory must fit a unix
	// socket path.
	dir, err := os.MkdirTemp("/run", "cpf")
	if err != nil {
		return err
	}
	defer storage.RemoveUnmounted(dir)
	ctx := context.Background()
	img, err := image.Current(dataDir)
	if err != nil {
		return err
	}
	repo, err := ctrtest.RepoRoot()
	if err != nil {
		return err
	}
	bin := filepath.Join(dir, "bin")
	if err := ctrtest.BuildShim(ctx, repo, bin); err != nil {
		return err
	}
	conf := filepath.Join(dir, "cocoon.toml")
	if err := (ctrtest.CocoonConfig{Kernel: img.Kernel, Initrd: img.Initrd, Accelerator: accel,
		StateDir: filepath.Join(dir, "c"), DataDir: dataDir}).Write(conf); err != nil {
		return err
	}
	ctrd, err := ctrtest.Start(ctx, filepath.Join(dir, "ctrd"), ctrtest.Options{ShimDir: bin, CocoonConfig: conf})
	if err != nil {
		return err
	}
	defer ctrd.Stop(context.Background())
	rs, _, closeConn, err := ctrd.CRI(ctx)
	if err != nil {
		return err
	}
	defer closeConn()
	for _, h := range handlers {
		if err := measureHandler(ctx, rs, h, filepath.Join(dir, "logs", h), runs, mb, connects); err != nil {
			return fmt.Errorf("%s: %w", h, err)
		}
	}
	return nil
}

// measureHandler runs a pod of handler h serving /big (mb MB) and /small
// over HTTP on port, and measures port-forward into it.
func measureHandler(ctx context.Context, rs runtimeapi.RuntimeServiceClient, h, logDir string, runs, mb, connects int) error {
	if err := os.MkdirAll(logDir, 0o700); err != nil {
		return err
	}
	cfg := &runtimeapi.PodSandboxConfig{
		Metadata:     &runtimeapi.PodSandboxMetadata{Name: "pf-" + h, Uid: "uid-pf-" + h, Namespace: "bench"},
		Hostname:     "pf-" + h,
		LogDirectory: logDir,
		Linux: &runtimeapi.LinuxPodSandboxConfig{SecurityContext: &runtimeapi.LinuxSandboxSecurityContext{
			NamespaceOptions: &runtimeapi.NamespaceOption{Network: runtimeapi.NamespaceMode_POD},
		}},
	}
	p, err := rs.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: cfg, RuntimeHandler: h})
	if err != nil {
		return fmt.Errorf("RunPodSandbox: %w", err)
	}
	defer func() {
		rs.StopPodSandbox(context.Background(), &runtimeapi.StopPodSandboxRequest{PodSandboxId: p.PodSandboxId})
		rs.RemovePodSandbox(context.Background(), &runtimeapi.RemovePodSandboxRequest{PodSandboxId: p.PodSandboxId})
	}()
	c, err := rs.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{
		PodSandboxId: p.PodSandboxId, SandboxConfig: cfg,
		Config: &runtimeapi.ContainerConfig{
			Metadata: &runtimeapi.ContainerMetadata{Name: "web"},
			Image:    &runtimeapi.ImageSpec{Image: ctrtest.BusyboxImage},
			Command: []string{"sh", "-c", fmt.Sprintf("mkdir -p /dev/shm/www && dd if=/dev/zero of=/dev/shm/www/big bs=1M count=%d 2>/dev/null && "+
				"echo ok > /dev/shm/www/small && exec httpd -f -p %d -h /dev/shm/www", mb, port)},
			LogPath: "web.log",
		},
	})
	if err != nil {
		return fmt.Errorf("CreateContainer: %w", err)
	}
	if _, err := rs.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: c.ContainerId}); err != nil {
		return fmt.Errorf("StartContainer: %w", err)
	}
	pf, err := ctrtest.WaitPortForward(ctx, rs, p.PodSandboxId, port, "/small", 2*time.Minute)
	if err != nil {
		return err
	}
	defer pf.Close()

	want := int64(mb) << 20
	var rates []float64
	for range runs {
		start := time.Now()
		r, err := pf.Get(port, "/big", io.Discard)
		if err == nil && r.Body != want {
			err = fmt.Errorf("downloaded %d bytes, want %d", r.Body, want)
		}
		if err != nil {
			return err
		}
		rates = append(rates, float64(r.Body)/1e6/time.Since(start).Seconds())
	}
	slices.Sort(rates)
	fmt.Printf("%-6s port-forward download (%d MB): median %.1f MB/s (min %.1f, max %.1f, n=%d)\n",
		h, mb, rates[len(rates)/2], rates[0], rates[len(rates)-1], len(rates))

	var first, whole []time.Duration
	for range connects {
		start := time.Now()
		r, err := pf.Get(port, "/small", io.Discard)
		if err != nil {
			return err
		}
		first = append(first, r.FirstByte)
		whole = append(whole, time.Since(start))
	}
	fmt.Printf("%-6s port-forward connect to first byte (n=%d): median %v, p99 %v; whole small GET median %v\n",
		h, connects, measure.Median(first).Round(time.Microsecond), p99(first).Round(time.Microsecond), measure.Median(whole).Round(time.Microsecond))

	// Ten at once: each its own connection, sharing the pod.
	const parallel = 10
	start := time.Now()
	errs := make(chan error, parallel)
	var mu sync.Mutex
	var total int64
	for range parallel {
		go func() {
			r, err := pf.Get(port, "/big", io.Discard)
			if err == nil && r.Body != want {
				err = fmt.Errorf("downloaded %d bytes, want %d", r.Body, want)
			}
			mu.Lock()
			total += r.Body
			mu.Unlock()
			errs <- err
		}()
	}
	for range parallel {
		if err := <-errs; err != nil {
			return err
		}
	}
	d := time.Since(start)
	fmt.Printf("%-6s port-forward %d downloads at once: %v, %.1f MB/s in total\n\n", h, parallel, d.Round(time.Millisecond), float64(total)/1e6/d.Seconds())
	return nil
}

// p99 is the 99th percentile of d.
func p99(d []time.Duration) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[min(len(s)-1, len(s)*99/100)]
}
