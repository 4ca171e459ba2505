// Package qemu drives QEMU as a Cocoon hypervisor.
//
// A QEMU value runs one VM. QEMU is started daemonized, so the VM outlives
// the process that started it; its state is written to the VM's runtime
// directory, and Open re-attaches to a running VM from another process.
// QEMU is controlled over QMP, the guest console is captured to a file, and
// the process is tracked with a pidfd so it is always reaped and never
// confused with a recycled pid.
package qemu

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/cocoon-runtime/cocoon/agent/protocol"
	"github.com/cocoon-runtime/cocoon/hypervisor"
	"github.com/cocoon-runtime/cocoon/hypervisor/qemu/internal/accel"
	"github.com/cocoon-runtime/cocoon/hypervisor/qemu/internal/qmp"
	"github.com/cocoon-runtime/cocoon/internal/boundedfs"
	"github.com/cocoon-runtime/cocoon/internal/guesttext"
	"github.com/cocoon-runtime/cocoon/internal/safefs"
	"github.com/cocoon-runtime/cocoon/internal/vmmproc"
	"golang.org/x/sys/unix"
)

// DefaultPath is the QEMU binary looked up on PATH when the config names none.
const DefaultPath = accel.DefaultQEMUPath

// Options configure a QEMU driver.
type Options struct {
	// Log receives the driver's messages; nil discards them.
	Log *slog.Logger
	// CacheDir holds the accelerator probe's cached result.
	CacheDir string
	// VsockAvailable reports whether the host can give the guest a vsock
	// device; nil checks for /dev/vhost-vsock.
	VsockAvailable func() bool
}

// QEMU is a VM run by QEMU. It implements hypervisor.Hypervisor.
type QEMU struct {
	opts Options
	log  *slog.Logger

	mu     sync.Mutex
	id     string
	cfg    hypervisor.Config
	launch launch
	proc   *vmmproc.Process
	// ports maps hot-plugged device IDs to the root port they occupy.
	ports map[string]int
}

var _ hypervisor.Hypervisor = (*QEMU)(nil)

// New returns a driver for one VM.
func New(opts Options) *QEMU {
	log := opts.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if opts.VsockAvailable == nil {
		opts.VsockAvailable = func() bool {
			_, err := os.Stat("/dev/vhost-vsock")
			return err == nil
		}
	}
	return &QEMU{opts: opts, log: log, ports: make(map[string]int)}
}

// CreateVM validates cfg, resolves defaults and the accelerator, and
// creates the VM's runtime directory.
func (q *QEMU) CreateVM(ctx context.Context, id string, cfg hypervisor.Config) error {
	if err := hypervisor.ValidateID(id); err != nil {
		return &hypervisor.ConfigError{Field: "id", Err: err}
	}
	cfg, err := q.resolve(ctx, cfg)
	if err != nil {
		return err
	}
	dir := filepath.Join(cfg.StateDir, id)
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return fmt.Errorf("create vm %s: %w", id, err)
	}
	if err := os.Mkdir(dir, 0o700); err != nil {
		if errors.Is(err, os.ErrExist) {
			return fmt.Errorf("create vm %s: %w", id, os.ErrExist)
		}
		return fmt.Errorf("create vm %s: %w", id, err)
	}
	l := launch{id: id, cfg: cfg, machine: cfg.MachineType, files: vmFiles(dir)}
	l.accel, err = q.resolveAccel(ctx, cfg)
	if err != nil {
		os.RemoveAll(dir)
		return err
	}
	if l.machine == MachineMicrovm && l.accel == hypervisor.AccelTCG {
		l.tscKHz = hostTSCKHz()
	}
	if useVsock(cfg.AgentTransport, q.opts.VsockAvailable) {
		l.vsockCID = cidFor(id)
	}
	l.confined = os.Geteuid() == 0 // only root can drop to another uid
	q.mu.Lock()
	q.id, q.cfg, q.launch = id, cfg, l
	q.mu.Unlock()
	return nil
}

