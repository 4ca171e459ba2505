package main

import (
	"errors"
	"fmt"

	"github.com/cocoon-runtime/cocoon/internal/ociimage"
	"github.com/spf13/cobra"
)

func newImageOCICommand(_ *globalOptions) *cobra.Command {
	var (
		busybox, pause bool
		output, name   string
	)
	cmd := &cobra.Command{
		Use:   "oci --busybox|--pause -o FILE [--name NAME]",
		Short: "Write a local container image as an OCI archive for ctr image import",
		Long: `Write a container image, built locally from the host's static busybox (no
registry), as an OCI image archive: a tar holding oci-layout, index.json
and blobs/sha256/..., which 'ctr image import' accepts.

--busybox writes ` + ociimage.BusyboxName + `, a busybox rootfs whose
command is sh. --pause writes ` + ociimage.PauseName + `, the CRI sandbox
image: the same rootfs running a shell that waits forever and exits 0 on
SIGTERM or SIGINT (set it as sandbox_image in containerd's CRI config).
Both flags together write one archive holding both images, which share
their layer. --name gives the one image another full name (host/path:tag).

The output is deterministic: the same busybox gives the same digests.
With -o -, the archive goes to standard output.`,
		Example: `  cocoon image oci --busybox -o busybox.tar
  cocoon image oci --pause -o - | ctr -n k8s.io image import -
  cocoon image oci --busybox --pause -o local.tar && ctr -n k8s.io image import local.tar
  cocoon image oci --busybox --name example.local/tools:1 -o tools.tar`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var images []ociimage.Image
			if busybox {
				images = append(images, ociimage.BusyboxImage(name))
			}
			if pause {
				images = append(images, ociimage.PauseImage(name))
			}
			switch {
			case len(images) == 0:
				return errors.New("image oci: which image? give --busybox, --pause or both")
			case len(images) > 1 && name != "":
				return errors.New("image oci: --name names one image; give only --busybox or --pause with it")
			case output == "":
				return errors.New("image oci: no output file (-o FILE, or -o - for standard output)")
			}
			var err error
			if output == "-" {
				err = ociimage.WriteBusybox(cmd.OutOrStdout(), images...)
			} else {
				err = ociimage.WriteBusyboxFile(output, images...)
			}
			if err != nil {
				return fmt.Errorf("image oci: %w", err)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.BoolVar(&busybox, "busybox", false, "write the busybox image ("+ociimage.BusyboxName+")")
	f.BoolVar(&pause, "pause", false, "write the pause image ("+ociimage.PauseName+")")
	f.StringVarP(&output, "output", "o", "", "archive file to write (- for standard output)")
	f.StringVar(&name, "name", "", "full image name (default "+ociimage.BusyboxName+" or "+ociimage.PauseName+")")
	return cmd
}
