package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/cocoon-runtime/cocoon/image"
	"github.com/spf13/cobra"
)

func newImageCommand(g *globalOptions) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "image",
		Short: "Build and inspect the guest image",
		Long: `Build and inspect the guest image that sandboxes boot: Debian's cloud
kernel, uncompressed for direct boot, and an initramfs holding the cocoon
agent as /init and the kernel modules the guest needs.

Images are kept under <data-dir>/images/<id>/; <data-dir>/images/current
points to the one built last.`,
		Args: cobra.NoArgs,
	}
	cmd.AddCommand(newImageBuildCommand(g), newImageShowCommand(g), newImageOCICommand(g))
	return cmd
}

func newImageBuildCommand(g *globalOptions) *cobra.Command {
	opts := image.BuildOptions{}
	cmd := &cobra.Command{
		Use:   "build",
		Short: "Build the guest image",
		Long: `Build the guest image and make it the current one.

The kernel package (linux-image-cloud-amd64 by default) is downloaded
with apt-get into <data-dir>/cache/debs/ unless --kernel-deb names a local
package file. The kernel is decompressed to an ELF vmlinux that QEMU boots
through its PVH entry point; the initramfs holds the agent as /init and
the needed kernel modules with their dependencies.

An image is identified by its inputs (kernel package, agent binary, module
list): when an image for the same inputs exists, build only makes it
current. Progress goes to standard error, the image directory to standard
output.`,
		Example: `  cocoon image build
  cocoon image build --agent ./bin/cocoon-agent --kernel-deb linux-image-6.1.0-56-cloud-amd64_6.1.192-2_amd64.deb`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			opts.DataDir = g.dataDir
			stderr := cmd.ErrOrStderr()
			opts.Progress = func(format string, args ...any) {
				fmt.Fprintf(stderr, format+"\n", args...)
			}
			img, err := image.Build(cmd.Context(), opts)
			if err != nil {
				return err
			}
			if g.json {
				return printImageJSON(cmd, img)
			}
			_, err = fmt.Fprintln(cmd.OutOrStdout(), img.Dir)
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&opts.AgentPath, "agent", "", "statically linked guest agent to install as /init (default: "+image.DefaultAgentName+" beside the cocoon executable)")
	f.StringVar(&opts.KernelDeb, "kernel-deb", "", "local kernel package file to use instead of downloading one with apt")
	f.StringVar(&opts.KernelPackage, "kernel-package", image.DefaultKernelPackage, "kernel package or metapackage to download with apt")
	f.StringSliceVar(&opts.Modules, "modules", image.DefaultModules(), "kernel modules to load at boot, in order; their dependencies are added")
	return cmd
}

func newImageShowCommand(g *globalOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "show",
		Short: "Show the current guest image",
		Long: `Show the manifest of the current guest image: its id, kernel package
and release, the kernel modules in load order and the file paths. With
--json, print the manifest as JSON.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			img, err := image.Current(g.dataDir)
			if err != nil {
				return err
			}
			if g.json {
				b, err := os.ReadFile(filepath.Join(img.Dir, image.ManifestFile))
				if err != nil {
					return fmt.Errorf("show image: %w", err)
				}
				_, err = cmd.OutOrStdout().Write(b)
				return err
			}
			w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintf(w, "ID:\t%s\n", img.ID)
			fmt.Fprintf(w, "Directory:\t%s\n", img.Dir)
			fmt.Fprintf(w, "Kernel package:\t%s %s\n", img.KernelPackage, img.KernelVersion)
			fmt.Fprintf(w, "Kernel release:\t%s\n", img.KernelRelease)
			fmt.Fprintf(w, "Kernel:\t%s\n", img.Kernel)
			fmt.Fprintf(w, "Kernel (bzImage):\t%s\n", img.KernelBzImage)
			fmt.Fprintf(w, "Initramfs:\t%s\n", img.Initrd)
			fmt.Fprintf(w, "Modules (%d):\t%s\n", len(img.Modules), strings.Join(img.Modules, " "))
			fmt.Fprintf(w, "Agent sha256:\t%s\n", img.AgentSHA256)
			fmt.Fprintf(w, "Built:\t%s\n", img.Built.Local().Format(time.RFC3339))
			return w.Flush()
		},
	}
}

// printImageJSON writes v to the command's output as indented JSON.
func printImageJSON(cmd *cobra.Command, v any) error {
	enc := json.NewEncoder(cmd.OutOrStdout())
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