func vmFiles(dir string) files {
	return files{
		dir:     dir,
		qmp:     filepath.Join(dir, "qmp.sock"),
		console: filepath.Join(dir, consoleDir, "console.log"),
		pid:     filepath.Join(dir, "qemu.pid"),
		log:     filepath.Join(dir, consoleDir, "qemu.log"),
		state:   filepath.Join(dir, "vm.json"),
		root:    filepath.Join(dir, "root"),
	}
}

func useVsock(t hypervisor.Transport, available func() bool) bool {
	switch t {
	case hypervisor.TransportVsock:
		return true
	case hypervisor.TransportSerial:
		return false
	default:
		return available()
	}
}

// cidFor derives a guest CID from the VM id. CIDs 0-2 are reserved.
func cidFor(id string) uint32 { return 3 + hashID(id)%(1<<31) }

// hashID is the FNV-1a hash of a VM id.
func hashID(id string) uint32 {
	var h uint32 = 2166136261
	for i := 0; i < len(id); i++ {
		h = (h ^ uint32(id[i])) * 16777619
	}
	return h
}

// resolve fills in defaults and checks that the files cfg names exist.
func (q *QEMU) resolve(ctx context.Context, cfg hypervisor.Config) (hypervisor.Config, error) {
	if cfg.Path == "" {
		cfg.Path = DefaultPath
	}
	p, err := exec.LookPath(cfg.Path)
	if err != nil {
		return cfg, &hypervisor.ConfigError{Field: "hypervisor path", Err: fmt.Errorf("qemu binary %q: %w", cfg.Path, err)}
	}
	cfg.Path = p
	if cfg.Kernel == "" {
		return cfg, &hypervisor.ConfigError{Field: "kernel", Err: errors.New("no guest kernel configured")}
	}
	for field, path := range map[string]string{"kernel": cfg.Kernel, "initrd": cfg.Initrd} {
		if path == "" {
			continue
		}
		if st, err := os.Stat(path); err != nil {
			return cfg, &hypervisor.ConfigError{Field: field, Err: err}
		} else if !st.Mode().IsRegular() {
			return cfg, &hypervisor.ConfigError{Field: field, Err: fmt.Errorf("%s is not a regular file", path)}
		}
	}
	if cfg.MachineType == "" {
		cfg.MachineType = DefaultMachine
	}
	if cfg.MachineType != MachineQ35 && cfg.MachineType != MachineMicrovm {
		return cfg, &hypervisor.ConfigError{Field: "machine type", Err: fmt.Errorf("%q is not supported (use %s or %s)", cfg.MachineType, MachineQ35, MachineMicrovm)}
	}
	if cfg.VCPUs == 0 {
		cfg.VCPUs = 1
	}
	if cfg.MemoryMiB == 0 {
		cfg.MemoryMiB = 256
	}
	if cfg.MemoryMiB < 64 {
		return cfg, &hypervisor.ConfigError{Field: "memory", Err: fmt.Errorf("%d MiB is too little (minimum 64)", cfg.MemoryMiB)}
	}
	if cfg.StateDir == "" {
		cfg.StateDir = "/run/cocoon/vm"
	}
	if cfg.Accelerator == "" {
		cfg.Accelerator = hypervisor.AccelAuto
	}
	if cfg.MachineType == MachineMicrovm && cfg.HotplugSlots > 0 {
		return cfg, &hypervisor.ConfigError{Field: "hotplug slots", Err: errors.New("microvm cannot hotplug devices; use q35")}
	}
	for _, p := range cfg.KernelParams {
		if strings.ContainsAny(p, " \t\n") {
			return cfg, &hypervisor.ConfigError{Field: "kernel params", Err: fmt.Errorf("parameter %q contains white space", p)}
		}
	}
	ids := map[string]bool{}
	for _, d := range cfg.NetDevices {
		if err := hypervisor.ValidateID(d.ID); err != nil || ids[d.ID] {
			return cfg, &hypervisor.ConfigError{Field: "net devices", Err: fmt.Errorf("device id %q is invalid or given twice", d.ID)}
		}
		ids[d.ID] = true
		if len(d.Taps) == 0 || len(d.Taps) > maxNetQueues || slices.Contains(d.Taps, nil) {
			return cfg, &hypervisor.ConfigError{Field: "net devices", Err: fmt.Errorf("device %s has %d tap files (want 1 to %d)", d.ID, len(d.Taps), maxNetQueues)}
		}
		if len(d.VhostNet) != 0 && (len(d.VhostNet) != len(d.Taps) || slices.Contains(d.VhostNet, nil)) {
			return cfg, &hypervisor.ConfigError{Field: "net devices", Err: fmt.Errorf("device %s has %d vhost-net files for %d taps", d.ID, len(d.VhostNet), len(d.Taps))}
		}
		if mac, err := net.ParseMAC(d.MAC); err != nil || len(mac) != 6 {
			return cfg, &hypervisor.ConfigError{Field: "net devices", Err: fmt.Errorf("device %s: bad mac %q", d.ID, d.MAC)}
		}
		if q := d.QueueSize; q != 0 && (q < 256 || q > 1024 || q&(q-1) != 0) {
			return cfg, &hypervisor.ConfigError{Field: "net devices", Err: fmt.Errorf("device %s: queue size %d (want 0, or a power of two from 256 to 1024)", d.ID, q)}
		}
	}
	return cfg, nil
}

