// Command network measures a pod's network: TCP throughput from a peer
// network namespace to the container and back (MB/s, median of -runs), and
// request/response round trips (median and p99 of -rr), for a container
// in a Cocoon VM and for a runc container on the same bridge, in one run.
//
//	go run ./bench/network -runs 5 -mb 200 -rr 2000
//
// The topology is made here and removed at the end: a peer netns holding a
// bridge (10.232.0.1/24) and the load generator, and one pod netns for
// each runtime, joined to the bridge by a veth as CNI's bridge plugin does
// (Cocoon's 10.232.0.2, runc's 10.232.0.3). Traffic never leaves them.
// The load generator is nettool, a static binary put in the containers'
// rootfs and run in the peer netns.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/cocoon-runtime/cocoon"
	"github.com/cocoon-runtime/cocoon/hypervisor"
	"github.com/cocoon-runtime/cocoon/internal/layout"
	"github.com/cocoon-runtime/cocoon/internal/specutil"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

const (
	peerIP   = "10.232.0.1"
	cocoonIP = "10.232.0.2"
	runcIP   = "10.232.0.3"
)

func main() {
	runs := flag.Int("runs", 5, "throughput runs each way")
	mb := flag.Int("mb", 200, "MB sent in each throughput run")
	rr := flag.Int("rr", 2000, "request/response round trips")
	rrSize := flag.Int("rr-size", 64, "bytes in each request and response")
	accel := flag.String("accel", "auto", "accelerator: auto, kvm, tcg")
	vcpus := flag.Int("vcpus", 1, "the sandbox VM's vCPUs")
	dataDir := flag.String("data-dir", layout.DataDir, "Cocoon data directory (guest image)")
	flag.Parse()

	b := &bench{tag: fmt.Sprintf("ccbn%d", os.Getpid()%100000)}
	defer b.cleanup()
	if err := b.run(*runs, int64(*mb)*1e6, *rr, *rrSize, cocoon.VMConfig{Accelerator: hypervisor.Accelerator(*accel), VCPUs: uint32(*vcpus), MemoryMiB: 256}, *dataDir); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		b.cleanup()
		os.Exit(1)
	}
}

type bench struct {
	tag   string
	undo  []func()
	nettl string // nettool on the host
}

func (b *bench) cleanup() {
	for i := len(b.undo) - 1; i >= 0; i-- {
		b.undo[i]()
	}
	b.undo = nil
}

func (b *bench) ns(name string) string { return b.tag + "-" + name }

func sh(args ...string) error {
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		return fmt.Errorf("%s: %w: %s", strings.Join(args, " "), err, out)
	}
	return nil
}

// topology makes the peer netns with its bridge and a pod netns for each
// of pods (name → address).
func (b *bench) topology(pods [][2]string) error {
	peer := b.ns("peer")
	if err := sh("ip", "netns", "add", peer); err != nil {
		return err
	}
	b.undo = append(b.undo, func() { exec.Command("ip", "netns", "del", peer).Run() })
	for _, c := range [][]string{
		{"link", "set", "lo", "up"},
		{"link", "add", "br0", "type", "bridge"},
		{"addr", "add", peerIP + "/24", "dev", "br0"},
		{"link", "set", "br0", "up"},
	} {
		if err := sh(append([]string{"ip", "-n", peer}, c...)...); err != nil {
			return err
		}
	}
	for i, p := range pods {
		ns := b.ns(p[0])
		if err := sh("ip", "netns", "add", ns); err != nil {
			return err
		}
		b.undo = append(b.undo, func() { exec.Command("ip", "netns", "del", ns).Run() })
		port := fmt.Sprintf("vb%d", i)
		for _, c := range [][]string{
			{"ip", "link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", port, "netns", peer},
			{"ip", "-n", peer, "link", "set", port, "master", "br0", "up"},
			{"ip", "-n", ns, "link", "set", "lo", "up"},
			{"ip", "-n", ns, "link", "set", "eth0", "up"},
			{"ip", "-n", ns, "addr", "add", p[1] + "/24", "dev", "eth0"},
			{"ip", "-n", ns, "route", "add", "default", "via", peerIP},
		} {
			if err := sh(c...); err != nil {
				return err
			}
		}
	}
	return nil
}

// client runs nettool in the peer netns and returns its figures.
func (b *bench) client(args ...string) ([]float64, error) {
	cmd := exec.Command("ip", append([]string{"netns", "exec", b.ns("peer"), b.nettl}, args...)...)
	out, err := cmd.Output()
	if err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			return nil, fmt.Errorf("nettool %s: %w: %s", strings.Join(args, " "), err, ee.Stderr)
		}
		return nil, err
	}
	var fs []float64
	for _, f := range strings.Fields(string(out)) {
		v, err := strconv.ParseFloat(f, 64)
		if err != nil {
			return nil, fmt.Errorf("nettool %s printed %q", strings.Join(args, " "), out)
		}
		fs = append(fs, v)
	}
	return fs, nil
}

