package main

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	"github.com/cocoon-runtime/cocoon"
	"github.com/cocoon-runtime/cocoon/internal/specutil"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"
)

func newExecCommand(g *globalOptions) *cobra.Command {
	var (
		tty, detach bool
		cwd, user   string
		env         []string
		consoleSize string
	)
	cmd := &cobra.Command{
		Use:   "exec [flags] ID COMMAND [ARG...]",
		Short: "Run a process in a running container",
		Long: `Run a process in a running container: in its namespaces, root filesystem
and cgroup, with the environment, working directory, user and capabilities
of the container's process unless flags say otherwise.

cocoon's standard input, output and error are connected to the process;
signals cocoon receives are passed on to it, and cocoon exits with its
status (128+n when signal n killed it). With --detach, cocoon prints the
process's exec ID and exits at once.`,
		Example: `  cocoon exec demo ps
  cocoon exec -t demo sh
  cocoon exec --env FOO=bar --cwd /tmp --user 65534 demo sh -c 'id; pwd; echo $FOO'`,
		Args:        cobra.MinimumNArgs(2),
		Annotations: map[string]string{forwardsSignals: "true"},
		RunE: func(cmd *cobra.Command, args []string) error {
			id := args[0]
			if detach && tty {
				return fmt.Errorf("exec in %s: --tty cannot be used with --detach: nobody would read the terminal", id)
			}
			e := &execer{g: g, id: id, detach: detach, cwd: cwd, env: env}
			if user != "" {
				u, err := parseUser(user)
				if err != nil {
					return fmt.Errorf("exec in %s: %w", id, err)
				}
				e.user = &u
			}
			for _, kv := range env {
				if k, _, ok := strings.Cut(kv, "="); !ok || k == "" {
					return fmt.Errorf("exec in %s: parse --env %q: want KEY=VALUE", id, kv)
				}
			}
			p := &specs.Process{Args: args[1:]}
			var err error
			if e.size, err = ttySetting(p, true, tty, consoleSize); err != nil {
				return fmt.Errorf("exec in %s: %w", id, err)
			}
			return e.run(cmd, p)
		},
	}
	fl := cmd.Flags()
	// Flags end at COMMAND: its own flags are its arguments.
	fl.SetInterspersed(false)
	fl.BoolVarP(&tty, "tty", "t", false, "give the process a terminal")
	fl.BoolVarP(&detach, "detach", "d", false, "leave the process running in the background and print its exec ID")
	fl.StringVar(&cwd, "cwd", "", "working directory of the process (default: the container's)")
	fl.StringVarP(&user, "user", "u", "", "user as UID[:GID] (default: the container's)")
	fl.StringArrayVarP(&env, "env", "e", nil, "set an environment variable, as KEY=VALUE (repeatable)")
	fl.StringVar(&consoleSize, "console-size", "", "terminal size as WIDTHxHEIGHT (default: cocoon's terminal's)")
	return cmd
}

// execer carries out `cocoon exec`.
type execer struct {
	g      *globalOptions
	id     string
	detach bool
	size   *specs.Box  // fixed terminal size (--console-size), or nil
	cwd    string      // --cwd, or ""
	user   *specs.User // --user, or nil
	env    []string    // --env
}

// complete fills the process's settings from the container's process
// (config.json in its bundle, or the defaults of `cocoon spec` if that
// cannot be read), then applies the flags.
func (e *execer) complete(p *specs.Process, bundle string) {
	c := specutil.Default().Process
	if spec, err := cocoon.LoadSpec(bundle); err == nil && spec.Process != nil {
		c = spec.Process
	}
	p.Env = mergeEnv(c.Env, e.env)
	p.Cwd = c.Cwd
	if e.cwd != "" {
		p.Cwd = e.cwd
	}
	p.User = c.User
	if e.user != nil {
		p.User = *e.user
	}
	p.Capabilities = c.Capabilities
	p.NoNewPrivileges = c.NoNewPrivileges
	p.ApparmorProfile = c.ApparmorProfile
	p.SelinuxLabel = c.SelinuxLabel
}

// mergeEnv sets each KEY=VALUE of set in env, replacing an earlier value.
func mergeEnv(env, set []string) []string {
	out := append([]string(nil), env...)
	for _, kv := range set {
		k, _, _ := strings.Cut(kv, "=")
		replaced := false
		for i, old := range out {
			if ok, _, _ := strings.Cut(old, "="); ok == k {
				out[i], replaced = kv, true
			}
		}
		if !replaced {
			out = append(out, kv)
		}
	}
	return out
}

// parseUser parses UID[:GID].
func parseUser(s string) (specs.User, error) {
	us, gs, hasGID := strings.Cut(s, ":")
	uid, err := strconv.ParseUint(us, 10, 32)
	if err != nil {
		return specs.User{}, fmt.Errorf("parse --user %q: want a numeric UID[:GID]", s)
	}
	u := specs.User{UID: uint32(uid)}
	if hasGID {
		gid, err := strconv.ParseUint(gs, 10, 32)
		if err != nil {
			return specs.User{}, fmt.Errorf("parse --user %q: want a numeric UID[:GID]", s)
		}
		u.GID = uint32(gid)
	}
	return u, nil
}

func (e *execer) run(cmd *cobra.Command, p *specs.Process) error {
	ctx := cmd.Context()
	sigs := catchSignals()
	defer sigs.stop()
	setupCtx, cancel, endGuard := sigs.guard(ctx)
	defer cancel()
	sb, execID, a, err := e.setup(setupCtx, p)
	if sb != nil {
		defer sb.Release()
	}
	if sig := endGuard(); sig != nil {
		if err != nil {
			return fmt.Errorf("exec in %s: %w", e.id, errInterrupted(sig, err))
		}
		// The process started as the signal came: it is its to handle.
		select {
		case sigs.c <- sig:
		default:
		}
	}
	if err != nil {
		return fmt.Errorf("exec in %s: %w", e.id, err)
	}
	if e.detach {
		_, err := fmt.Fprintln(cmd.OutOrStdout(), execID)
		return err
	}
	st, err := a.wait(ctx, sigs)
	if err != nil {
		return fmt.Errorf("exec in %s: %w", e.id, err)
	}
	if code := exitStatusCode(st); code != 0 {
		return code
	}
	return nil
}

// setup starts the process in the container and attaches to it.
func (e *execer) setup(ctx context.Context, p *specs.Process) (*cocoon.Sandbox, string, *attachment, error) {
	rt, err := e.g.runtime()
	if err != nil {
		return nil, "", nil, err
	}
	sb, err := rt.FetchSandbox(ctx, e.id)
	if err != nil {
		return nil, "", nil, err
	}
	st, err := requireState(ctx, sb, e.id, cocoon.StateRunning)
	if err != nil {
		return sb, "", nil, err
	}
	e.complete(p, st.Bundle)
	execID, err := sb.EnterContainer(ctx, e.id, "", *p)
	if err != nil {
		return sb, "", nil, err
	}
	if e.detach {
		return sb, execID, nil, nil
	}
	a, err := attach(ctx, sb, e.id, execID, p.Terminal, e.g.logger())
	if err != nil {
		// Nobody would ever read its output: end it.
		sb.SignalProcess(context.WithoutCancel(ctx), e.id, execID, unix.SIGKILL, false)
		return sb, "", nil, err
	}
	a.size = e.size
	return sb, execID, a, nil
}
