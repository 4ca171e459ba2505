// Command pod measures Kubernetes-style pods through containerd's CRI:
// the time from RunPodSandbox through CreateContainer and StartContainer
// to a running container, the time the kubelet's way of deleting it takes
// (StopContainer with a 30 s grace period, whose SIGTERM the program
// handles, then StopPodSandbox and RemovePodSandbox), the memory of one idle pod (PSS of its shim, VM
// and file server), and ten pods started at once; with Cocoon and, for
// comparison, with runc.
//
//	go run ./bench/pod -runs 5 -parallel 10
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/cocoon-runtime/cocoon/bench/internal/measure"
	"github.com/cocoon-runtime/cocoon/image"
	"github.com/cocoon-runtime/cocoon/internal/ctrtest"
	"github.com/cocoon-runtime/cocoon/internal/layout"
	"github.com/cocoon-runtime/cocoon/internal/storage"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

func main() {
	runs := flag.Int("runs", 5, "pods started one after another")
	parallel := flag.Int("parallel", 10, "pods started at once (0 skips)")
	idle := flag.Duration("idle", 10*time.Second, "idle time before measuring a pod's memory")
	handlers := flag.String("handlers", "cocoon,runc", "CRI runtime handlers to measure")
	accel := flag.String("accel", "auto", "accelerator: auto, kvm, tcg")
	dataDir := flag.String("data-dir", layout.DataDir, "Cocoon data directory (guest image)")
	templates := flag.Bool("templates", false, "start Cocoon pods from a VM template (factory.enable_template); the template is made before measuring")
	flag.Parse()

	// Short: CRI sandbox IDs are 64 characters, and Cocoon's sockets
	// below its state directory must fit a unix socket path.
	dir, err := os.MkdirTemp("/run", "cpb")
	fatal(err)
	ctx := context.Background()
	var ctrd *ctrtest.Containerd
	cleanup := func() {
		if ctrd != nil {
			ctrd.Stop(context.Background())
		}
		storage.RemoveUnmounted(dir)
	}
	fail := func(err error) {
		if err != nil {
			cleanup()
			fatal(err)
		}
	}
	img, err := image.Current(*dataDir)
	fail(err)
	repo, err := ctrtest.RepoRoot()
	fail(err)
	bin := filepath.Join(dir, "bin")
	fail(ctrtest.BuildShim(ctx, repo, bin))
	conf := filepath.Join(dir, "cocoon.toml")
	fail(ctrtest.CocoonConfig{
		Kernel: img.Kernel, Initrd: img.Initrd, Accelerator: *accel,
		StateDir: filepath.Join(dir, "c"), DataDir: *dataDir, Templates: *templates,
	}.Write(conf))
	ctrd, err = ctrtest.Start(ctx, filepath.Join(dir, "ctrd"), ctrtest.Options{ShimDir: bin, CocoonConfig: conf})
	fail(err)
	rs, _, closeConn, err := ctrd.CRI(ctx)
	fail(err)
	defer closeConn()
	fmt.Printf("containerd started in %v, images imported in %v\n\n", ctrd.StartDuration.Round(time.Millisecond), ctrd.ImportDuration.Round(time.Millisecond))

	b := &bench{rs: rs, logDir: filepath.Join(dir, "logs")}
	for _, h := range strings.Split(*handlers, ",") {
		if h == "cocoon" && *templates {
			// The first pod makes the template; measure the pods after it.
			start := time.Now()
			_, id, _, err := b.pod(ctx, h, "template-warmup")
			fail(err)
			fail(b.remove(ctx, id))
			fmt.Printf("cocoon: first pod, making the VM template: %v\n", time.Since(start).Round(time.Millisecond))
		}
		var times, removals []time.Duration
		var last, lastCtr string
		b.phases, b.stops = [3][]time.Duration{}, [3][]time.Duration{}
		for i := 0; i < *runs; i++ {
			if last != "" {
				d, err := b.stopAndRemove(ctx, last, lastCtr)
				fail(err)
				removals = append(removals, d)
			}
			d, id, cid, err := b.pod(ctx, h, fmt.Sprintf("%s-seq-%d", h, i))
			fail(err)
			times = append(times, d)
			last, lastCtr = id, cid
		}
		time.Sleep(*idle)
		pss, parts := podPSS(last)
		fail(b.remove(ctx, last))
		fmt.Printf("%s: pod to running container, median of %d: %v (all: %v)\n", h, *runs, measure.Median(times), round(times))
		fmt.Printf("%s:   RunPodSandbox %v, CreateContainer %v, StartContainer %v (medians)\n", h,
			measure.Median(b.phases[0]), measure.Median(b.phases[1]), measure.Median(b.phases[2]))
		if len(removals) > 0 {
			fmt.Printf("%s: stop and remove a pod (StopContainer, StopPodSandbox, RemovePodSandbox), median of %d: %v (all: %v)\n", h, len(removals), measure.Median(removals), round(removals))
			fmt.Printf("%s:   StopContainer %v, StopPodSandbox %v, RemovePodSandbox %v (medians)\n", h,
				measure.Median(b.stops[0]), measure.Median(b.stops[1]), measure.Median(b.stops[2]))
		}
		fmt.Printf("%s: idle pod PSS after %v: %.1f MiB (%s)\n", h, *idle, float64(pss)/1024, parts)

		if *parallel > 0 {
			start := time.Now()
			ids := make([]string, *parallel)
			errs := make([]error, *parallel)
			var wg sync.WaitGroup
			for i := range *parallel {
				wg.Add(1)
				go func() {
					defer wg.Done()
					_, ids[i], _, errs[i] = b.pod(ctx, h, fmt.Sprintf("%s-par-%d", h, i))
				}()
			}
			wg.Wait()
			total := time.Since(start)
			for i, id := range ids {
				if id != "" {
					fail(b.remove(ctx, id))
				}
				fail(errs[i])
			}
			fmt.Printf("%s: %d pods started in parallel: %v in total\n", h, *parallel, total.Round(time.Millisecond))
		}
		fmt.Println()
	}
	closeConn()
	cleanup()
}

