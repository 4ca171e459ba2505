// Package ctrtest runs a private containerd for tests and benchmarks: its
// own root, state and socket under one directory, configured by
// scripts/containerd-cocoon.sh (Cocoon's shim as runtime and CRI handler
// "cocoon", runc as "runc"), with the local busybox and pause images
// imported, and a Stop that leaves nothing behind.
package ctrtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/cocoon-runtime/cocoon/internal/ociimage"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// The images Start imports, in both Namespace and CRINamespace.
const (
	BusyboxImage = ociimage.BusyboxName
	PauseImage   = ociimage.PauseName
)

const (
	// DefaultNamespace is the containerd namespace Ctr uses.
	DefaultNamespace = "cocoon-test"
	// CRINamespace is the namespace containerd's CRI keeps its pods,
	// containers and images in.
	CRINamespace = "k8s.io"
	// BlockfileHandler is the CRI runtime handler running Cocoon with the
	// blockfile snapshotter (see Containerd.Blockfile).
	BlockfileHandler = "cocoon-blockfile"
	// BlockfileScratchSize is the size of every blockfile snapshot.
	BlockfileScratchSize = 64 << 20
	// ScriptPath is the recipe script, relative to the repository root.
	ScriptPath = "scripts/containerd-cocoon.sh"
)

// Options say which binaries the containerd runs with.
type Options struct {
	// ShimDir is a directory holding containerd-shim-cocoon-v2; it is put
	// first on containerd's PATH, so containerd finds the shim there.
	ShimDir string
	// CocoonConfig is the Cocoon configuration file passed to the shim as
	// the runtime's ConfigPath option (the CRI handler "cocoon"; with ctr,
	// pass --runtime-config-path). Empty: the shim's default.
	CocoonConfig string
	// Containerd is the containerd binary (default: containerd on PATH).
	// Pointing it at a containerd 2.x build runs the tests against 2.x.
	Containerd string
	// Ctr is the ctr binary (default: ctr beside Containerd, else on PATH).
	Ctr string
	// RepoRoot is the repository holding ScriptPath (default: found from
	// this package's source directory or the working directory).
	RepoRoot string
	// LogLevel is containerd's log level (default info).
	LogLevel string
	// StartTimeout bounds the wait for containerd to serve (default 30s).
	StartTimeout time.Duration
}

// Containerd is a running private containerd.
type Containerd struct {
	Dir        string // everything below is under Dir
	Root       string // containerd's root (persistent state)
	State      string // containerd's state (sockets, mounts)
	Address    string // containerd's gRPC socket
	ConfigFile string // the config.toml written by the script
	LogFile    string // containerd's standard output and error
	CNIConfDir string // the loopback-only CNI configuration
	// Namespace is the namespace Ctr and CtrCommand use (DefaultNamespace);
	// set it to CRINamespace to look at what the CRI made.
	Namespace string
	CtrPath   string // the ctr binary

	// CDISpecDir is where the CRI reads CDI specs from (containerd 1.7
	// and later; empty before): a test writes its device specs there.
	CDISpecDir string

	// Measured by Start: until containerd (with its CRI) serves, and the
	// time to build and import the two images.
	StartDuration, ImportDuration time.Duration

	version  [2]int // major, minor
	cmd      *exec.Cmd
	exited   chan struct{} // closed when containerd has exited
	waitErr  error
	stopOnce sync.Once
	stopErr  error
}

