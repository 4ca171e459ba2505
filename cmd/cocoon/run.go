package main

import (
	"context"
	"errors"
	"fmt"

	"github.com/cocoon-runtime/cocoon"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/spf13/cobra"
)

func newRunCommand(g *globalOptions) *cobra.Command {
	var (
		f           vmFlags
		sf          sizeFlags
		nf          netFlags
		df          deviceFlags
		bundle      string
		tty, detach bool
		consoleSize string
	)
	cmd := &cobra.Command{
		Use:   "run [flags] ID",
		Short: "Create and run a container in a new sandbox VM",
		Long: `Create and run a container in a new sandbox VM.

The container is created from the OCI bundle (config.json and root
filesystem) and gets a sandbox VM of its own, named by its ID.

In the foreground, cocoon's standard input, output and error are connected
to the container's before it starts, so nothing it prints is lost; input
is copied until end of file, which then closes the container's input.
Signals cocoon receives are passed on to the container's process. When the
process has exited and its output is copied, the sandbox is deleted and
cocoon exits with the process's status (128+n when signal n killed it).

With --tty the process gets a terminal (whatever config.json says); when
cocoon runs on a terminal, it is put in raw mode and its size follows
cocoon's.

With --detach the container is left running and cocoon exits at once; its
output is not collected.`,
		Example: `  cocoon spec --busybox --bundle /tmp/demo
  cocoon run --bundle /tmp/demo -t demo
  cocoon run --bundle /tmp/demo -d demo && cocoon exec demo ps`,
		Args:        cobra.ExactArgs(1),
		Annotations: map[string]string{forwardsSignals: "true"},
		RunE: func(cmd *cobra.Command, args []string) error {
			id := args[0]
			abs, spec, err := loadBundle(bundle)
			if err != nil {
				return fmt.Errorf("run %s: %w", id, err)
			}
			if detach && tty {
				return fmt.Errorf("run %s: --tty cannot be used with --detach: nobody would read the terminal", id)
			}
			size, err := ttySetting(spec.Process, cmd.Flags().Changed("tty"), tty, consoleSize)
			if err != nil {
				return fmt.Errorf("run %s: %w", id, err)
			}
			if detach && spec.Process.Terminal {
				return fmt.Errorf("run %s: config.json asks for a terminal, which a detached container cannot have: use --tty=false", id)
			}
			rt, err := g.runtime()
			if err != nil {
				return err
			}
			vm := sf.bound(f.sandboxVM())
			cfg := cocoon.SandboxConfig{
				ID: id, VM: vm, BootTimeout: f.bootTimeout,
				Containers: []cocoon.ContainerConfig{{ID: id, Bundle: abs, Spec: spec}},
			}
			if err := nf.apply(&cfg, spec); err != nil {
				return fmt.Errorf("run %s: %w", id, err)
			}
			if err := df.apply(spec); err != nil {
				return fmt.Errorf("run %s: %w", id, err)
			}
			r := &runner{g: g, rt: rt, id: id, detach: detach, size: size}
			return r.run(cmd.Context(), cfg)
		},
	}
	fl := cmd.Flags()
	fl.StringVarP(&bundle, "bundle", "b", ".", "OCI bundle directory (holds config.json)")
	fl.BoolVarP(&tty, "tty", "t", false, "give the process a terminal (overrides config.json)")
	fl.BoolVarP(&detach, "detach", "d", false, "leave the container running in the background")
	fl.StringVar(&consoleSize, "console-size", "", "terminal size as WIDTHxHEIGHT (default: cocoon's terminal's)")
	f.register(cmd)
	sf.register(cmd)
	nf.register(cmd)
	df.register(cmd)
	return cmd
}

// runner carries out `cocoon run`.
type runner struct {
	g      *globalOptions
	rt     *cocoon.Runtime
	id     string
	detach bool
	size   *specs.Box // fixed terminal size (--console-size), or nil
}

func (r *runner) run(ctx context.Context, cfg cocoon.SandboxConfig) error {
	sigs := catchSignals()
	defer sigs.stop()
	setupCtx, cancel, endGuard := sigs.guard(ctx)
	defer cancel()
	sb, a, err := r.setup(setupCtx, cfg)
	if sig := endGuard(); sig != nil {
		if err == nil {
			// The signal came just as the container started: it was
			// meant to stop it all.
			if a != nil {
				a.close()
			}
			err = sb.Delete(context.Background())
		}
		return fmt.Errorf("run %s: %w", r.id, errInterrupted(sig, err))
	}
	if err != nil {
		return fmt.Errorf("run %s: %w", r.id, err)
	}
	if r.detach {
		sb.Release()
		return nil
	}
	st, err := a.wait(ctx, sigs)
	if derr := sb.Delete(context.Background()); derr != nil {
		err = errors.Join(err, fmt.Errorf("delete sandbox: %w", derr))
	}
	if err != nil {
		return fmt.Errorf("run %s: %w", r.id, err)
	}
	if code := exitStatusCode(st); code != 0 {
		return code
	}
	return nil
}

// setup boots the sandbox with the container, attaches to the container's
// stdio unless detached, and starts it. On error nothing is left behind.
func (r *runner) setup(ctx context.Context, cfg cocoon.SandboxConfig) (_ *cocoon.Sandbox, _ *attachment, err error) {
	sb, err := r.rt.CreateSandbox(ctx, cfg)
	if err != nil {
		return nil, nil, err
	}
	var a *attachment
	defer func() {
		if err != nil {
			if a != nil {
				a.close()
			}
			if derr := sb.Delete(context.Background()); derr != nil {
				err = errors.Join(err, fmt.Errorf("delete sandbox: %w", derr))
			}
		}
	}()
	if !r.detach {
		tty := cfg.Containers[0].Spec.Process.Terminal
		if a, err = attach(ctx, sb, r.id, "", tty, r.g.logger()); err != nil {
			return nil, nil, err
		}
		a.size = r.size
	}
	if err := sb.Start(ctx); err != nil {
		return nil, nil, err
	}
	return sb, a, nil
}
