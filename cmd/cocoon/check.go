package main

import (
	"encoding/json"
	"fmt"
	"strings"
	"text/tabwriter"

	"github.com/cocoon-runtime/cocoon/check"
	"github.com/cocoon-runtime/cocoon/hypervisor"
	"github.com/cocoon-runtime/cocoon/internal/layout"
	"github.com/spf13/cobra"
)

func newCheckCommand(g *globalOptions) *cobra.Command {
	var (
		qemuPath      string
		virtiofsdPath string
		accelName     string
	)
	cmd := &cobra.Command{
		Use:   "check",
		Short: "Check whether this host can run Cocoon sandboxes",
		Long: `Check whether this host can run Cocoon sandboxes.

Every check prints what it found or why it failed and what to do about it.
KVM is tested by booting the guest kernel under it once; the verdict is
cached in <data-dir>/cache. The command exits with status 1 when a required
check failed.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			acc := hypervisor.Accelerator(accelName)
			switch acc {
			case hypervisor.AccelAuto, hypervisor.AccelKVM, hypervisor.AccelTCG:
			default:
				return fmt.Errorf("invalid --accel %q: want auto, kvm or tcg", accelName)
			}
			rep := check.Run(cmd.Context(), check.Options{
				QEMUPath:      qemuPath,
				VirtiofsdPath: virtiofsdPath,
				DataDir:       g.dataDir,
				CacheDir:      layout.CacheDir(g.dataDir),
				Accelerator:   acc,
			})
			out := cmd.OutOrStdout()
			if g.json {
				enc := json.NewEncoder(out)
				enc.SetIndent("", "  ")
				if err := enc.Encode(rep); err != nil {
					return fmt.Errorf("write check report: %w", err)
				}
			} else if err := printCheckReport(cmd, rep); err != nil {
				return fmt.Errorf("write check report: %w", err)
			}
			if !rep.CanRun {
				return exitCode(1)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&qemuPath, "qemu", check.DefaultQEMUPath(), "QEMU binary to check (a path, or a name in PATH)")
	f.StringVar(&virtiofsdPath, "virtiofsd", "", "virtiofsd binary to check (default: /usr/lib/qemu/virtiofsd, /usr/libexec/virtiofsd, then PATH)")
	f.StringVar(&accelName, "accel", string(hypervisor.AccelAuto), "accelerator to check for: auto, kvm or tcg")
	return cmd
}

func printCheckReport(cmd *cobra.Command, rep check.Report) error {
	tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "CHECK\tSTATUS\tDETAIL")
	for _, r := range rep.Results {
		status := string(r.Status)
		if r.Required && r.Status == check.StatusFail {
			status += " (required)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\n", r.Name, status, r.Detail)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	w := cmd.OutOrStdout()
	if rep.CanRun {
		_, err := fmt.Fprintln(w, "\nThis host can run Cocoon sandboxes.")
		return err
	}
	var names []string
	for _, r := range rep.Failed() {
		names = append(names, r.Name)
	}
	_, err := fmt.Fprintf(w, "\nThis host cannot run Cocoon sandboxes: required checks failed: %s.\n", strings.Join(names, ", "))
	return err
}