type bench struct {
	rs     runtimeapi.RuntimeServiceClient
	logDir string

	mu sync.Mutex
	// phases of the sequential pods: RunPodSandbox, CreateContainer,
	// StartContainer.
	phases [3][]time.Duration
	// stops: phases of their deletion: StopContainer, StopPodSandbox,
	// RemovePodSandbox.
	stops [3][]time.Duration
}

// pod runs a pod with one busybox container and returns the time until
// the container runs, the pod's ID and the container's.
func (b *bench) pod(ctx context.Context, handler, name string) (time.Duration, string, string, error) {
	logDir := filepath.Join(b.logDir, name)
	if err := os.MkdirAll(logDir, 0o700); err != nil {
		return 0, "", "", err
	}
	cfg := &runtimeapi.PodSandboxConfig{
		Metadata:     &runtimeapi.PodSandboxMetadata{Name: name, Uid: "uid-" + name, Namespace: "bench"},
		Hostname:     name,
		LogDirectory: logDir,
		Linux: &runtimeapi.LinuxPodSandboxConfig{SecurityContext: &runtimeapi.LinuxSandboxSecurityContext{
			NamespaceOptions: &runtimeapi.NamespaceOption{Network: runtimeapi.NamespaceMode_POD},
		}},
	}
	start := time.Now()
	p, err := b.rs.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: cfg, RuntimeHandler: handler})
	if err != nil {
		return 0, "", "", fmt.Errorf("%s: RunPodSandbox: %w", name, err)
	}
	podReady := time.Now()
	c, err := b.rs.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{
		PodSandboxId: p.PodSandboxId, SandboxConfig: cfg,
		Config: &runtimeapi.ContainerConfig{
			Metadata: &runtimeapi.ContainerMetadata{Name: "sleeper"},
			Image:    &runtimeapi.ImageSpec{Image: ctrtest.BusyboxImage},
			// Ends on SIGTERM at once, as a well-behaved program does.
			Command: []string{"sh", "-c", "trap 'exit 0' TERM; sleep 1000 & wait"},
			LogPath: "sleeper.log",
		},
	})
	if err != nil {
		return 0, p.PodSandboxId, "", fmt.Errorf("%s: CreateContainer: %w", name, err)
	}
	created := time.Now()
	if _, err := b.rs.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: c.ContainerId}); err != nil {
		return 0, p.PodSandboxId, c.ContainerId, fmt.Errorf("%s: StartContainer: %w", name, err)
	}
	end := time.Now()
	b.mu.Lock()
	b.phases[0] = append(b.phases[0], podReady.Sub(start))
	b.phases[1] = append(b.phases[1], created.Sub(podReady))
	b.phases[2] = append(b.phases[2], end.Sub(created))
	b.mu.Unlock()
	return end.Sub(start), p.PodSandboxId, c.ContainerId, nil
}

