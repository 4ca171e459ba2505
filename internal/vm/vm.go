// Package vm boots a sandbox VM and connects to the agent inside it.
//
// It joins a hypervisor driver and the agent client: Start launches the VM
// and returns once the agent answers, Open re-attaches to a VM started by
// another process, and Stop powers the guest off and removes every host
// resource the VM used.
package vm

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/cocoon-runtime/cocoon/hypervisor"
	"github.com/cocoon-runtime/cocoon/hypervisor/drivers"
	"github.com/cocoon-runtime/cocoon/internal/agent"
	"github.com/cocoon-runtime/cocoon/internal/sparse"
)

// DefaultBootTimeout bounds the wait for a new VM's agent to answer.
const DefaultBootTimeout = 30 * time.Second

// Options configure Start and Open.
type Options struct {
	Log *slog.Logger
	// Driver names the hypervisor driver (see package drivers); empty is
	// the default. Open and Remove must name the driver that started the
	// VM.
	Driver string
	// CacheDir holds host-wide caches (the accelerator probe's result).
	CacheDir string
	// BootTimeout bounds the wait for the agent; 0 means DefaultBootTimeout.
	BootTimeout time.Duration
}

// Logger is Log, or a logger that discards when Log is nil.
func (o Options) Logger() *slog.Logger {
	if o.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return o.Log
}

// VM is a running sandbox VM with a connected agent.
type VM struct {
	ID    string
	HV    hypervisor.Hypervisor
	Agent *agent.Client
	log   *slog.Logger
}

// BootError reports a VM whose agent never answered, with the end of the
// guest console to explain why.
type BootError struct {
	VM      string
	Err     error
	Console string
	// Hint suggests what to change, when there is an obvious suspect.
	Hint string
}

func (e *BootError) Error() string {
	msg := fmt.Sprintf("boot vm %s: %v", e.VM, e.Err)
	if e.Hint != "" {
		msg += "\nhint: " + e.Hint
	}
	if c := strings.TrimSpace(e.Console); c != "" {
		msg += "\nguest console (last lines):\n" + c
	}
	return msg
}

func (e *BootError) Unwrap() error { return e.Err }

// Start creates and boots a VM and waits for its agent. On any error every
// resource of the VM is removed again.
func Start(ctx context.Context, id string, cfg hypervisor.Config, opts Options) (*VM, error) {
	return launch(ctx, id, cfg, opts, func(hv hypervisor.Hypervisor) (*VM, error) {
		// An emulating nested KVM can fail QEMU itself (it aborts setting
		// MSRs) or the guest: either way, name the likely culprit.
		kvmHint := func() string {
			if hv.Capabilities(ctx).AcceleratorUsed != hypervisor.AccelKVM {
				return ""
			}
			return "the VM ran under KVM; where KVM is nested or emulated guests may not boot: " +
				"use accelerator \"auto\" (probes KVM) or \"tcg\""
		}
		if err := hv.StartVM(ctx); err != nil {
			if hint := kvmHint(); hint != "" {
				return nil, &BootError{VM: id, Err: err, Hint: hint}
			}
			return nil, err
		}
		return awaitAgent(ctx, id, hv, opts, kvmHint)
	})
}

// Restore creates VM id from a saved state (a template's) instead of
// booting it: cfg must be the saved VM's configuration, with its own
// StateDir; memory is the saved VM's memory file, of which the VM gets a
// copy at cfg.MemoryFile (by default in the VM's runtime directory;
// callers put it on a tmpfs of its own). The copy is removed once QEMU
// mapped it, so its pages are freed when QEMU exits, however it exits.
// On any error every resource of the VM is removed again.
func Restore(ctx context.Context, id string, cfg hypervisor.Config, opts Options, state, memory string) (*VM, error) {
	if cfg.StateDir == "" {
		return nil, &hypervisor.ConfigError{Field: "state dir", Err: errors.New("a restored VM needs a state directory")}
	}
	if cfg.MemoryFile == "" {
		cfg.MemoryFile = filepath.Join(cfg.StateDir, id, "guest.mem")
	}
	return launch(ctx, id, cfg, opts, func(hv hypervisor.Hypervisor) (*VM, error) {
		// Removed in every case: on success QEMU holds it mapped.
		defer os.Remove(cfg.MemoryFile)
		if err := sparse.Copy(memory, cfg.MemoryFile); err != nil {
			return nil, fmt.Errorf("restore vm %s: %w", id, err)
		}
		if err := hv.RestoreVM(ctx, state); err != nil {
			return nil, err
		}
		return awaitAgent(ctx, id, hv, opts, func() string { return "" })
	})
}

// launch creates VM id and runs start on its driver; if start fails,
// every resource of the VM is removed again.
func launch(ctx context.Context, id string, cfg hypervisor.Config, opts Options, start func(hypervisor.Hypervisor) (*VM, error)) (_ *VM, err error) {
	log := opts.Logger()
	d, err := drivers.Lookup(opts.Driver)
	if err != nil {
		return nil, err
	}
	hv := d.New(opts.driverOptions())
	if err := hv.CreateVM(ctx, id, cfg); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			if cerr := hv.Cleanup(context.Background()); cerr != nil {
				log.Warn("cleanup after failed start", "vm", id, "err", cerr)
			}
		}
	}()
	return start(hv)
}

