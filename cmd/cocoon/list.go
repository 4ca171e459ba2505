package main

import (
	"fmt"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/cocoon-runtime/cocoon"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/spf13/cobra"
)

func newListCommand(g *globalOptions) *cobra.Command {
	return &cobra.Command{
		Use:     "list [--json]",
		Aliases: []string{"ls"},
		Short:   "List containers",
		Long: `List the containers under the state directory (--root): their state, when
they were created, their bundle, and the host processes of their sandbox VM
(QEMU first).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			rt, err := g.runtime()
			if err != nil {
				return err
			}
			sandboxes, err := rt.ListSandbox(cmd.Context())
			if err != nil {
				return fmt.Errorf("list sandboxes in %s: %w", g.root, err)
			}
			list := make([]containerJSON, 0, len(sandboxes))
			for _, s := range sandboxes {
				list = append(list, describeContainer(s))
			}
			return printContainers(cmd, g, list)
		},
	}
}

// containerJSON describes a container as `list --json` and `state` print
// it: runc's state document plus the host processes of its sandbox VM.
type containerJSON struct {
	OCIVersion string `json:"ociVersion"`
	ID         string `json:"id"`
	Status     string `json:"status"`
	// PID is the container's init process in the sandbox VM, 0 when it
	// does not run.
	PID            int               `json:"pid"`
	Bundle         string            `json:"bundle"`
	Rootfs         string            `json:"rootfs"`
	Created        time.Time         `json:"created"`
	Annotations    map[string]string `json:"annotations,omitempty"`
	HypervisorPIDs []int             `json:"hypervisor_pids"`
	// VM is the size of the sandbox VM now and how far it may grow.
	VM *vmSizeJSON `json:"vm,omitempty"`
}

type vmSizeJSON struct {
	VCPUs        uint32 `json:"vcpus"`
	MemoryMiB    uint32 `json:"memory_mib"`
	MaxVCPUs     uint32 `json:"max_vcpus"`
	MaxMemoryMiB uint32 `json:"max_memory_mib"`
}

// describeContainer describes the container of a sandbox, which has the
// sandbox's ID.
func describeContainer(s cocoon.SandboxStatus) containerJSON {
	c := containerJSON{
		OCIVersion: specs.Version, ID: s.ID, Status: ociStatus(cocoon.StateStopped),
		Created: s.Created, Annotations: s.Annotations, HypervisorPIDs: s.HypervisorPids,
	}
	if c.HypervisorPIDs == nil {
		c.HypervisorPIDs = []int{}
	}
	if s.VCPUs != 0 {
		c.VM = &vmSizeJSON{VCPUs: s.VCPUs, MemoryMiB: s.MemoryMiB, MaxVCPUs: s.MaxVCPUs, MaxMemoryMiB: s.MaxMemoryMiB}
	}
	for _, cs := range s.Containers {
		if cs.ID != s.ID {
			continue
		}
		c.Status, c.Bundle, c.Rootfs, c.Created = ociStatus(cs.State), cs.Bundle, cs.Rootfs, cs.Created
		if cs.State != cocoon.StateStopped {
			c.PID = cs.PID
		}
		if len(cs.Annotations) > 0 {
			c.Annotations = cs.Annotations
		}
	}
	if s.State == cocoon.StateStopped {
		c.Status, c.PID = ociStatus(cocoon.StateStopped), 0
	}
	return c
}

func printContainers(cmd *cobra.Command, g *globalOptions, list []containerJSON) error {
	out := cmd.OutOrStdout()
	if g.json {
		return writeJSON(out, "container list", list)
	}
	tw := tabwriter.NewWriter(out, 0, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tSTATE\tCREATED\tBUNDLE\tPIDS")
	for _, c := range list {
		pids := make([]string, len(c.HypervisorPIDs))
		for i, p := range c.HypervisorPIDs {
			pids[i] = strconv.Itoa(p)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", c.ID, c.Status, c.Created.Local().Format(time.RFC3339), c.Bundle, strings.Join(pids, ","))
	}
	if err := tw.Flush(); err != nil {
		return fmt.Errorf("write container list: %w", err)
	}
	return nil
}