func (q *QEMU) resolveAccel(ctx context.Context, cfg hypervisor.Config) (hypervisor.Accelerator, error) {
	res, err := accel.Resolve(ctx, cfg.Accelerator, accel.ProbeConfig{QEMUPath: cfg.Path, Kernel: cfg.Kernel, CacheDir: q.opts.CacheDir})
	if err != nil {
		var ce *hypervisor.ConfigError
		if errors.As(err, &ce) {
			ce.Field = "accelerator"
			return "", ce
		}
		return "", &hypervisor.ConfigError{Field: "accelerator", Err: err}
	}
	q.log.Debug("accelerator chosen", "accel", res.Accelerator, "reason", res.Reason, "cached", res.Cached)
	return res.Accelerator, nil
}

// hostTSCKHz reads the host's CPU frequency in kHz from /proc/cpuinfo.
func hostTSCKHz() uint64 {
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if ok && strings.TrimSpace(k) == "cpu MHz" {
			mhz, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err == nil {
				return uint64(mhz * 1000)
			}
		}
	}
	return 0
}

// StartVM launches QEMU and connects to its QMP socket.
func (q *QEMU) StartVM(ctx context.Context) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.launchLocked(ctx)
}

func (q *QEMU) launchLocked(ctx context.Context) (err error) {
	if q.id == "" {
		return errors.New("start vm: CreateVM was not called")
	}
	if q.proc != nil {
		return fmt.Errorf("start vm %s: already started", q.id)
	}
	l := q.launch
	defer func() {
		if err != nil {
			q.teardownLocked(context.Background())
		}
	}()

	if err := boundedfs.Mount(filepath.Dir(l.files.console), consoleLimit, 16); err != nil {
		return fmt.Errorf("start vm %s: console: %w", q.id, err)
	}
	logf, err := os.OpenFile(l.files.log, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("start vm %s: %w", q.id, err)
	}
	defer logf.Close()
	// The console file is created by QEMU; make sure it is root-only.
	if f, err := os.OpenFile(l.files.console, os.O_CREATE|os.O_WRONLY, 0o600); err == nil {
		f.Close()
	}
	if l.confined {
		if err := makeRoot(l.files.root); err != nil {
			return fmt.Errorf("start vm %s: %w", q.id, err)
		}
	}
	// QEMU runs in a session of its own and outlives this process; it is
	// not daemonized (its fork would precede nothing useful and its seccomp
	// sandbox forbids it), so this process reaps it while it lives.
	cmd := exec.Command(l.cfg.Path, l.args()...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Dir = l.files.dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	// The taps and vhost-net files, as fds 3, 4, ... (see netFiles).
	cmd.ExtraFiles = append(cmd.ExtraFiles, netFiles(l.cfg.NetDevices)...)
	q.log.Debug("starting qemu", "vm", q.id, "args", cmd.Args)
	if err := cmd.Start(); err != nil {
		return &StartError{VM: q.id, Err: err}
	}
	pid := cmd.Process.Pid
	cmd.Process.Release()
	// Our child, not reaped yet: its pid is its own (and its command line
	// may not be readable yet, right after exec).
	q.proc, err = vmmproc.Attach(pid, "", 0)
	if err != nil {
		unix.Kill(pid, unix.SIGKILL)
		return fmt.Errorf("start vm %s: %w", q.id, err)
	}
	// QMP greets once QEMU finished starting; QEMU exiting first is a
	// failed start, explained by what it printed.
	qctx, cancel := context.WithTimeout(ctx, qmpStartTimeout)
	defer cancel()
	go func() {
		select {
		case <-q.proc.Done():
			cancel()
		case <-qctx.Done():
		}
	}()
	c, err := qmp.Dial(qctx, l.files.qmp)
	if err != nil {
		if !q.proc.Alive() {
			return &StartError{VM: q.id, Err: errors.New("qemu exited"), Output: tail(l.files.log, 2048)}
		}
		return fmt.Errorf("start vm %s: %w", q.id, err)
	}
	defer c.Close()
	if !l.incoming {
		if err := c.Cont(ctx); err != nil {
			return fmt.Errorf("start vm %s: %w", q.id, err)
		}
	}
	return q.saveLocked()
}

// qmpStartTimeout bounds QEMU's start, until its QMP greeting.
const qmpStartTimeout = 30 * time.Second

// StartError reports that QEMU refused to start, with what it printed.
type StartError struct {
	VM     string
	Err    error
	Output string
}

func (e *StartError) Error() string {
	out := strings.TrimSpace(e.Output)
	if out == "" {
		return fmt.Sprintf("start vm %s: qemu: %v", e.VM, e.Err)
	}
	return fmt.Sprintf("start vm %s: qemu: %v: %s", e.VM, e.Err, out)
}

func (e *StartError) Unwrap() error { return e.Err }

// tail returns at most n bytes from the end of file path, as text safe
// to log and display: the console is the guest's, and QEMU's own output
// can quote it.
func tail(path string, n int64) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return ""
	}
	off := max(st.Size()-n, 0)
	b := make([]byte, st.Size()-off)
	f.ReadAt(b, off)
	return guesttext.Text(string(b), int(n))
}