// awaitAgent waits for the agent of a launched VM and connects to it.
func awaitAgent(ctx context.Context, id string, hv hypervisor.Hypervisor, opts Options, hint func() string) (*VM, error) {
	log := opts.Logger()
	timeout := opts.BootTimeout
	if timeout == 0 {
		timeout = DefaultBootTimeout
	}
	dctx, cancel := context.WithTimeoutCause(ctx, timeout, fmt.Errorf("guest agent did not answer within %v", timeout))
	defer cancel()
	wctx, stopWatch := context.WithCancelCause(dctx)
	defer stopWatch(nil)
	go watchBoot(wctx, hv, stopWatch)
	// One attempt may take the whole boot: the host waits for the guest's
	// greeting, which comes as soon as the agent opened its port.
	c, err := agent.Dial(wctx, hv.AgentEndpoint(), agent.DialOptions{Dead: hv.Wait(), AttemptTimeout: timeout})
	if err != nil {
		if cause := context.Cause(wctx); cause != nil && !errors.Is(cause, context.Canceled) {
			err = fmt.Errorf("%w: %w", cause, err)
		}
		return nil, &BootError{VM: id, Err: err, Console: hv.ConsoleTail(2048), Hint: hint()}
	}
	if _, err := c.Version(ctx); err != nil {
		c.Close()
		return nil, err
	}
	if err := hv.ReclaimBootMemory(); err != nil && !errors.Is(err, hypervisor.ErrNotSupported) {
		log.Debug("reclaim boot memory", "vm", id, "err", err)
	}
	return &VM{ID: id, HV: hv, Agent: c, log: log}, nil
}

// statusReader is the part of a driver watchBoot uses.
type statusReader interface {
	Status(ctx context.Context) (hypervisor.RunState, error)
}

// watchBoot polls the VMM's run state while the guest boots and stops the
// wait as soon as the guest crashed (for example a KVM internal error),
// instead of letting the caller wait for the whole boot timeout.
func watchBoot(ctx context.Context, hv statusReader, stop context.CancelCauseFunc) {
	t := time.NewTicker(200 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		st, err := hv.Status(ctx)
		if err != nil {
			continue
		}
		switch st {
		case hypervisor.StateCrashed, hypervisor.StateShutdown:
			stop(fmt.Errorf("%w: vm entered state %q during boot", ErrGuestCrashed, st))
			return
		}
	}
}

// ErrGuestCrashed is returned when the guest stopped running while it
// booted (the VMM reported an internal error, a panic or a shutdown).
var ErrGuestCrashed = errors.New("guest crashed")

// Open re-attaches to the VM id under stateDir, started by this or another
// process, and connects to its agent. If the agent cannot be reached (the
// VM died, or the guest does not answer), Open returns the error together
// with a VM that is still usable for Stop, which removes what is left.
func Open(ctx context.Context, stateDir, id string, opts Options) (*VM, error) {
	if err := hypervisor.ValidateID(id); err != nil {
		return nil, err
	}
	log := opts.Logger()
	d, err := drivers.Lookup(opts.Driver)
	if err != nil {
		return nil, err
	}
	hv, err := d.Open(ctx, filepath.Join(stateDir, id), opts.driverOptions())
	if err != nil {
		return nil, err
	}
	v := &VM{ID: id, HV: hv, log: log}
	dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	v.Agent, err = agent.Dial(dctx, hv.AgentEndpoint(), agent.DialOptions{Dead: hv.Wait(), AttemptTimeout: 500 * time.Millisecond})
	if err != nil {
		return v, fmt.Errorf("open vm %s: %w", id, err)
	}
	return v, nil
}

// Remove stops and removes VM id under stateDir from what is on disk,
// whoever started it and however far its start got (a process killed while
// it launched the VM leaves no state to open). A VM that does not exist is
// not an error.
func Remove(ctx context.Context, stateDir, id string, opts Options) error {
	if err := hypervisor.ValidateID(id); err != nil {
		return err
	}
	d, err := drivers.Lookup(opts.Driver)
	if err != nil {
		return err
	}
	return d.Remove(ctx, filepath.Join(stateDir, id), opts.driverOptions())
}

// driverOptions are the driver's options of o.
func (o Options) driverOptions() drivers.Options {
	return drivers.Options{Log: o.Logger(), CacheDir: o.CacheDir}
}

// Stop powers the guest off through its agent, waits for the hypervisor
// to exit (killing it when the guest does not comply in time) and removes
// every host resource of the VM. An agent that flushed the guest's file
// systems before replying has its hypervisor ended at once (QMP quit).
func (v *VM) Stop(ctx context.Context) error {
	var errs []error
	if v.Agent != nil {
		actx, cancel := context.WithTimeout(ctx, 2*time.Second)
		synced, err := v.Agent.DestroySandbox(actx)
		switch {
		case err != nil:
			v.log.Debug("agent destroy failed; forcing", "vm", v.ID, "err", err)
		case synced:
			// The guest flushed its file systems: what it could still
			// lose is what a power-off would lose too. The hypervisor is
			// ended below (QMP quit) without waiting for the guest's
			// power-off (slower still under TCG).
		default:
			select {
			case <-v.HV.Wait():
			case <-actx.Done():
			}
		}
		cancel()
		v.Agent.Close()
		v.Agent = nil
	}
	if err := v.HV.Cleanup(ctx); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// Pause stops the VM's vCPUs.
func (v *VM) Pause(ctx context.Context) error { return v.HV.PauseVM(ctx) }

// Resume restarts the VM's vCPUs.
func (v *VM) Resume(ctx context.Context) error { return v.HV.ResumeVM(ctx) }

// Close releases this process's connections to the VM and leaves it
// running.
func (v *VM) Close() error {
	if v.Agent != nil {
		v.Agent.Close()
		v.Agent = nil
	}
	return v.HV.Close()
}