// Start runs a containerd whose root, state, socket, configuration, CNI
// configuration and log all live under dir (created if needed; it should
// be short, socket paths have a length limit), waits until it serves, and
// imports BusyboxImage and PauseImage into DefaultNamespace and
// CRINamespace. dir belongs to the Containerd from then on: Stop removes
// it, and so does a failing Start, which leaves nothing running.
func Start(ctx context.Context, dir string, opts Options) (*Containerd, error) {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("start containerd: %w", err)
	}
	c := &Containerd{
		Dir:        dir,
		Root:       filepath.Join(dir, "root"),
		State:      filepath.Join(dir, "state"),
		Address:    filepath.Join(dir, "containerd.sock"),
		ConfigFile: filepath.Join(dir, "config.toml"),
		LogFile:    filepath.Join(dir, "containerd.log"),
		CNIConfDir: filepath.Join(dir, "cni"),
		Namespace:  DefaultNamespace,
		exited:     make(chan struct{}),
	}
	if len(c.Address) > 100 {
		return nil, fmt.Errorf("start containerd: socket path %s is too long; use a shorter directory", c.Address)
	}
	containerd := opts.Containerd
	if containerd == "" {
		containerd = "containerd"
	}
	if containerd, err = exec.LookPath(containerd); err != nil {
		return nil, fmt.Errorf("start containerd: %w (apt-get install containerd)", err)
	}
	if c.CtrPath, err = findCtr(opts.Ctr, containerd); err != nil {
		return nil, fmt.Errorf("start containerd: %w", err)
	}
	repo := opts.RepoRoot
	if repo == "" {
		if repo, err = RepoRoot(); err != nil {
			return nil, fmt.Errorf("start containerd: %w", err)
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("start containerd: %w", err)
	}
	// Until containerd runs, failing means removing dir; then, Stop.
	failEarly := func(err error) (*Containerd, error) {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("start containerd: %w", err)
	}

	t0 := time.Now()
	args := []string{filepath.Join(repo, ScriptPath), "config",
		"--root", c.Root, "--state", c.State, "--address", c.Address, "--cni-conf-dir", c.CNIConfDir}
	if opts.CocoonConfig != "" {
		args = append(args, "--cocoon-config", opts.CocoonConfig)
	}
	if opts.LogLevel != "" {
		args = append(args, "--log-level", opts.LogLevel)
	}
	if c.version, err = containerdVersion(ctx, containerd); err != nil {
		return failEarly(err)
	}
	if c.Blockfile() {
		scratch := filepath.Join(dir, "blockfile-scratch.ext4")
		if err := makeExt4(ctx, scratch, BlockfileScratchSize); err != nil {
			return failEarly(err)
		}
		args = append(args, "--blockfile-scratch", scratch)
		c.CDISpecDir = filepath.Join(dir, "cdi")
		if err := os.Mkdir(c.CDISpecDir, 0o700); err != nil {
			return failEarly(err)
		}
		args = append(args, "--cdi-spec-dir", c.CDISpecDir)
	}
	var stderr bytes.Buffer
	script := exec.CommandContext(ctx, "bash", args...)
	script.Stderr = &stderr
	config, err := script.Output()
	if err != nil {
		return failEarly(fmt.Errorf("%s config: %w: %s", ScriptPath, err, strings.TrimSpace(stderr.String())))
	}
	if err := os.WriteFile(c.ConfigFile, config, 0o600); err != nil {
		return failEarly(err)
	}

	log, err := os.OpenFile(c.LogFile, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return failEarly(err)
	}
	// Not CommandContext: containerd must outlive ctx, until Stop.
	c.cmd = exec.Command(containerd, "--config", c.ConfigFile)
	c.cmd.Dir = dir
	c.cmd.Stdout, c.cmd.Stderr = log, log
	c.cmd.Env = containerdEnv(opts.ShimDir, containerd)
	// Its own process group, so a terminal's ^C reaches only the test; and
	// gone with the test process if that dies without calling Stop.
	c.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	if err := c.cmd.Start(); err != nil {
		log.Close()
		return failEarly(err)
	}
	log.Close()
	go func() {
		c.waitErr = c.cmd.Wait()
		close(c.exited)
	}()

	fail := func(err error) (*Containerd, error) {
		err = fmt.Errorf("start containerd: %w%s", err, c.logTail())
		// Stop removes dir, and with it the log; the error keeps its tail.
		if serr := c.Stop(context.WithoutCancel(ctx)); serr != nil {
			err = errors.Join(err, serr)
		}
		return nil, err
	}
	timeout := opts.StartTimeout
	if timeout == 0 {
		timeout = 30 * time.Second
	}
	if err := c.waitServing(ctx, timeout); err != nil {
		return fail(err)
	}
	c.StartDuration = time.Since(t0)

	t0 = time.Now()
	if err := c.importImages(ctx); err != nil {
		return fail(err)
	}
	c.ImportDuration = time.Since(t0)
	return c, nil
}

