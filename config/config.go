// Package config reads Cocoon's configuration file, a TOML document that
// tells the containerd shim how to build the VM of each pod: which QEMU,
// guest kernel and accelerator to use, how much memory and how many vCPUs
// to give it, how to reach the guest agent, and where the runtime keeps its
// state.
//
// Load reads the file (by default DefaultPath) over the defaults that
// Default returns and validates the result; a key the package does not know
// is an error. A pod may override a few keys with annotations, when the
// file allows it: see Config.WithAnnotations. Example returns a documented
// configuration file holding every key at its default value.
//
// Errors for a bad configuration wrap ErrInvalid; an annotation the
// configuration does not allow wraps ErrAnnotationNotAllowed.
package config

import (
	"bytes"
	_ "embed"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/cocoon-runtime/cocoon"
	"github.com/cocoon-runtime/cocoon/agent/protocol"
	"github.com/pelletier/go-toml/v2"

	"github.com/cocoon-runtime/cocoon/hypervisor"
	"github.com/cocoon-runtime/cocoon/internal/layout"
)

// DefaultPath is the configuration file the shim reads when it is given
// none.
const DefaultPath = "/etc/cocoon/configuration.toml"

// Errors callers branch on with errors.Is.
var (
	// ErrInvalid is wrapped by every error about a malformed file, an
	// unknown key or a value out of range.
	ErrInvalid = errors.New("invalid configuration")
	// ErrAnnotationNotAllowed is wrapped by the error for a pod annotation
	// that overrides a key the configuration does not let pods override.
	ErrAnnotationNotAllowed = errors.New("annotation not allowed")
)

// Config is the whole configuration file, one field a TOML table.
type Config struct {
	Hypervisor Hypervisor `toml:"hypervisor"`
	Agent      Agent      `toml:"agent"`
	Factory    Factory    `toml:"factory"`
	Runtime    Runtime    `toml:"runtime"`
}

// Hypervisor configures the VM of each pod ([hypervisor]).
type Hypervisor struct {
	// Path is the QEMU binary: an absolute path or a name looked up on
	// PATH. Empty selects the driver's default.
	Path string `toml:"path"`
	// Kernel and Initrd are the guest kernel and initramfs, absolute
	// paths. Empty selects the current guest image.
	Kernel string `toml:"kernel"`
	Initrd string `toml:"initrd"`
	// MachineType is "q35", "microvm", or empty for the driver's default.
	MachineType string `toml:"machine_type"`
	// Accelerator is "auto", "kvm" or "tcg".
	Accelerator string `toml:"accelerator"`
	// KernelParams are appended to the driver's guest kernel command line.
	KernelParams []string `toml:"kernel_params"`
	// VCPUs (1 to 64) and MemoryMiB (at least 64) size the VM at boot.
	VCPUs     uint32 `toml:"vcpus"`
	MemoryMiB uint32 `toml:"memory_mib"`
	// MaxVCPUs and MaxMemoryMiB bound a VM sized for its pod: vcpus and
	// memory_mib are the base (the guest kernel's and agent's share), the
	// pod's limits come on top. vCPUs beyond the bound are capped, memory
	// beyond it refuses the pod. 0: the host's CPU count and memory.
	MaxVCPUs     uint32 `toml:"max_vcpus"`
	MaxMemoryMiB uint32 `toml:"max_memory_mib"`
	// FixedSize boots each VM at its pod's size with no room to grow.
	FixedSize bool `toml:"fixed_size"`
	// HotplugSlots is the number of PCIe root ports for device hotplug
	// (0 to 32, q35 only).
	HotplugSlots int `toml:"hotplug_slots"`
	// Virtiofsd is the virtiofsd binary: an absolute path or a name looked
	// up on PATH. Empty selects QEMU's.
	Virtiofsd string `toml:"virtiofsd"`
	// Debug makes the guest kernel and the agent verbose on the console.
	Debug bool `toml:"debug"`
}

// Agent configures the channel to the guest agent ([agent]).
type Agent struct {
	// Transport is "auto", "virtio-serial" or "vsock".
	Transport string `toml:"transport"`
	// BootTimeout bounds the wait for the agent's first answer.
	BootTimeout Duration `toml:"boot_timeout"`
	// Debug makes the agent log at debug level.
	Debug bool `toml:"debug"`
}

