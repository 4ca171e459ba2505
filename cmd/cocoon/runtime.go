package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/cocoon-runtime/cocoon"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/spf13/cobra"
)

// The container commands follow runc's model: every container runs in a
// sandbox VM of its own, and the sandbox has the container's ID.

// runtime returns the library's Runtime for the global flags.
func (g *globalOptions) runtime() (*cocoon.Runtime, error) {
	rt, err := cocoon.New(cocoon.Options{StateDir: g.root, DataDir: g.dataDir, VMTemplates: g.templates, DANConfDir: g.danConfDir, Log: g.logger()})
	if err != nil {
		return nil, fmt.Errorf("open runtime state %s: %w", g.root, err)
	}
	return rt, nil
}

// openSandbox returns a handle on the sandbox of container id. Release it
// when done.
func openSandbox(cmd *cobra.Command, g *globalOptions, id string) (*cocoon.Sandbox, error) {
	rt, err := g.runtime()
	if err != nil {
		return nil, err
	}
	sb, err := rt.FetchSandbox(cmd.Context(), id)
	if err != nil {
		return nil, fmt.Errorf("container %s: %w", id, err)
	}
	return sb, nil
}

// withContainer runs fn on container id's sandbox and releases it.
func withContainer(cmd *cobra.Command, g *globalOptions, id string, fn func(*cocoon.Sandbox) error) error {
	sb, err := openSandbox(cmd, g, id)
	if err != nil {
		return err
	}
	defer sb.Release()
	return fn(sb)
}

// ociStatus is the runc-style name of a container state.
func ociStatus(s cocoon.State) string { return string(s.OCI()) }

// requireState fails unless container id is in one of the states.
func requireState(ctx context.Context, sb *cocoon.Sandbox, id string, states ...cocoon.State) (cocoon.ContainerStatus, error) {
	st, err := sb.StatusContainer(ctx, id)
	if err != nil {
		return st, err
	}
	for _, s := range states {
		if st.State == s {
			return st, nil
		}
	}
	return st, fmt.Errorf("container %s is %s: %w", id, ociStatus(st.State), cocoon.ErrState)
}

// loadBundle reads and checks an OCI bundle before any VM is booted for
// it, so a bad bundle fails at once with a clear message.
func loadBundle(dir string) (string, *specs.Spec, error) {
	abs, spec, err := cocoon.LoadBundle(dir)
	if errors.Is(err, fs.ErrNotExist) {
		if _, serr := os.Stat(filepath.Join(dir, "config.json")); errors.Is(serr, fs.ErrNotExist) {
			return "", nil, fmt.Errorf("%w (write one with 'cocoon spec')", err)
		}
	}
	return abs, spec, err
}

// writeJSON writes v as indented JSON.
func writeJSON(w io.Writer, what string, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		return fmt.Errorf("write %s: %w", what, err)
	}
	return nil
}