// containerdVersion is the major and minor version of the containerd
// binary.
func containerdVersion(ctx context.Context, containerd string) ([2]int, error) {
	out, err := exec.CommandContext(ctx, containerd, "--version").Output()
	if err != nil {
		return [2]int{}, fmt.Errorf("%s --version: %w", containerd, err)
	}
	// "containerd github.com/containerd/containerd/v2 2.1.5 <commit>"
	f := strings.Fields(string(out))
	if len(f) < 3 {
		return [2]int{}, fmt.Errorf("%s --version: unexpected output %q", containerd, out)
	}
	var v [2]int
	if _, err := fmt.Sscanf(f[2], "%d.%d", &v[0], &v[1]); err != nil {
		return [2]int{}, fmt.Errorf("%s --version: unexpected version %q", containerd, f[2])
	}
	return v, nil
}

// Blockfile reports whether containerd has the blockfile snapshotter
// (1.7 and later, which have CDI and the CRI's sandbox resource
// annotations too): Start then enables it, with a 64 MiB ext4 scratch
// image, imports the images for it too, and the CRI gets the handler
// BlockfileHandler.
func (c *Containerd) Blockfile() bool { return c.AtLeast(1, 7) }

// AtLeast reports whether this containerd is version major.minor or
// later.
func (c *Containerd) AtLeast(major, minor int) bool {
	return c.version[0] > major || c.version[0] == major && c.version[1] >= minor
}

