// Package check reports whether this host can run Cocoon sandboxes.
//
// Run performs every check and returns a Report with one Result per check.
// Each Result says what was found (a version, a path) or why the check
// failed and what to do about it. A failed check marked Required means
// sandboxes cannot run; other failures and warnings cost a feature or speed.
package check

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/cocoon-runtime/cocoon/hypervisor"
	"github.com/cocoon-runtime/cocoon/hypervisor/drivers"
	"github.com/cocoon-runtime/cocoon/internal/layout"
)

// Status is the outcome of one check.
type Status string

// Statuses.
const (
	StatusOK   Status = "ok"
	StatusWarn Status = "warn"
	StatusFail Status = "fail"
)

// Result is the outcome of one check.
type Result struct {
	Name   string `json:"name"`
	Status Status `json:"status"`
	// Detail is what was found (version, path) or why the check did not
	// pass and what to do about it.
	Detail string `json:"detail"`
	// Required is true when sandboxes cannot run unless this check passes.
	Required bool `json:"required"`
}

// Report is the outcome of all checks.
type Report struct {
	Results []Result `json:"results"`
	// CanRun is true when no required check failed.
	CanRun bool `json:"can_run"`
}

// Failed returns the required checks that failed.
func (r Report) Failed() []Result {
	var out []Result
	for _, res := range r.Results {
		if res.Required && res.Status == StatusFail {
			out = append(out, res)
		}
	}
	return out
}

// Options configures Run.
type Options struct {
	// QEMUPath is the QEMU binary; empty selects the QEMU driver's default
	// (DefaultQEMUPath) from PATH.
	QEMUPath string
	// VirtiofsdPath is the virtiofsd binary; empty searches the usual places.
	VirtiofsdPath string
	// DataDir holds guest images; empty selects layout.DataDir.
	DataDir string
	// CacheDir holds the accelerator probe cache; empty selects
	// <DataDir>/cache.
	CacheDir string
	// Accelerator is the configured accelerator; empty means auto.
	Accelerator hypervisor.Accelerator

	host *host // nil selects the real host
}

// host is everything Run learns from the machine, so tests can fake it.
type host struct {
	// root prefixes every file Run reads or opens (/proc, /sys, /dev,
	// /lib/modules, /boot, the data directory).
	root         string
	euid         func() int
	lookPath     func(file string) (string, error)
	run          func(ctx context.Context, name string, args ...string) ([]byte, error)
	resolveAccel func(ctx context.Context, want hypervisor.Accelerator, p hypervisor.AccelProbe) (hypervisor.AccelChoice, error)
	newNetNS     func() error
}

func realHost() *host {
	return &host{
		root:         "/",
		euid:         os.Geteuid,
		lookPath:     exec.LookPath,
		run:          runCommand,
		resolveAccel: qemuDriver().ResolveAccel,
		newNetNS:     tryNewNetNS,
	}
}

// qemuDriver is the QEMU driver's entry in the driver table: the checks
// of the VMM binary are QEMU's.
func qemuDriver() drivers.Driver {
	d, _ := drivers.Lookup("qemu")
	return d
}

// DefaultQEMUPath is the QEMU binary checked when Options names none.
func DefaultQEMUPath() string { return qemuDriver().Binary }

// path maps an absolute host path into h.root.
func (h *host) path(p string) string { return filepath.Join(h.root, p) }

// commandTimeout bounds each helper command (qemu --version and the like).
const commandTimeout = 10 * time.Second

func runCommand(ctx context.Context, name string, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, commandTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	cmd.WaitDelay = time.Second
	return cmd.CombinedOutput()
}

// Run performs every check and reports the results in a fixed order.
func Run(ctx context.Context, opts Options) Report {
	h := opts.host
	if h == nil {
		h = realHost()
	}
	if opts.QEMUPath == "" {
		opts.QEMUPath = DefaultQEMUPath()
	}
	if opts.DataDir == "" {
		opts.DataDir = layout.DataDir
	}
	if opts.CacheDir == "" {
		opts.CacheDir = layout.CacheDir(opts.DataDir)
	}
	if opts.Accelerator == "" {
		opts.Accelerator = hypervisor.AccelAuto
	}

	var rep Report
	add := func(rs ...Result) { rep.Results = append(rep.Results, rs...) }

	add(h.checkRoot())
	q := h.checkQEMU(ctx, opts.QEMUPath)
	add(q.result)
	add(h.checkMachines(ctx, q)...)
	kvm, usesTCG := h.checkKVM(ctx, opts, q)
	add(kvm)
	add(h.checkTCG(ctx, q, usesTCG, opts.Accelerator))
	add(h.checkVirtiofsd(ctx, opts.VirtiofsdPath))
	add(h.checkDevices()...)
	add(h.checkCgroups())
	add(h.checkNetNS())
	add(h.checkModules()...)
	add(h.checkImage(opts.DataDir))

	rep.CanRun = len(rep.Failed()) == 0
	return rep
}
