package main

import (
	"fmt"
	"path/filepath"
	"strings"

	"github.com/cocoon-runtime/cocoon"
	"github.com/cocoon-runtime/cocoon/internal/cni"
	"github.com/cocoon-runtime/cocoon/internal/specutil"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/spf13/cobra"
)

// netFlags choose a sandbox's network.
type netFlags struct {
	net, confDir, model string
	binDirs             []string
}

func (f *netFlags) register(cmd *cobra.Command) {
	fl := cmd.Flags()
	fl.StringVar(&f.net, "net", "", `the sandbox's network: "none" (only the guest's loopback), "netns:PATH" (the interfaces of that network namespace), `+
		`or "cni:NAME" (a network namespace of Cocoon's own where it runs CNI network NAME, both removed with the sandbox); `+
		`default: the network namespace config.json names, else none`)
	fl.StringVar(&f.confDir, "cni-conf-dir", cni.DefaultConfDir, "directory of CNI network configurations, for --net cni:NAME")
	fl.StringSliceVar(&f.binDirs, "cni-bin-dir", cni.DefaultBinDirs(), "directories of CNI plugins, for --net cni:NAME")
	fl.StringVar(&f.model, "net-model", "tcfilter", `how each veth of the network namespace is wired to the VM: "tcfilter", "macvtap", or "none" (only taps and macvtaps, attached as they are)`)
}

// apply sets cfg's network as the flags (or, without --net, spec) say.
func (f *netFlags) apply(cfg *cocoon.SandboxConfig, spec *specs.Spec) error {
	cfg.NetworkModel = f.model
	kind, arg, _ := strings.Cut(f.net, ":")
	switch {
	case f.net == "":
		cfg.NetNS = specutil.NetNSPath(spec)
	case f.net == "none":
	case kind == "netns" && arg != "":
		if !filepath.IsAbs(arg) {
			return fmt.Errorf("--net %s: the network namespace's path must be absolute", f.net)
		}
		cfg.NetNS = arg
	case kind == "cni" && arg != "":
		cfg.Network = &cocoon.NetworkConfig{CNI: arg, CNIConfDir: f.confDir, CNIBinDirs: f.binDirs}
	default:
		return fmt.Errorf(`--net %q: want "none", "netns:PATH" or "cni:NAME"`, f.net)
	}
	return nil
}
