// Command container measures running containers with Cocoon: a cold run
// of `true` end to end (create the sandbox VM, start, wait, delete), exec
// latency into a running container, and stdout throughput; and the same
// runs with runc on the host for comparison.
//
//	go run ./bench/container -runs 5 -execs 20
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
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/cocoon-runtime/cocoon"
	"github.com/cocoon-runtime/cocoon/hypervisor"
	"github.com/cocoon-runtime/cocoon/internal/layout"
	"github.com/cocoon-runtime/cocoon/internal/specutil"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

func main() {
	runs := flag.Int("runs", 5, "cold runs of `true`")
	execs := flag.Int("execs", 20, "execs of `true`")
	sizeMB := flag.Int("size", 100, "MB written to stdout in the throughput run")
	catRuns := flag.Int("cats", 5, "throughput runs")
	accel := flag.String("accel", "auto", "accelerator: auto, kvm, tcg")
	dataDir := flag.String("data-dir", layout.DataDir, "Cocoon data directory (guest image)")
	params := flag.String("kernel-params", "", "extra guest kernel parameters, space-separated")
	slots := flag.Int("hotplug-slots", 0, "PCIe root ports for hotplug (q35); any turns the guest's ACPI on")
	templates := flag.Bool("templates", false, "make sandbox VMs from a VM template (the first run makes it and is not counted)")
	flag.Parse()
	check := fatalIf

	stateDir, err := os.MkdirTemp("/run", "cocoon-bench-")
	check(err)
	defer os.RemoveAll(stateDir)
	work, err := os.MkdirTemp("", "cocoon-bench-")
	check(err)
	defer os.RemoveAll(work)
	rt, err := cocoon.New(cocoon.Options{StateDir: stateDir, DataDir: *dataDir, VMTemplates: *templates})
	check(err)
	ctx := context.Background()
	// On any failure, delete every sandbox before exiting: os.Exit skips
	// deferred calls.
	check = func(err error) {
		if err == nil {
			return
		}
		fmt.Fprintln(os.Stderr, "bench:", err)
		if list, lerr := rt.ListSandbox(ctx); lerr == nil {
			for _, s := range list {
				rt.DeleteSandbox(ctx, s.ID)
			}
		}
		os.RemoveAll(stateDir)
		os.Exit(1)
	}

	rootfs := filepath.Join(work, "rootfs")
	check(specutil.BusyboxRootfs(rootfs, ""))
	check(os.WriteFile(filepath.Join(rootfs, "data"), bytes.Repeat([]byte("0123456789abcdef"), *sizeMB<<16), 0o644))
	bundle := func(name string, args ...string) string {
		dir := filepath.Join(work, name)
		check(os.MkdirAll(dir, 0o755))
		spec := specutil.Default(args...)
		spec.Root.Path = rootfs
		check(specutil.WriteBundle(dir, spec))
		return dir
	}
	hv := cocoon.VMConfig{Accelerator: hypervisor.Accelerator(*accel), VCPUs: 1, MemoryMiB: 256, HotplugSlots: *slots, KernelParams: strings.Fields(*params)}

	// run creates a one-container sandbox, runs it to completion with its
	// output copied to w, and deletes it.
	run := func(id, b string, w io.Writer) (time.Duration, cocoon.ExitStatus) {
		start := time.Now()
		sb, err := rt.CreateSandbox(ctx, cocoon.SandboxConfig{ID: id, VM: hv, Containers: []cocoon.ContainerConfig{{ID: id, Bundle: b}}})
		check(err)
		defer sb.Delete(ctx)
		wait := attach(sb, id, "", w, check)
		check(sb.StartContainer(ctx, id))
		wait()
		st, err := sb.WaitProcess(ctx, id, "")
		check(err)
		d := time.Since(start)
		check(sb.Delete(ctx))
		return d, st
	}

	trueBundle := bundle("true", "true")
	var cold []time.Duration
	if *templates {
		d, _ := run("template-warmup", trueBundle, io.Discard)
		fmt.Printf("cocoon  first run, making the VM template: %v\n", d.Round(time.Millisecond))
	}
	for i := 0; i < *runs; i++ {
		d, _ := run(fmt.Sprintf("bench-run-%d", i), trueBundle, io.Discard)
		cold = append(cold, d)
	}
	fmt.Printf("cocoon  cold run of true (create VM, start, wait, delete): median %v (min %v, max %v, n=%d)\n",
		measure.Median(cold), slices.Min(cold), slices.Max(cold), len(cold))

	sleeper := bundle("sleep", "sleep", "1000")
	sb, err := rt.RunSandbox(ctx, cocoon.SandboxConfig{ID: "bench-exec", VM: hv, Containers: []cocoon.ContainerConfig{{ID: "bench-exec", Bundle: sleeper}}})
	check(err)
	var lat, entered, drained []time.Duration
	for i := 0; i < *execs; i++ {
		start := time.Now()
		execID, err := sb.EnterContainer(ctx, "bench-exec", "", specs.Process{Args: []string{"true"}, Cwd: "/"})
		check(err)
		entered = append(entered, time.Since(start))
		wait := attach(sb, "bench-exec", execID, io.Discard, check)
		wait()
		drained = append(drained, time.Since(start))
		_, err = sb.WaitProcess(ctx, "bench-exec", execID)
		check(err)
		lat = append(lat, time.Since(start))
	}
	fmt.Printf("cocoon  exec of true into a running container: median %v (min %v, max %v, n=%d)\n",
		measure.Median(lat), slices.Min(lat), slices.Max(lat), len(lat))
	// libcontainer starts the first exec; the guest then starts a zygote
	// that forks the later ones (internal/guest/container/zygote.go).
	if len(lat) > 1 {
		fmt.Printf("cocoon    first exec (started by libcontainer) %v; later ones (forked by the zygote) median %v\n",
			lat[0].Round(time.Millisecond), measure.Median(lat[1:]))
	}
	fmt.Printf("cocoon    phases (medians, from the call): process started %v, output closed %v, exit status %v\n",
		measure.Median(entered), measure.Median(drained), measure.Median(lat))

	// Throughput: exec cat of the file in the running container, after a
	// first read brought it into the guest's page cache (as runc's run
	// below reads it from the host's): the figure is the output path's.
	cat := func(w io.Writer) time.Duration {
		start := time.Now()
		execID, err := sb.EnterContainer(ctx, "bench-exec", "", specs.Process{Args: []string{"cat", "/data"}, Cwd: "/"})
		check(err)
		attach(sb, "bench-exec", execID, w, check)()
		_, err = sb.WaitProcess(ctx, "bench-exec", execID)
		check(err)
		return time.Since(start)
	}
	cat(io.Discard)
	var rates []float64
	for range *catRuns {
		var n countWriter
		d := cat(&n)
		if n.n != int64(*sizeMB)<<20 {
			check(fmt.Errorf("cat printed %d bytes, want %d", n.n, int64(*sizeMB)<<20))
		}
		rates = append(rates, float64(n.n)/1e6/d.Seconds())
	}
	slices.Sort(rates)
	fmt.Printf("cocoon  stdout throughput (cat of a %d MB file): median %.1f MB/s (min %.1f, max %.1f, n=%d)\n",
		*sizeMB, rates[len(rates)/2], rates[0], rates[len(rates)-1], len(rates))
	check(sb.Delete(ctx))

	runcBench(work, trueBundle, rootfs, *runs, *execs, *sizeMB, check)
}