// consoleDir holds the console log, and QEMU's own log, on a tmpfs of
// its own of consoleLimit bytes (see internal/boundedfs). The guest owns
// its kernel and can write to its serial port without end; /run is in
// RAM, so an unbounded file would let a guest exhaust host memory. When
// the tmpfs is full QEMU drops console output.
//
// QEMU's log gets only what QEMU prints before it daemonizes: once
// initialised, a daemonized QEMU points its stdout and stderr at
// /dev/null (QEMU 7.2 does, seen in /proc/PID/fd; only -D would keep
// stderr). It shares the tmpfs all the same, so nothing a later change
// makes QEMU print there can grow without bound.
const (
	consoleDir   = "console"
	consoleLimit = 1 << 20
)

// ConsoleTail returns the last n bytes the guest printed on its console.
func (q *QEMU) ConsoleTail(n int64) string {
	q.mu.Lock()
	defer q.mu.Unlock()
	return tail(q.launch.files.console, n)
}

// StopVM makes QEMU quit, killing it if it does not exit in time.
func (q *QEMU) StopVM(ctx context.Context) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.stopLocked(ctx)
}

func (q *QEMU) stopLocked(ctx context.Context) error {
	if q.proc == nil || !q.proc.Alive() {
		return nil
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, hypervisor.DefaultStopTimeout)
		defer cancel()
	}
	// A QEMU already on its way out (the guest powered off) may accept
	// the connection and never answer: the exit ends the asking.
	qctx, cancel := context.WithTimeout(ctx, time.Second)
	exited := q.proc.Done()
	go func() {
		select {
		case <-exited:
			cancel()
		case <-qctx.Done():
		}
	}()
	if c, err := qmp.Dial(qctx, q.launch.files.qmp); err != nil {
		q.log.Debug("qmp unreachable to quit", "vm", q.id, "err", err)
	} else {
		if err := c.Quit(qctx); err != nil {
			q.log.Debug("qmp quit failed", "vm", q.id, "err", err)
		}
		c.Close()
	}
	cancel()
	select {
	case <-q.proc.Done():
		return nil
	case <-ctx.Done():
	}
	q.log.Warn("qemu did not quit; killing it", "vm", q.id, "pid", q.proc.Pid())
	if err := q.proc.Signal(unix.SIGKILL); err != nil {
		return fmt.Errorf("stop vm %s: kill qemu: %w", q.id, err)
	}
	select {
	case <-q.proc.Done():
		return nil
	case <-time.After(5 * time.Second):
		return fmt.Errorf("stop vm %s: qemu pid %d did not exit after SIGKILL", q.id, q.proc.Pid())
	}
}