// makeExt4 writes an empty ext4 file system image of size bytes at path.
func makeExt4(ctx context.Context, path string, size int64) error {
	out, err := exec.CommandContext(ctx, "mkfs.ext4", "-q", "-m", "0", path, strconv.FormatInt(size>>10, 10)+"k").CombinedOutput()
	if err != nil {
		return fmt.Errorf("mkfs.ext4 %s: %w: %s", path, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// containerdEnv is the environment containerd runs with: shimDir first on
// PATH, then the directory of the containerd binary (where a containerd
// 2.x build keeps its runc shim), then the usual PATH.
func containerdEnv(shimDir, containerd string) []string {
	var path []string
	if shimDir != "" {
		if abs, err := filepath.Abs(shimDir); err == nil {
			shimDir = abs
		}
		path = append(path, shimDir)
	}
	path = append(path, filepath.Dir(containerd))
	path = append(path, filepath.SplitList(os.Getenv("PATH"))...)
	path = append(path, "/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "PATH=") || strings.HasPrefix(kv, "CONTAINERD_") {
			continue
		}
		env = append(env, kv)
	}
	return append(env, "PATH="+strings.Join(path, string(filepath.ListSeparator)))
}

func findCtr(ctr, containerd string) (string, error) {
	if ctr == "" {
		beside := filepath.Join(filepath.Dir(containerd), "ctr")
		if _, err := os.Stat(beside); err == nil {
			return beside, nil
		}
		ctr = "ctr"
	}
	return exec.LookPath(ctr)
}

// RepoRoot finds the repository holding ScriptPath: from this package's
// source directory when the binary was built from source here, else from
// the working directory upwards.
func RepoRoot() (string, error) {
	var starts []string
	if _, file, _, ok := runtime.Caller(0); ok && filepath.IsAbs(file) {
		starts = append(starts, filepath.Dir(file))
	}
	if wd, err := os.Getwd(); err == nil {
		starts = append(starts, wd)
	}
	for _, d := range starts {
		for {
			if _, err := os.Stat(filepath.Join(d, ScriptPath)); err == nil {
				return d, nil
			}
			parent := filepath.Dir(d)
			if parent == d {
				break
			}
			d = parent
		}
	}
	return "", fmt.Errorf("cannot find %s above %s; set Options.RepoRoot", ScriptPath, strings.Join(starts, " or "))
}

// waitServing waits until containerd's CRI answers Version: containerd
// then serves its own API too, and the CRI has finished initializing.
func (c *Containerd) waitServing(ctx context.Context, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var last error
	for {
		if _, err := os.Stat(c.Address); err == nil {
			last = c.criVersion(ctx)
			if last == nil {
				return nil
			}
		}
		select {
		case <-c.exited:
			return fmt.Errorf("containerd exited: %v", c.waitErr)
		case <-ctx.Done():
			if last == nil {
				last = fmt.Errorf("no socket %s", c.Address)
			}
			return fmt.Errorf("containerd did not serve within %s: %w", timeout, last)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func (c *Containerd) criVersion(ctx context.Context) error {
	rs, _, closeConn, err := c.CRI(ctx)
	if err != nil {
		return err
	}
	defer closeConn()
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	_, err = rs.Version(ctx, &runtimeapi.VersionRequest{})
	return err
}

// localImages is the archive of the two images, built once a process: the
// output is deterministic, so every containerd gets the same digests.
var localImages struct {
	once sync.Once
	b    []byte
	err  error
}

// importImages writes the two local images, in one archive, under Dir and
// imports them into Namespace and CRINamespace, both at once.
func (c *Containerd) importImages(ctx context.Context) error {
	localImages.once.Do(func() {
		var buf bytes.Buffer
		localImages.err = ociimage.WriteBusybox(&buf, ociimage.BusyboxImage(BusyboxImage), ociimage.PauseImage(PauseImage))
		localImages.b = buf.Bytes()
	})
	if localImages.err != nil {
		return localImages.err
	}
	archive := filepath.Join(c.Dir, "images.tar")
	if err := os.WriteFile(archive, localImages.b, 0o600); err != nil {
		return err
	}
	namespaces := []string{c.Namespace, CRINamespace}
	errs := make([]error, len(namespaces))
	var wg sync.WaitGroup
	for i, ns := range namespaces {
		wg.Add(1)
		go func() {
			defer wg.Done()
			imports := [][]string{{"images", "import", archive}}
			if c.Blockfile() {
				// --local: the transfer service unpacks only for the
				// default snapshotter unless configured otherwise.
				imports = append(imports, []string{"images", "import", "--local", "--snapshotter", "blockfile", archive})
			}
			for _, args := range imports {
				if out, err := c.ctrIn(ctx, ns, args...).CombinedOutput(); err != nil {
					errs[i] = fmt.Errorf("ctr -n %s %s: %w: %s", ns, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
					return
				}
			}
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	return c.waitCRIImages(ctx)
}

// waitCRIImages waits until the CRI sees the imported images: containerd
// 2.x's CRI learns of an import from an event, after ctr returned.
func (c *Containerd) waitCRIImages(ctx context.Context) error {
	_, is, closeConn, err := c.CRI(ctx)
	if err != nil {
		return err
	}
	defer closeConn()
	deadline := time.Now().Add(15 * time.Second)
	for _, img := range []string{PauseImage, BusyboxImage} {
		for {
			st, err := is.ImageStatus(ctx, &runtimeapi.ImageStatusRequest{Image: &runtimeapi.ImageSpec{Image: img}})
			if err == nil && st.Image != nil {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("the CRI does not see image %s after its import (%v)", img, err)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	return nil
}

// CtrCommand returns the command ctr --address Address -n Namespace args.
//
// So that nothing lands outside Dir, not even for a detached container,
// `run`, `tasks start` and `tasks exec` get --fifo-dir (ctr's IO FIFOs,
// else in /run/containerd/fifo) and `run` gets --runc-root (runc's state,
// else in /run/containerd/runc; only the runc runtime reads it), both
// under State, before the caller's own flags, which win.
func (c *Containerd) CtrCommand(ctx context.Context, args ...string) *exec.Cmd {
	return c.ctrIn(ctx, c.Namespace, args...)
}

func (c *Containerd) ctrIn(ctx context.Context, ns string, args ...string) *exec.Cmd {
	full := append([]string{"--address", c.Address, "-n", ns}, c.privateDirs(args)...)
	cmd := exec.CommandContext(ctx, c.CtrPath, full...)
	cmd.Dir = c.Dir
	return cmd
}

// FIFODir and RuncRoot are where ctr keeps IO FIFOs and runc its state for
// this containerd (the CRI's runc handler too, through its Root option).
func (c *Containerd) FIFODir() string  { return filepath.Join(c.State, "fifo") }
func (c *Containerd) RuncRoot() string { return filepath.Join(c.State, "runc") }

// privateDirs inserts the --fifo-dir and --runc-root flags CtrCommand
// describes into args.
func (c *Containerd) privateDirs(args []string) []string {
	insert := func(at int, flags ...string) []string {
		out := append([]string{}, args[:at]...)
		out = append(out, flags...)
		return append(out, args[at:]...)
	}
	switch {
	case len(args) >= 1 && args[0] == "run":
		return insert(1, "--fifo-dir", c.FIFODir(), "--runc-root", c.RuncRoot())
	case len(args) >= 2 && (args[0] == "tasks" || args[0] == "task" || args[0] == "t") &&
		(args[1] == "start" || args[1] == "exec"):
		return insert(2, "--fifo-dir", c.FIFODir())
	}
	return args
}

// Ctr runs ctr --address Address -n Namespace args and returns its output.
// A failure (including a non-zero exit, an *exec.ExitError) names the
// command and carries its standard error.
func (c *Containerd) Ctr(ctx context.Context, args ...string) (stdout, stderr string, err error) {
	cmd := c.CtrCommand(ctx, args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err = cmd.Run()
	if err != nil {
		err = &CtrError{Args: args, Stderr: strings.TrimSpace(errb.String()), Err: err}
	}
	return out.String(), errb.String(), err
}

// CtrError is a failed ctr command.
type CtrError struct {
	Args   []string
	Stderr string
	Err    error
}

func (e *CtrError) Error() string {
	msg := fmt.Sprintf("ctr %s: %v", strings.Join(e.Args, " "), e.Err)
	if e.Stderr != "" {
		msg += ": " + e.Stderr
	}
	return msg
}

func (e *CtrError) Unwrap() error { return e.Err }

// ExitCode is the exit status of the ctr command (the container's, for
// ctr run), or -1 if it did not exit normally.
func (e *CtrError) ExitCode() int {
	var ee *exec.ExitError
	if errors.As(e.Err, &ee) {
		return ee.ExitCode()
	}
	return -1
}

// CRI connects to containerd's CRI over its socket. close closes the
// connection.
func (c *Containerd) CRI(ctx context.Context) (runtimeapi.RuntimeServiceClient, runtimeapi.ImageServiceClient, func() error, error) {
	conn, err := grpc.NewClient("unix://"+c.Address, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, nil, nil, fmt.Errorf("connect to CRI at %s: %w", c.Address, err)
	}
	return runtimeapi.NewRuntimeServiceClient(conn), runtimeapi.NewImageServiceClient(conn), conn.Close, nil
}

// Pid is containerd's process id.
func (c *Containerd) Pid() int { return c.cmd.Process.Pid }

// LogTail returns about the last n lines of containerd's log.
func (c *Containerd) LogTail(n int) string {
	f, err := os.Open(c.LogFile)
	if err != nil {
		return ""
	}
	defer f.Close()
	const max = 16 << 10
	if st, err := f.Stat(); err == nil && st.Size() > max {
		f.Seek(st.Size()-max, io.SeekStart)
	}
	b, _ := io.ReadAll(f)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func (c *Containerd) logTail() string {
	if t := c.LogTail(20); t != "" {
		return "\ncontainerd log (" + c.LogFile + ", last lines):\n" + t
	}
	return ""
}