// waitServing waits until nettool serve answers at ip.
func (b *bench) waitServing(ip string) error {
	deadline := time.Now().Add(60 * time.Second)
	for {
		_, err := b.client("rr", ip, "1", "1")
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("nettool at %s never answered: %w", ip, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// measure prints the figures of the server at ip, labelled who.
func (b *bench) measure(who, ip string, runs int, n int64, rr, rrSize int) error {
	if err := b.waitServing(ip); err != nil {
		return err
	}
	for _, dir := range []struct{ cmd, label string }{{"up", "peer → container"}, {"down", "container → peer"}} {
		var rates []float64
		for range runs {
			f, err := b.client(dir.cmd, ip, strconv.FormatInt(n, 10))
			if err != nil {
				return err
			}
			rates = append(rates, f[0])
		}
		slices.Sort(rates)
		fmt.Printf("%-7s TCP %s: median %.1f MB/s (min %.1f, max %.1f, n=%d, %d MB each)\n",
			who, dir.label, rates[len(rates)/2], rates[0], rates[len(rates)-1], len(rates), n/1e6)
	}
	f, err := b.client("rr", ip, strconv.Itoa(rr), strconv.Itoa(rrSize))
	if err != nil {
		return err
	}
	fmt.Printf("%-7s TCP round trip (%d B each way, n=%d): median %.0f µs, p99 %.0f µs\n", who, rrSize, rr, f[0], f[1])
	return nil
}

func (b *bench) run(runs int, n int64, rr, rrSize int, vm cocoon.VMConfig, dataDir string) error {
	work, err := os.MkdirTemp("", "cocoon-bench-net-")
	if err != nil {
		return err
	}
	b.undo = append(b.undo, func() { os.RemoveAll(work) })
	rootfs := filepath.Join(work, "rootfs")
	if err := specutil.BusyboxRootfs(rootfs, ""); err != nil {
		return err
	}
	b.nettl = filepath.Join(rootfs, "nettool")
	build := exec.Command("go", "build", "-trimpath", "-o", b.nettl, "github.com/cocoon-runtime/cocoon/bench/network/nettool")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		return fmt.Errorf("build nettool: %w: %s", err, out)
	}
	runc, runcErr := exec.LookPath("runc")
	pods := [][2]string{{"cocoon", cocoonIP}}
	if runcErr == nil {
		pods = append(pods, [2]string{"runc", runcIP})
	}
	if err := b.topology(pods); err != nil {
		return err
	}
	bundle := func(name, netns string) (string, error) {
		dir := filepath.Join(work, name)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return "", err
		}
		spec := specutil.Default("/nettool", "serve")
		spec.Root.Path = rootfs
		if netns != "" {
			spec.Linux.Namespaces = append(spec.Linux.Namespaces, specs.LinuxNamespace{Type: specs.NetworkNamespace, Path: netns})
		}
		return dir, specutil.WriteBundle(dir, spec)
	}

	stateDir, err := os.MkdirTemp("/run", "cocoon-bench-")
	if err != nil {
		return err
	}
	b.undo = append(b.undo, func() { os.RemoveAll(stateDir) })
	rt, err := cocoon.New(cocoon.Options{StateDir: stateDir, DataDir: dataDir})
	if err != nil {
		return err
	}
	ctx := context.Background()
	cb, err := bundle("cocoon", "")
	if err != nil {
		return err
	}
	id := b.tag
	b.undo = append(b.undo, func() { rt.DeleteSandbox(context.Background(), id) })
	if _, err := rt.RunSandbox(ctx, cocoon.SandboxConfig{ID: id, VM: vm, NetNS: filepath.Join("/var/run/netns", b.ns("cocoon")),
		Containers: []cocoon.ContainerConfig{{ID: id, Bundle: cb}}}); err != nil {
		return err
	}
	if err := b.measure("cocoon", cocoonIP, runs, n, rr, rrSize); err != nil {
		return err
	}
	if err := rt.DeleteSandbox(ctx, id); err != nil {
		return err
	}

	if runcErr != nil {
		fmt.Println("runc    not installed: no comparison")
		return nil
	}
	rb, err := bundle("runc", filepath.Join("/var/run/netns", b.ns("runc")))
	if err != nil {
		return err
	}
	root := filepath.Join(work, "runc-root")
	// Detached, the container keeps its stdio: not a pipe, which would
	// keep the call from returning.
	if err := exec.Command(runc, "--root", root, "run", "-d", "--bundle", rb, id).Run(); err != nil {
		return fmt.Errorf("runc run: %w", err)
	}
	b.undo = append(b.undo, func() { exec.Command(runc, "--root", root, "delete", "-f", id).Run() })
	return b.measure("runc", runcIP, runs, n, rr, rrSize)
}