// PauseVM stops the guest's vCPUs.
func (q *QEMU) PauseVM(ctx context.Context) error {
	c, release, err := q.client(ctx)
	if err != nil {
		return fmt.Errorf("pause vm: %w", err)
	}
	defer release()
	if err := c.Stop(ctx); err != nil {
		return fmt.Errorf("pause vm %s: %w", q.id, err)
	}
	return nil
}

// ResumeVM restarts the guest's vCPUs.
func (q *QEMU) ResumeVM(ctx context.Context) error {
	c, release, err := q.client(ctx)
	if err != nil {
		return fmt.Errorf("resume vm: %w", err)
	}
	defer release()
	if err := c.Cont(ctx); err != nil {
		return fmt.Errorf("resume vm %s: %w", q.id, err)
	}
	return nil
}

// Status reports QEMU's run state.
func (q *QEMU) Status(ctx context.Context) (hypervisor.RunState, error) {
	c, release, err := q.client(ctx)
	if err != nil {
		return "", err
	}
	defer release()
	s, err := c.QueryStatus(ctx)
	if err != nil {
		return "", fmt.Errorf("query status of vm %s: %w", q.id, err)
	}
	return runState(s.Status), nil
}

// runState maps a QMP run state to the contract's.
func runState(qmpState string) hypervisor.RunState {
	switch qmpState {
	case "running":
		return hypervisor.StateRunning
	case "paused":
		return hypervisor.StatePaused
	case "shutdown":
		return hypervisor.StateShutdown
	case "internal-error", "guest-panicked", "io-error":
		return hypervisor.StateCrashed
	}
	return hypervisor.StateOther
}

// qmpDialTimeout bounds the wait for QEMU's QMP socket, which serves one
// connection at a time: another operation, of this or another process,
// may hold it for a moment.
const qmpDialTimeout = 10 * time.Second

// client connects to the QMP socket of a running VM for one operation;
// release closes the connection. No connection outlives its operation, so
// every process that opened the VM can drive it (QEMU serves one QMP
// client at a time). A client must be released before the next is asked
// for.
func (q *QEMU) client(ctx context.Context) (c *qmp.Client, release func(), err error) {
	q.mu.Lock()
	proc, path := q.proc, q.launch.files.qmp
	q.mu.Unlock()
	if proc == nil || !proc.Alive() {
		return nil, nil, fmt.Errorf("vm %s: %w", q.id, hypervisor.ErrNotRunning)
	}
	dctx, cancel := context.WithTimeout(ctx, qmpDialTimeout)
	defer cancel()
	go func() {
		select {
		case <-proc.Done():
			cancel()
		case <-dctx.Done():
		}
	}()
	c, err = qmp.Dial(dctx, path)
	if err != nil {
		if !proc.Alive() {
			return nil, nil, fmt.Errorf("vm %s: %w", q.id, hypervisor.ErrNotRunning)
		}
		return nil, nil, fmt.Errorf("vm %s: %w", q.id, err)
	}
	return c, func() { c.Close() }, nil
}