// Factory configures the VM factory ([factory]): with enable_template,
// pods start from a saved template VM instead of booting (package
// factory).
type Factory struct {
	EnableTemplate bool `toml:"enable_template"`
	// TemplateLimit is the most templates kept at once (1 to 64): making
	// one more evicts the least recently used template not in use.
	TemplateLimit int `toml:"template_limit"`
	// MemoryMiB sizes the tmpfs that holds the RAM of templates and of the
	// VMs restored from them (at least 64 MiB, and at least
	// hypervisor.memory_mib when templates are on).
	MemoryMiB uint32 `toml:"memory_mib"`
}

// Runtime configures the runtime itself ([runtime]).
type Runtime struct {
	// StateDir holds runtime state (default /run/cocoon).
	StateDir string `toml:"state_dir"`
	// DataDir holds guest images and caches (default /var/lib/cocoon).
	DataDir string `toml:"data_dir"`
	// LogLevel is "debug", "info", "warn" or "error".
	LogLevel string `toml:"log_level"`
	// EnableAnnotations lists the keys, as "<section>.<key>", that a pod
	// may override with an annotation (see Config.WithAnnotations).
	EnableAnnotations []string `toml:"enable_annotations"`
	// DANConfDir is the directory of directly attachable network files,
	// <sandbox ID>.json each; "" turns DAN off.
	DANConfDir string `toml:"dan_conf_dir"`
	// InternetworkingModel is how a pod's veths are wired to its VM:
	// "tcfilter", "macvtap" or "none" (see cocoon.SandboxConfig).
	InternetworkingModel string `toml:"internetworking_model"`
}

// Duration is a time.Duration written in the file as a Go duration string
// such as "30s" or "1m30s".
type Duration struct{ time.Duration }

// UnmarshalText parses a duration with time.ParseDuration.
func (d *Duration) UnmarshalText(text []byte) error {
	v, err := time.ParseDuration(string(text))
	if err != nil {
		return fmt.Errorf("duration %q: want a Go duration string such as \"30s\": %w", text, err)
	}
	d.Duration = v
	return nil
}

// MarshalText formats the duration as time.Duration.String does.
func (d Duration) MarshalText() ([]byte, error) {
	return []byte(d.Duration.String()), nil
}

// Default returns the configuration used when there is no file, and under
// every key that a file leaves out.
func Default() *Config {
	return &Config{
		Hypervisor: Hypervisor{
			Accelerator: string(hypervisor.AccelAuto),
			VCPUs:       1,
			MemoryMiB:   256,
		},
		Agent: Agent{
			Transport:   string(hypervisor.TransportAuto),
			BootTimeout: Duration{30 * time.Second},
		},
		// Templates are on: pods start in ~2 s instead of ~5 s under TCG,
		// and each costs ~40 MiB less (measured by bench/pod).
		// The RAM tmpfs fits the templates of the limit and ~16 clones of
		// 256 MiB VMs that touched all their memory.
		Factory: Factory{EnableTemplate: true, TemplateLimit: 4, MemoryMiB: 5120},
		Runtime: Runtime{
			StateDir:             layout.StateDir,
			DataDir:              layout.DataDir,
			LogLevel:             "info",
			InternetworkingModel: "tcfilter",
		},
	}
}

//go:embed configuration.toml
var example []byte

// Example returns a documented configuration file that sets every key to
// its default value. Parsing it yields Default().
func Example() []byte {
	return bytes.Clone(example)
}

// Load reads the configuration file at path over the defaults and
// validates it. An empty path means DefaultPath, and then a missing file
// yields Default(); a path given explicitly must exist.
func Load(path string) (*Config, error) {
	return load(path, DefaultPath)
}

