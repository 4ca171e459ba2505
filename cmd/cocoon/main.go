// Command cocoon manages Cocoon sandboxes: lightweight virtual machines that
// run OCI containers.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"

	"github.com/cocoon-runtime/cocoon/internal/layout"
	"github.com/spf13/cobra"
)

// globalOptions are the flags every subcommand shares.
type globalOptions struct {
	root     string // runtime state (sockets, pid files): tmpfs
	dataDir  string // persistent data: images, caches
	logLevel string
	json     bool
	// templates makes new sandbox VMs from VM templates (package factory).
	templates bool
	// danConfDir is where directly attachable network files are.
	danConfDir string
}

func (g *globalOptions) logger() *slog.Logger {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(g.logLevel)); err != nil {
		lvl = slog.LevelInfo
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lvl}))
}

func newRootCommand() *cobra.Command {
	g := &globalOptions{}
	root := &cobra.Command{
		Use:           "cocoon",
		Short:         "Run containers inside lightweight virtual machines",
		SilenceUsage:  true,
		SilenceErrors: true,
		// SIGINT and SIGTERM cancel a command's context, except for the
		// commands that pass them on to a process in a container.
		PersistentPreRun: func(cmd *cobra.Command, _ []string) {
			if cmd.Annotations[forwardsSignals] == "" {
				cmd.SetContext(interruptible(cmd.Context()))
			}
		},
	}
	root.PersistentFlags().StringVar(&g.root, "root", layout.StateDir, "directory for runtime state (sockets, pid files)")
	root.PersistentFlags().StringVar(&g.dataDir, "data-dir", layout.DataDir, "directory for persistent data (guest images, caches)")
	root.PersistentFlags().StringVar(&g.logLevel, "log-level", "info", "log level: debug, info, warn, error")
	root.PersistentFlags().BoolVar(&g.json, "json", false, "print data as JSON")
	root.PersistentFlags().StringVar(&g.danConfDir, "dan-conf-dir", "", "directory of directly attachable network files (<ID>.json): a sandbox with one gets exactly the host devices it lists")
	root.PersistentFlags().BoolVar(&g.templates, "vm-templates", false, "make new sandbox VMs from a saved VM template (made by the first, under --root) instead of booting each")
	root.AddCommand(
		newCheckCommand(g),
		newImageCommand(g),
		newVMCommand(g),
		newVersionCommand(g),
		newSpecCommand(g),
		newCreateCommand(g),
		newStartCommand(g),
		newRunCommand(g),
		newExecCommand(g),
		newPsCommand(g),
		newListCommand(g),
		newStateCommand(g),
		newKillCommand(g),
		newPauseCommand(g),
		newResumeCommand(g),
		newDeleteCommand(g),
		newGCCommand(g),
		newStatsCommand(g),
		newEventsCommand(g),
		newUpdateCommand(g),
		newNetworkCommand(g),
		newPortForwardCommand(g),
		newDeviceCommand(g),
	)
	return root
}

func main() {
	ctx, cancel := context.WithCancel(context.Background())
	err := newRootCommand().ExecuteContext(ctx)
	cancel()
	if err != nil {
		var ec exitCode
		if asExitCode(err, &ec) {
			os.Exit(int(ec))
		}
		fmt.Fprintln(os.Stderr, "cocoon:", err)
		os.Exit(1)
	}
}
