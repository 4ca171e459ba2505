// Command cocoon manages Cocoon sandboxes: lightweight virtual machines that
// run OCI containers.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
)

// globalOptions are the flags every subcommand shares.
type globalOptions struct {
	root     string // runtime state (sockets, pid files): tmpfs
	dataDir  string // persistent data: images, caches
	logLevel string
	json     bool
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
	}
	root.PersistentFlags().StringVar(&g.root, "root", "/run/cocoon", "directory for runtime state (sockets, pid files)")
	root.PersistentFlags().StringVar(&g.dataDir, "data-dir", "/var/lib/cocoon", "directory for persistent data (guest images, caches)")
	root.PersistentFlags().StringVar(&g.logLevel, "log-level", "info", "log level: debug, info, warn, error")
	root.PersistentFlags().BoolVar(&g.json, "json", false, "print data as JSON")
	root.AddCommand(
		newCheckCommand(g),
		newImageCommand(g),
		newVMCommand(g),
		newVersionCommand(g),
	)
	return root
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := newRootCommand().ExecuteContext(ctx)
	stop()
	if err != nil {
		var ec exitCode
		if asExitCode(err, &ec) {
			os.Exit(int(ec))
		}
		fmt.Fprintln(os.Stderr, "cocoon:", err)
		os.Exit(1)
	}
}