// load is Load with the default path as a parameter, for tests.
func load(path, defaultPath string) (*Config, error) {
	explicit := path != ""
	if !explicit {
		path = defaultPath
	}
	data, err := os.ReadFile(path)
	if err != nil {
		if !explicit && errors.Is(err, fs.ErrNotExist) {
			return Default(), nil
		}
		return nil, fmt.Errorf("read configuration: %w", err)
	}
	c, err := Parse(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

// Parse decodes a configuration file over the defaults and validates it.
// A key that the configuration does not have is an error naming the key.
func Parse(data []byte) (*Config, error) {
	c := Default()
	dec := toml.NewDecoder(bytes.NewReader(data)).DisallowUnknownFields()
	if err := dec.Decode(c); err != nil {
		return nil, decodeError(err)
	}
	// An empty array and a missing key mean the same; keep one form.
	if len(c.Hypervisor.KernelParams) == 0 {
		c.Hypervisor.KernelParams = nil
	}
	if len(c.Runtime.EnableAnnotations) == 0 {
		c.Runtime.EnableAnnotations = nil
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return c, nil
}

// decodeError turns a go-toml error into one that wraps ErrInvalid and
// tells, in one line, which key and where.
func decodeError(err error) error {
	var strict *toml.StrictMissingError
	if errors.As(err, &strict) {
		keys := make([]string, 0, len(strict.Errors))
		for i := range strict.Errors {
			e := &strict.Errors[i]
			line, _ := e.Position()
			keys = append(keys, fmt.Sprintf("%s (line %d)", strings.Join(e.Key(), "."), line))
		}
		noun := "key"
		if len(keys) > 1 {
			noun = "keys"
		}
		return fmt.Errorf("%w: unknown %s %s", ErrInvalid, noun, strings.Join(keys, ", "))
	}
	var de *toml.DecodeError
	if errors.As(err, &de) {
		line, col := de.Position()
		where := fmt.Sprintf("line %d, column %d", line, col)
		if k := de.Key(); len(k) > 0 {
			where = strings.Join(k, ".") + " (" + where + ")"
		}
		return fmt.Errorf("%w: %s: %w", ErrInvalid, where, err)
	}
	return fmt.Errorf("%w: %w", ErrInvalid, err)
}

// Limits checked by Validate.
const (
	minMemoryMiB     = 64
	maxMemoryMiB     = 32768
	maxVCPUs         = 64
	maxHotplugSlots  = 32
	maxTemplateLimit = 64
)

// Validate reports every value out of range, each error wrapping
// ErrInvalid (joined with errors.Join when there are several).
func (c *Config) Validate() error {
	var errs []error
	bad := func(key, format string, args ...any) {
		errs = append(errs, invalid(key, format, args...))
	}
	oneOf := func(key, v string, allowed ...string) {
		for _, a := range allowed {
			if v == a {
				return
			}
		}
		quoted := make([]string, len(allowed))
		for i, a := range allowed {
			quoted[i] = fmt.Sprintf("%q", a)
		}
		bad(key, "%q is not one of %s", v, strings.Join(quoted, ", "))
	}
	binary := func(key, v string) {
		if v != "" && !filepath.IsAbs(v) && strings.Contains(v, "/") {
			bad(key, "%q must be an absolute path or a command name", v)
		}
	}
	absolute := func(key, v string, required bool) {
		if v == "" && !required {
			return
		}
		if !filepath.IsAbs(v) {
			bad(key, "%q is not an absolute path", v)
		}
	}

	h := &c.Hypervisor
	binary("hypervisor.path", h.Path)
	absolute("hypervisor.kernel", h.Kernel, false)
	absolute("hypervisor.initrd", h.Initrd, false)
	oneOf("hypervisor.machine_type", h.MachineType, "", "q35", "microvm")
	oneOf("hypervisor.accelerator", h.Accelerator,
		string(hypervisor.AccelAuto), string(hypervisor.AccelKVM), string(hypervisor.AccelTCG))
	for _, p := range h.KernelParams {
		if p == "" || strings.ContainsAny(p, " \t\r\n") {
			bad("hypervisor.kernel_params", "parameter %q is empty or contains white space", p)
		}
	}
	if h.VCPUs < 1 || h.VCPUs > maxVCPUs {
		bad("hypervisor.vcpus", "%d is out of range (1 to %d)", h.VCPUs, maxVCPUs)
	}
	if h.MemoryMiB < minMemoryMiB {
		bad("hypervisor.memory_mib", "%d MiB is too little (minimum %d)", h.MemoryMiB, minMemoryMiB)
	} else if h.MemoryMiB > maxMemoryMiB {
		bad("hypervisor.memory_mib", "%d MiB is too much (maximum %d)", h.MemoryMiB, maxMemoryMiB)
	}
	if h.MaxVCPUs != 0 && (h.MaxVCPUs < h.VCPUs || h.MaxVCPUs > maxVCPUs) {
		bad("hypervisor.max_vcpus", "%d is out of range (vcpus, %d, to %d; 0: the host's)", h.MaxVCPUs, h.VCPUs, maxVCPUs)
	}
	if h.MaxMemoryMiB != 0 && h.MaxMemoryMiB < h.MemoryMiB {
		bad("hypervisor.max_memory_mib", "%d MiB is smaller than the base, memory_mib (%d MiB)", h.MaxMemoryMiB, h.MemoryMiB)
	}
	if h.HotplugSlots < 0 || h.HotplugSlots > maxHotplugSlots {
		bad("hypervisor.hotplug_slots", "%d is out of range (0 to %d)", h.HotplugSlots, maxHotplugSlots)
	} else if h.HotplugSlots > 0 && h.MachineType == "microvm" {
		bad("hypervisor.hotplug_slots", "microvm cannot hotplug devices; use q35")
	}
	binary("hypervisor.virtiofsd", h.Virtiofsd)

	oneOf("agent.transport", c.Agent.Transport,
		string(hypervisor.TransportAuto), string(hypervisor.TransportSerial), string(hypervisor.TransportVsock))
	if c.Agent.BootTimeout.Duration <= 0 {
		bad("agent.boot_timeout", "%s is not a positive duration", c.Agent.BootTimeout.Duration)
	}

	if n := c.Factory.TemplateLimit; n < 1 || n > maxTemplateLimit {
		bad("factory.template_limit", "%d is out of range (1 to %d)", n, maxTemplateLimit)
	}
	if m := c.Factory.MemoryMiB; m < minMemoryMiB {
		bad("factory.memory_mib", "%d MiB is too little (minimum %d)", m, minMemoryMiB)
	} else if c.Factory.EnableTemplate && m < h.MemoryMiB {
		bad("factory.memory_mib", "the tmpfs of template RAM (%d MiB) cannot hold one VM of hypervisor.memory_mib = %d MiB", m, h.MemoryMiB)
	}

	absolute("runtime.state_dir", c.Runtime.StateDir, true)
	absolute("runtime.data_dir", c.Runtime.DataDir, true)
	absolute("runtime.dan_conf_dir", c.Runtime.DANConfDir, false)
	oneOf("runtime.internetworking_model", c.Runtime.InternetworkingModel, "tcfilter", "macvtap", "none")
	oneOf("runtime.log_level", c.Runtime.LogLevel, "debug", "info", "warn", "error")
	for _, k := range c.Runtime.EnableAnnotations {
		switch {
		case overridable(k):
		case isFileKey(k):
			bad("runtime.enable_annotations", "%q cannot be set by an annotation", k)
		case strings.HasPrefix(k, AnnotationPrefix):
			bad("runtime.enable_annotations", "%q: list the key without the %q prefix", k, AnnotationPrefix)
		default:
			bad("runtime.enable_annotations", "%q is not a configuration key", k)
		}
	}
	return errors.Join(errs...)
}

// invalid returns an error wrapping ErrInvalid about one key.
func invalid(key, format string, args ...any) error {
	return fmt.Errorf("%w: %s: %s", ErrInvalid, key, fmt.Sprintf(format, args...))
}

// VMConfig returns the configuration of a sandbox's VM. Empty Path,
// Kernel, Initrd and MachineType are passed on empty, for the runtime or
// the driver to fill in. Agent.Debug without Hypervisor.Debug adds the
// guest parameter that makes only the agent verbose.
func (c *Config) VMConfig() cocoon.VMConfig {
	h := &c.Hypervisor
	params := append([]string(nil), h.KernelParams...)
	if c.Agent.Debug && !h.Debug {
		params = append(params, protocol.ParamDebug+"=1")
	}
	return cocoon.VMConfig{
		Path:           h.Path,
		Kernel:         h.Kernel,
		Initrd:         h.Initrd,
		KernelParams:   params,
		VCPUs:          h.VCPUs,
		MemoryMiB:      h.MemoryMiB,
		MaxVCPUs:       h.MaxVCPUs,
		MaxMemoryMiB:   h.MaxMemoryMiB,
		FixedSize:      h.FixedSize,
		MachineType:    h.MachineType,
		Accelerator:    hypervisor.Accelerator(h.Accelerator),
		AgentTransport: hypervisor.Transport(c.Agent.Transport),
		HotplugSlots:   h.HotplugSlots,
		Debug:          h.Debug,
	}
}

// clone returns a deep copy of c.
func (c *Config) clone() *Config {
	n := *c
	n.Hypervisor.KernelParams = cloneStrings(c.Hypervisor.KernelParams)
	n.Runtime.EnableAnnotations = cloneStrings(c.Runtime.EnableAnnotations)
	return &n
}

func cloneStrings(s []string) []string {
	if s == nil {
		return nil
	}
	return append([]string{}, s...)
}