// validStatePath is what a saved state's path may contain: it is passed
// to QEMU's exec: migration, which a shell runs.
var validStatePath = regexp.MustCompile(`^/[A-Za-z0-9/._-]+$`)

// SaveVM stops the guest and writes its device state to path. Guest RAM
// is not written: it stays in the VM's MemoryFile, which must be set
// (QEMU's x-ignore-shared migration). The VM stays paused; quit it with
// StopVM.
func (q *QEMU) SaveVM(ctx context.Context, path string) error {
	if q.cfg.MemoryFile == "" {
		return fmt.Errorf("save vm %s: %w: it has no memory file", q.id, hypervisor.ErrNotSupported)
	}
	if !validStatePath.MatchString(path) {
		return fmt.Errorf("save vm %s: invalid state path %q", q.id, path)
	}
	c, release, err := q.client(ctx)
	if err != nil {
		return fmt.Errorf("save vm: %w", err)
	}
	defer release()
	if err := c.Stop(ctx); err != nil {
		return fmt.Errorf("save vm %s: %w", q.id, err)
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC|unix.O_NOFOLLOW, 0o600)
	if err != nil {
		return fmt.Errorf("save vm %s: %w", q.id, err)
	}
	defer f.Close()
	if err := migrate(ctx, c, "migrate", f); err != nil {
		return fmt.Errorf("save vm %s: %w", q.id, err)
	}
	return f.Sync()
}

// RestoreVM launches QEMU from a state written by SaveVM instead of
// booting: the VM must have been created with the saved VM's
// configuration, and its MemoryFile must hold a copy of the saved VM's.
// The VM runs when RestoreVM returns. A shared file system in the config
// is not part of the state (QEMU cannot migrate vhost-user-fs): it is
// hot-plugged.
func (q *QEMU) RestoreVM(ctx context.Context, path string) (err error) {
	if !validStatePath.MatchString(path) {
		return fmt.Errorf("restore vm %s: invalid state path %q", q.id, path)
	}
	q.mu.Lock()
	if q.cfg.MemoryFile == "" {
		q.mu.Unlock()
		return fmt.Errorf("restore vm %s: %w: it has no memory file", q.id, hypervisor.ErrNotSupported)
	}
	q.launch.incoming = true
	err = q.launchLocked(ctx)
	q.mu.Unlock()
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			q.mu.Lock()
			q.teardownLocked(context.Background())
			q.mu.Unlock()
		}
	}()
	if err := q.incoming(ctx, path); err != nil {
		return err
	}
	if q.cfg.SharedFSSocket != "" {
		return q.AddDevice(ctx, hypervisor.Device{Kind: hypervisor.DeviceSharedFS, ID: "sharedfs", Path: q.cfg.SharedFSSocket})
	}
	return nil
}

// incoming loads the saved state at path into a QEMU waiting for it and
// lets the guest run.
func (q *QEMU) incoming(ctx context.Context, path string) error {
	c, release, err := q.client(ctx)
	if err != nil {
		return fmt.Errorf("restore vm: %w", err)
	}
	defer release()
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_NOFOLLOW, 0)
	if err != nil {
		return fmt.Errorf("restore vm %s: %w", q.id, err)
	}
	defer f.Close()
	if err := migrate(ctx, c, "migrate-incoming", f); err != nil {
		return fmt.Errorf("restore vm %s: %w", q.id, err)
	}
	if st, err := c.QueryStatus(ctx); err == nil && !st.Running {
		if err := c.Cont(ctx); err != nil {
			return fmt.Errorf("restore vm %s: %w", q.id, err)
		}
	}
	return nil
}