// stopAndRemove deletes pod id the way the kubelet does: its container
// cid stopped with a grace period of 30 s, then the pod stopped and
// removed. It returns how long that took.
func (b *bench) stopAndRemove(ctx context.Context, id, cid string) (time.Duration, error) {
	start := time.Now()
	if _, err := b.rs.StopContainer(ctx, &runtimeapi.StopContainerRequest{ContainerId: cid, Timeout: 30}); err != nil {
		return 0, fmt.Errorf("StopContainer: %w", err)
	}
	stopped := time.Now()
	if _, err := b.rs.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: id}); err != nil {
		return 0, fmt.Errorf("StopPodSandbox: %w", err)
	}
	podStopped := time.Now()
	if _, err := b.rs.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: id}); err != nil {
		return 0, fmt.Errorf("RemovePodSandbox: %w", err)
	}
	end := time.Now()
	b.mu.Lock()
	b.stops[0] = append(b.stops[0], stopped.Sub(start))
	b.stops[1] = append(b.stops[1], podStopped.Sub(stopped))
	b.stops[2] = append(b.stops[2], end.Sub(podStopped))
	b.mu.Unlock()
	return end.Sub(start), nil
}

func (b *bench) remove(ctx context.Context, id string) error {
	if _, err := b.rs.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: id}); err != nil {
		return err
	}
	_, err := b.rs.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: id})
	return err
}

// podPSS adds up the PSS of every host process of pod id: those naming it
// (shim, QEMU, virtiofsd) and their descendants (runc's containers).
func podPSS(id string) (uint64, string) {
	pids := map[int]string{}
	for pid, name := range measure.Processes(id) {
		pids[pid] = name
		for _, c := range measure.Children(pid) {
			pids[c] = "child"
		}
	}
	var total uint64
	byName := map[string]uint64{}
	files := map[string]bool{}
	for pid, name := range pids {
		_, pss := measure.MemoryKiB(pid)
		// A VM restored from a template has its RAM in a tmpfs file: count
		// the whole file once instead of the parts processes map.
		mapped, paths := measure.FileMappingsPss(pid, "guest.mem")
		pss -= mapped
		for _, p := range paths {
			files[p] = true
		}
		total += pss
		byName[filepath.Base(name)] += pss
	}
	seen := map[uint64]bool{} // one file may be reached through several paths
	for p := range files {
		var st syscall.Stat_t
		if err := syscall.Stat(p, &st); err == nil && !seen[st.Ino] {
			seen[st.Ino] = true
			kib := uint64(st.Blocks) * 512 / 1024
			total += kib
			byName["guest RAM file"] += kib
		}
	}
	var parts []string
	for n, kib := range byName {
		parts = append(parts, fmt.Sprintf("%s %.1f", n, float64(kib)/1024))
	}
	return total, strings.Join(parts, ", ")
}

func round(d []time.Duration) []time.Duration {
	out := make([]time.Duration, len(d))
	for i, v := range d {
		out[i] = v.Round(time.Millisecond)
	}
	return out
}

func fatal(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "pod:", err)
		os.Exit(1)
	}
}