// runcBench runs the same workloads with runc, when it is installed.
func runcBench(work, trueBundle, rootfs string, runs, execs, sizeMB int, check func(error)) {
	runc, err := exec.LookPath("runc")
	if err != nil {
		fmt.Println("runc    not installed: no comparison")
		return
	}
	root := filepath.Join(work, "runc-root")
	var cold []time.Duration
	for i := 0; i < runs; i++ {
		start := time.Now()
		cmd := exec.Command(runc, "--root", root, "run", "--bundle", trueBundle, fmt.Sprintf("bench-runc-%d", i))
		if out, err := cmd.CombinedOutput(); err != nil {
			fmt.Printf("runc    run failed: %v: %s\n", err, out)
			return
		}
		cold = append(cold, time.Since(start))
	}
	fmt.Printf("runc    cold run of true: median %v (n=%d)\n", measure.Median(cold), len(cold))
	runcExec(runc, root, work, rootfs, execs, check)
	catBundle := filepath.Join(work, "cat")
	os.MkdirAll(catBundle, 0o755)
	spec := specutil.Default("cat", "/data")
	spec.Root.Path = rootfs
	check(specutil.WriteBundle(catBundle, spec))
	var n countWriter
	cmd := exec.Command(runc, "--root", root, "run", "--bundle", catBundle, "bench-runc-cat")
	cmd.Stdout = &n
	start := time.Now()
	if err := cmd.Run(); err == nil {
		d := time.Since(start)
		fmt.Printf("runc    stdout throughput (cat of a %d MB file): %.1f MB/s\n", sizeMB, float64(n.n)/1e6/d.Seconds())
	}
}

// runcExec measures runc exec of true into a running runc container.
func runcExec(runc, root, work, rootfs string, n int, check func(error)) {
	dir := filepath.Join(work, "runc-sleep")
	check(os.MkdirAll(dir, 0o755))
	spec := specutil.Default("sleep", "1000")
	spec.Root.Path = rootfs
	check(specutil.WriteBundle(dir, spec))
	id := "bench-runc-exec"
	// Detached, the container keeps its stdio: /dev/null, not a pipe that
	// would never reach end of file.
	if err := exec.Command(runc, "--root", root, "run", "-d", "--bundle", dir, id).Run(); err != nil {
		fmt.Printf("runc    run -d failed: %v\n", err)
		return
	}
	defer exec.Command(runc, "--root", root, "delete", "-f", id).Run()
	var lat []time.Duration
	for range n {
		start := time.Now()
		if out, err := exec.Command(runc, "--root", root, "exec", id, "true").CombinedOutput(); err != nil {
			fmt.Printf("runc    exec failed: %v: %s\n", err, out)
			return
		}
		lat = append(lat, time.Since(start))
	}
	fmt.Printf("runc    exec of true into a running container: median %v (n=%d)\n", measure.Median(lat), len(lat))
}

// attach copies a process's stdout and stderr to w and returns a function
// that waits until both reached EOF.
func attach(sb *cocoon.Sandbox, id, execID string, w io.Writer, check func(error)) func() {
	in, out, errs, err := sb.IOStream(context.Background(), id, execID)
	check(err)
	in.Close()
	var wg sync.WaitGroup
	var mu sync.Mutex
	lw := writerFunc(func(p []byte) (int, error) { mu.Lock(); defer mu.Unlock(); return w.Write(p) })
	for _, r := range []io.ReadCloser{out, errs} {
		if r == nil {
			continue
		}
		wg.Add(1)
		go func() { defer wg.Done(); io.Copy(lw, r); r.Close() }()
	}
	return wg.Wait
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

type countWriter struct{ n int64 }

func (c *countWriter) Write(p []byte) (int, error) { c.n += int64(len(p)); return len(p), nil }

// fatalIf exits on err (before a Runtime exists, nothing to clean up).
func fatalIf(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}
