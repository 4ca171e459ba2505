package ctrtest

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// ShimBinary is the file name containerd looks for on PATH for runtime
// io.containerd.cocoon.v2.
const ShimBinary = "containerd-shim-cocoon-v2"

// BuildShim builds the repository's shim into dir/ShimBinary, for
// Options.ShimDir. With COCOON_SHIM_RACE=1 the shim is built with the race
// detector (its reports go to the shim's log, in containerd's).
func BuildShim(ctx context.Context, repo, dir string) error {
	args := []string{"build", "-o", filepath.Join(dir, ShimBinary)}
	if os.Getenv("COCOON_SHIM_RACE") == "1" {
		args = append(args, "-race")
	}
	cmd := exec.CommandContext(ctx, "go", append(args, "./cmd/"+ShimBinary)...)
	cmd.Dir = repo
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("build shim: %w: %s", err, strings.TrimSpace(string(out)))
	}
	return nil
}

// CocoonConfig is the Cocoon configuration tests and benchmarks give the
// shim: the guest image and a state directory of their own.
type CocoonConfig struct {
	Kernel, Initrd    string
	Accelerator       string // default auto
	StateDir, DataDir string
	// EnableAnnotations are the per-pod overrides allowed.
	EnableAnnotations []string
	// Templates starts pods from VM templates (factory.enable_template).
	Templates bool
}

// Write writes the configuration file.
func (c CocoonConfig) Write(path string) error {
	if c.Accelerator == "" {
		c.Accelerator = "auto"
	}
	ann := make([]string, len(c.EnableAnnotations))
	for i, a := range c.EnableAnnotations {
		ann[i] = fmt.Sprintf("%q", a)
	}
	conf := fmt.Sprintf(`[hypervisor]
kernel = %q
initrd = %q
accelerator = %q
memory_mib = 256

[agent]
boot_timeout = "60s"

[factory]
enable_template = %t

[runtime]
state_dir = %q
data_dir = %q
log_level = "debug"
enable_annotations = [%s]
`, c.Kernel, c.Initrd, c.Accelerator, c.Templates, c.StateDir, c.DataDir, strings.Join(ann, ", "))
	return os.WriteFile(path, []byte(conf), 0o600)
}