// migrate runs a migration command to or from the open file f (handed to
// QEMU, which may not open files itself) with RAM left out (it lives in
// the shared memory file), and waits for it to complete.
func migrate(ctx context.Context, c *qmp.Client, command string, f *os.File) error {
	caps := map[string]any{"capabilities": []map[string]any{{"capability": "x-ignore-shared", "state": true}}}
	if err := c.Execute(ctx, "migrate-set-capabilities", caps, nil); err != nil {
		return err
	}
	const fdName = "migration"
	if err := c.GetFD(ctx, fdName, f); err != nil {
		return err
	}
	if err := c.Execute(ctx, command, map[string]any{"uri": "fd:" + fdName}, nil); err != nil {
		c.CloseFD(context.WithoutCancel(ctx), fdName)
		return err
	}
	for {
		var st struct {
			Status    string `json:"status"`
			ErrorDesc string `json:"error-desc"`
		}
		if err := c.Execute(ctx, "query-migrate", nil, &st); err != nil {
			return err
		}
		switch st.Status {
		case "completed":
			return nil
		case "failed", "cancelled":
			return fmt.Errorf("migration %s: %s", st.Status, st.ErrorDesc)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// Capabilities reports what this VM supports.
func (q *QEMU) Capabilities(context.Context) hypervisor.Capabilities {
	q.mu.Lock()
	defer q.mu.Unlock()
	l := q.launch
	hotplug := l.machine == MachineQ35 && l.cfg.HotplugSlots > 0
	return hypervisor.Capabilities{
		BlockHotplug:    hotplug,
		NetHotplug:      hotplug,
		VCPUHotplug:     l.canGrowCPUs(),
		MemoryHotplug:   l.hotMemoryMiB() > 0,
		SharedFS:        l.cfg.SharedFSSocket != "",
		MachineType:     l.machine,
		AcceleratorUsed: l.accel,
	}
}

// PIDs reports the QEMU process.
func (q *QEMU) PIDs() []int {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.proc == nil {
		return nil
	}
	return []int{q.proc.Pid()}
}

// AgentEndpoint tells the host how to reach the guest agent.
func (q *QEMU) AgentEndpoint() hypervisor.AgentEndpoint {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.launch.vsockCID != 0 {
		return hypervisor.AgentEndpoint{Transport: hypervisor.TransportVsock, CID: q.launch.vsockCID, Port: protocol.VsockPort}
	}
	return hypervisor.AgentEndpoint{Transport: hypervisor.TransportSerial, Sockets: q.launch.files.agentSockets()}
}

// Wait returns a channel closed when QEMU exits.
func (q *QEMU) Wait() <-chan struct{} {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.proc == nil {
		c := make(chan struct{})
		close(c)
		return c
	}
	return q.proc.Done()
}

// Cleanup stops QEMU if it still runs and removes the VM's runtime
// directory. It is idempotent.
func (q *QEMU) Cleanup(ctx context.Context) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.teardownLocked(ctx)
}

func (q *QEMU) teardownLocked(ctx context.Context) error {
	var errs []error
	if err := q.stopLocked(ctx); err != nil {
		errs = append(errs, err)
	}
	if q.proc != nil {
		if q.proc.Alive() {
			// Stopping failed: keep the state so a later Cleanup can retry.
			return errors.Join(errs...)
		}
		q.proc.Release()
		q.proc = nil
	}
	if dir := q.launch.files.dir; dir != "" {
		if err := boundedfs.Unmount(filepath.Dir(q.launch.files.console)); err != nil {
			// Never remove through a mount.
			return errors.Join(append(errs, err)...)
		}
		if err := safefs.RemoveAll(dir); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Remove stops and removes the VM whose runtime directory is dir, whoever
// started it and however far its start got: with no state saved yet (its
// starter was killed while QEMU launched), the QEMU named by the directory's
// pid file is found by its command line and killed. A missing directory is
// not an error.
func Remove(ctx context.Context, dir string, opts Options) error {
	if _, err := os.Lstat(dir); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	q, err := Open(ctx, dir, opts)
	if err != nil {
		// No usable state: adopt what the directory holds.
		q = New(opts)
		q.launch.files = vmFiles(dir)
		for _, pid := range vmmproc.FindByArg(q.launch.files.pid) {
			p, err := vmmproc.Attach(pid, q.launch.files.pid, 0)
			if err != nil {
				continue
			}
			// Nobody talks to this QEMU any more: no need to ask it to quit.
			p.Signal(unix.SIGKILL)
			kctx, cancel := context.WithTimeout(ctx, hypervisor.DefaultStopTimeout)
			select {
			case <-p.Done():
			case <-kctx.Done():
			}
			cancel()
			p.Release()
			if p.Alive() {
				return fmt.Errorf("remove vm %s: qemu %d did not exit after SIGKILL", dir, pid)
			}
		}
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if err := q.teardownLocked(ctx); err != nil {
		return fmt.Errorf("remove vm %s: %w", dir, err)
	}
	return nil
}

// state is what vm.json holds, so another process can re-attach.
type state struct {
	ID        string            `json:"id"`
	Pid       int               `json:"pid"`
	PidStart  uint64            `json:"pid_start"`
	Accel     string            `json:"accelerator"`
	Machine   string            `json:"machine"`
	VsockCID  uint32            `json:"vsock_cid,omitempty"`
	TSCKHz    uint64            `json:"tsc_khz,omitempty"`
	Config    hypervisor.Config `json:"config"`
	Ports     map[string]int    `json:"ports,omitempty"`
	StartedAt time.Time         `json:"started_at"`
}

func (q *QEMU) saveLocked() error {
	l := q.launch
	s := state{
		ID: q.id, Accel: string(l.accel), Machine: l.machine, VsockCID: l.vsockCID, TSCKHz: l.tscKHz,
		Config: l.cfg, Ports: q.ports, StartedAt: time.Now().UTC(),
	}
	if q.proc != nil {
		s.Pid, s.PidStart = q.proc.Pid(), q.proc.StartTime()
	}
	return vmmproc.WriteState(l.files.state, s)
}

// Open re-attaches to the VM whose runtime directory is dir, as started by
// StartVM in this or another process. If QEMU is no longer running, Open
// still succeeds so Cleanup can remove what is left; Wait's channel is then
// already closed.
func Open(ctx context.Context, dir string, opts Options) (*QEMU, error) {
	q := New(opts)
	f := vmFiles(dir)
	var s state
	if err := vmmproc.ReadState(f.state, &s); err != nil {
		return nil, fmt.Errorf("open vm %s: %w", dir, err)
	}
	if err := hypervisor.ValidateID(s.ID); err != nil || filepath.Base(dir) != s.ID {
		return nil, fmt.Errorf("open vm %s: state names vm %q", dir, s.ID)
	}
	q.id, q.cfg = s.ID, s.Config
	q.launch = launch{id: s.ID, cfg: s.Config, accel: hypervisor.Accelerator(s.Accel), machine: s.Machine, files: f, vsockCID: s.VsockCID, tscKHz: s.TSCKHz}
	if s.Ports != nil {
		q.ports = s.Ports
	}
	p, err := vmmproc.Attach(s.Pid, f.pid, s.PidStart)
	if err != nil {
		q.log.Debug("vm process is gone", "vm", s.ID, "err", err)
		return q, nil
	}
	q.proc = p
	return q, nil
}

// Close releases this process's handles on the VM without stopping it.
func (q *QEMU) Close() error {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.proc != nil {
		q.proc.Release()
		q.proc = nil
	}
	return nil
}

// ResolveAccel picks the accelerator for want on this host, as CreateVM
// does: for auto, KVM only if booting the guest kernel under it works
// (the result cached per host boot in p.CacheDir).
func ResolveAccel(ctx context.Context, want hypervisor.Accelerator, p hypervisor.AccelProbe) (hypervisor.AccelChoice, error) {
	r, err := accel.Resolve(ctx, want, accel.ProbeConfig{QEMUPath: p.Binary, Kernel: p.Kernel, CacheDir: p.CacheDir})
	return hypervisor.AccelChoice{
		Accelerator: r.Accelerator, Reason: r.Reason, NoKernel: r.Reason == accel.ReasonNoKernel,
		Cached: r.Cached, CheckedAt: r.CheckedAt,
	}, err
}
