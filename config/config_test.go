package config

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cocoon-runtime/cocoon"
	"github.com/pelletier/go-toml/v2"

	"github.com/cocoon-runtime/cocoon/hypervisor"
)

func TestDefault(t *testing.T) {
	c := Default()
	want := &Config{
		Hypervisor: Hypervisor{Accelerator: "auto", VCPUs: 1, MemoryMiB: 256},
		Agent:      Agent{Transport: "auto", BootTimeout: Duration{30 * time.Second}},
		Factory:    Factory{EnableTemplate: true, TemplateLimit: 4, MemoryMiB: 5120},
		Runtime:    Runtime{StateDir: "/run/cocoon", DataDir: "/var/lib/cocoon", LogLevel: "info", InternetworkingModel: "tcfilter"},
	}
	if !reflect.DeepEqual(c, want) {
		t.Fatalf("Default() = %+v, want %+v", c, want)
	}
	if err := c.Validate(); err != nil {
		t.Fatalf("Default() does not validate: %v", err)
	}
	c.Hypervisor.VCPUs = 8
	if Default().Hypervisor.VCPUs != 1 {
		t.Fatal("Default() returns shared state")
	}
}

func TestExample(t *testing.T) {
	c, err := Parse(Example())
	if err != nil {
		t.Fatalf("Parse(Example()): %v", err)
	}
	if !reflect.DeepEqual(c, Default()) {
		t.Fatalf("Parse(Example()) = %+v, want Default() = %+v", c, Default())
	}

	// Every key is in the example, set (not only in a comment).
	var doc map[string]map[string]any
	if err := toml.Unmarshal(Example(), &doc); err != nil {
		t.Fatal(err)
	}
	for _, k := range fileKeys() {
		section, key, _ := strings.Cut(k, ".")
		if _, ok := doc[section][key]; !ok {
			t.Errorf("the example does not set %s", k)
		}
	}

	b := Example()
	b[0] = 'X'
	if Example()[0] == 'X' {
		t.Error("Example() returns the embedded slice itself")
	}
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.toml")
	if err := os.WriteFile(good, []byte("[hypervisor]\nvcpus = 4\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	bad := filepath.Join(dir, "bad.toml")
	if err := os.WriteFile(bad, []byte("[hypervisor]\nvcpus = 0\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(dir, "missing.toml")

	tests := []struct {
		name        string
		path        string
		defaultPath string
		wantVCPUs   uint32
		wantErr     error  // nil: success
		wantInErr   string // part of the message
	}{
		{name: "missing default path gives defaults", path: "", defaultPath: missing, wantVCPUs: 1},
		{name: "existing default path is read", path: "", defaultPath: good, wantVCPUs: 4},
		{name: "explicit path is read", path: good, defaultPath: missing, wantVCPUs: 4},
		{name: "explicit missing path is an error", path: missing, defaultPath: good, wantErr: fs.ErrNotExist, wantInErr: "missing.toml"},
		{name: "invalid file names the file", path: bad, defaultPath: missing, wantErr: ErrInvalid, wantInErr: "bad.toml"},
		{name: "invalid default file is an error", path: "", defaultPath: bad, wantErr: ErrInvalid, wantInErr: "hypervisor.vcpus"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := load(tt.path, tt.defaultPath)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("load(%q, %q) error = %v, want %v", tt.path, tt.defaultPath, err, tt.wantErr)
				}
				if !strings.Contains(err.Error(), tt.wantInErr) {
					t.Fatalf("error %q does not contain %q", err, tt.wantInErr)
				}
				if c != nil {
					t.Fatalf("load returned a config with an error")
				}
				return
			}
			if err != nil {
				t.Fatalf("load(%q, %q): %v", tt.path, tt.defaultPath, err)
			}
			if c.Hypervisor.VCPUs != tt.wantVCPUs {
				t.Fatalf("vcpus = %d, want %d", c.Hypervisor.VCPUs, tt.wantVCPUs)
			}
		})
	}
}

func TestLoadDefaultPath(t *testing.T) {
	if _, err := os.Stat(DefaultPath); !errors.Is(err, fs.ErrNotExist) {
		t.Skipf("%s exists on this host", DefaultPath)
	}
	c, err := Load("")
	if err != nil {
		t.Fatalf("Load(\"\") without %s: %v", DefaultPath, err)
	}
	if !reflect.DeepEqual(c, Default()) {
		t.Fatalf("Load(\"\") = %+v, want Default()", c)
	}
}

func TestParseOverridesDefaults(t *testing.T) {
	c, err := Parse([]byte(`
[hypervisor]
path = "/usr/bin/qemu-system-x86_64"
kernel = "/opt/k/vmlinux"
initrd = "/opt/k/initrd"
machine_type = "microvm"
accelerator = "tcg"
kernel_params = ["a=1", "b"]
memory_mib = 1024
virtiofsd = "virtiofsd"
debug = true

[agent]
transport = "vsock"
boot_timeout = "1m30s"

[runtime]
log_level = "debug"
enable_annotations = ["hypervisor.vcpus", "agent.debug"]
`))
	if err != nil {
		t.Fatal(err)
	}
	want := Default()
	want.Hypervisor = Hypervisor{
		Path: "/usr/bin/qemu-system-x86_64", Kernel: "/opt/k/vmlinux", Initrd: "/opt/k/initrd",
		MachineType: "microvm", Accelerator: "tcg", KernelParams: []string{"a=1", "b"},
		VCPUs: 1, MemoryMiB: 1024, Virtiofsd: "virtiofsd", Debug: true,
	}
	want.Agent.Transport = "vsock"
	want.Agent.BootTimeout = Duration{90 * time.Second}
	want.Runtime.LogLevel = "debug"
	want.Runtime.EnableAnnotations = []string{"hypervisor.vcpus", "agent.debug"}
	if !reflect.DeepEqual(c, want) {
		t.Fatalf("Parse = %+v\nwant    %+v", c, want)
	}
}

func TestParseRejects(t *testing.T) {
	tests := []struct {
		name   string
		doc    string
		inErrs []string
	}{
		{"unknown key in a section", "[hypervisor]\nmemory = 512\n", []string{"unknown key", "hypervisor.memory", "line 2"}},
		{"unknown section", "[network]\nmtu = 1500\n", []string{"network"}},
		{"unknown top-level key", "debug = true\n", []string{"unknown key debug"}},
		{"several unknown keys", "[agent]\nport = 1\n[runtime]\nroot = \"/x\"\n", []string{"unknown keys", "agent.port", "runtime.root"}},
		{"syntax error", "[hypervisor\n", []string{"line 1"}},
		{"string for a number", "[hypervisor]\nvcpus = \"two\"\n", []string{"hypervisor.vcpus"}},
		{"negative unsigned", "[hypervisor]\nmemory_mib = -1\n", []string{"negative"}},
		{"uint32 overflow", "[hypervisor]\nmemory_mib = 4294967296\n", []string{"4294967296"}},
		{"bad duration", "[agent]\nboot_timeout = \"soon\"\n", []string{"agent.boot_timeout", "soon"}},
		// go-toml does not add the key to an error from UnmarshalText for a
		// number, so the message can only tell what was wrong.
		{"duration without unit", "[agent]\nboot_timeout = 30\n", []string{`duration "30"`, `"30s"`}},
		{"string for a list", "[hypervisor]\nkernel_params = \"quiet\"\n", []string{"hypervisor.kernel_params"}},
		{"invalid value", "[hypervisor]\naccelerator = \"hvf\"\n", []string{"hypervisor.accelerator", "hvf"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Parse([]byte(tt.doc))
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("Parse(%q) = %+v, %v; want an error wrapping ErrInvalid", tt.doc, c, err)
			}
			for _, s := range tt.inErrs {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not contain %q", err, s)
				}
			}
		})
	}
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name   string
		modify func(*Config)
		inErr  string // "" means valid
	}{
		{"defaults", func(*Config) {}, ""},
		{"kvm", func(c *Config) { c.Hypervisor.Accelerator = "kvm" }, ""},
		{"tcg", func(c *Config) { c.Hypervisor.Accelerator = "tcg" }, ""},
		{"bad accelerator", func(c *Config) { c.Hypervisor.Accelerator = "hvf" }, "hypervisor.accelerator"},
		{"empty accelerator", func(c *Config) { c.Hypervisor.Accelerator = "" }, "hypervisor.accelerator"},
		{"virtio-serial", func(c *Config) { c.Agent.Transport = "virtio-serial" }, ""},
		{"vsock", func(c *Config) { c.Agent.Transport = "vsock" }, ""},
		{"bad transport", func(c *Config) { c.Agent.Transport = "tcp" }, "agent.transport"},
		{"q35", func(c *Config) { c.Hypervisor.MachineType = "q35" }, ""},
		{"microvm", func(c *Config) { c.Hypervisor.MachineType = "microvm" }, ""},
		{"bad machine type", func(c *Config) { c.Hypervisor.MachineType = "pc" }, "hypervisor.machine_type"},
		{"minimum memory", func(c *Config) { c.Hypervisor.MemoryMiB = 64 }, ""},
		{"too little memory", func(c *Config) { c.Hypervisor.MemoryMiB = 63 }, "hypervisor.memory_mib"},
		{"maximum vcpus", func(c *Config) { c.Hypervisor.VCPUs = 64 }, ""},
		{"zero vcpus", func(c *Config) { c.Hypervisor.VCPUs = 0 }, "hypervisor.vcpus"},
		{"too many vcpus", func(c *Config) { c.Hypervisor.VCPUs = 65 }, "hypervisor.vcpus"},
		{"log level debug", func(c *Config) { c.Runtime.LogLevel = "debug" }, ""},
		{"log level warn", func(c *Config) { c.Runtime.LogLevel = "warn" }, ""},
		{"log level error", func(c *Config) { c.Runtime.LogLevel = "error" }, ""},
		{"bad log level", func(c *Config) { c.Runtime.LogLevel = "trace" }, "runtime.log_level"},
		{"maximum hotplug slots", func(c *Config) { c.Hypervisor.HotplugSlots = 32 }, ""},
		{"too many hotplug slots", func(c *Config) { c.Hypervisor.HotplugSlots = 33 }, "hypervisor.hotplug_slots"},
		{"negative hotplug slots", func(c *Config) { c.Hypervisor.HotplugSlots = -1 }, "hypervisor.hotplug_slots"},
		{"max memory below the base", func(c *Config) { c.Hypervisor.MaxMemoryMiB = 128 }, "hypervisor.max_memory_mib"},
		{"max vcpus below the base", func(c *Config) { c.Hypervisor.VCPUs, c.Hypervisor.MaxVCPUs = 4, 2 }, "hypervisor.max_vcpus"},
		{"max vcpus too many", func(c *Config) { c.Hypervisor.MaxVCPUs = 65 }, "hypervisor.max_vcpus"},
		{"relative DAN directory", func(c *Config) { c.Runtime.DANConfDir = "dan" }, "runtime.dan_conf_dir"},
		{"DAN directory", func(c *Config) { c.Runtime.DANConfDir = "/etc/cocoon/dan" }, ""},
		{"macvtap model", func(c *Config) { c.Runtime.InternetworkingModel = "macvtap" }, ""},
		{"unknown model", func(c *Config) { c.Runtime.InternetworkingModel = "bridge" }, "runtime.internetworking_model"},
		{"hotplug on microvm", func(c *Config) { c.Hypervisor.MachineType = "microvm"; c.Hypervisor.HotplugSlots = 1 }, "microvm cannot hotplug"},
		{"kernel param with space", func(c *Config) { c.Hypervisor.KernelParams = []string{"a b"} }, "hypervisor.kernel_params"},
		{"empty kernel param", func(c *Config) { c.Hypervisor.KernelParams = []string{""} }, "hypervisor.kernel_params"},
		{"zero boot timeout", func(c *Config) { c.Agent.BootTimeout = Duration{} }, "agent.boot_timeout"},
		{"negative boot timeout", func(c *Config) { c.Agent.BootTimeout = Duration{-time.Second} }, "agent.boot_timeout"},
		{"qemu on PATH", func(c *Config) { c.Hypervisor.Path = "qemu-system-x86_64" }, ""},
		{"relative qemu path", func(c *Config) { c.Hypervisor.Path = "bin/qemu" }, "hypervisor.path"},
		{"relative virtiofsd path", func(c *Config) { c.Hypervisor.Virtiofsd = "./virtiofsd" }, "hypervisor.virtiofsd"},
		{"relative kernel", func(c *Config) { c.Hypervisor.Kernel = "vmlinux" }, "hypervisor.kernel"},
		{"relative initrd", func(c *Config) { c.Hypervisor.Initrd = "initrd" }, "hypervisor.initrd"},
		{"empty state dir", func(c *Config) { c.Runtime.StateDir = "" }, "runtime.state_dir"},
		{"relative data dir", func(c *Config) { c.Runtime.DataDir = "data" }, "runtime.data_dir"},
		{"factory template allowed", func(c *Config) { c.Factory.EnableTemplate = true }, ""},
		{"enable every overridable key", func(c *Config) {
			c.Runtime.EnableAnnotations = []string{"hypervisor.machine_type", "hypervisor.accelerator",
				"hypervisor.kernel_params", "hypervisor.vcpus", "hypervisor.memory_mib",
				"hypervisor.hotplug_slots", "hypervisor.debug", "agent.boot_timeout", "agent.debug"}
		}, ""},
		{"enable unknown key", func(c *Config) { c.Runtime.EnableAnnotations = []string{"hypervisor.memory"} }, "not a configuration key"},
		{"enable with prefix", func(c *Config) {
			c.Runtime.EnableAnnotations = []string{"io.cocoon.config.hypervisor.vcpus"}
		}, "without the"},
	}
	// Listing a key that names a host path, or a runtime or factory key,
	// is refused.
	for _, k := range []string{"hypervisor.path", "hypervisor.kernel", "hypervisor.initrd", "hypervisor.virtiofsd",
		"runtime.state_dir", "runtime.data_dir", "runtime.log_level", "runtime.enable_annotations",
		"factory.enable_template",
		"factory.template_limit", "factory.memory_mib", "agent.transport"} {
		tests = append(tests, struct {
			name   string
			modify func(*Config)
			inErr  string
		}{"enable " + k, func(c *Config) { c.Runtime.EnableAnnotations = []string{"agent.debug", k} }, k + "\" cannot be set by an annotation"})
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := Default()
			tt.modify(c)
			err := c.Validate()
			if tt.inErr == "" {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("Validate = %v, want an error wrapping ErrInvalid", err)
			}
			if !strings.Contains(err.Error(), tt.inErr) {
				t.Fatalf("error %q does not contain %q", err, tt.inErr)
			}
		})
	}
}

func TestValidateReportsEveryProblem(t *testing.T) {
	c := Default()
	c.Hypervisor.VCPUs = 0
	c.Runtime.LogLevel = "loud"
	err := c.Validate()
	for _, s := range []string{"hypervisor.vcpus", "runtime.log_level"} {
		if err == nil || !strings.Contains(err.Error(), s) {
			t.Errorf("Validate = %v, want it to mention %s", err, s)
		}
	}
}

// The cache of booted VMs does not exist: its key is unknown.
func TestFactoryCacheKeyUnknown(t *testing.T) {
	for _, doc := range []string{
		"[factory]\nvm_cache_number = 3\n",
	} {
		_, err := Parse([]byte(doc))
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "unknown key factory.vm_cache_number") {
			t.Errorf("Parse(%q) error = %v, want the key unknown", doc, err)
		}
	}
}

// withEnabled returns the defaults with keys enabled for annotations.
func withEnabled(keys ...string) *Config {
	c := Default()
	c.Runtime.EnableAnnotations = keys
	return c
}

func TestWithAnnotations(t *testing.T) {
	const p = AnnotationPrefix
	tests := []struct {
		name    string
		cfg     *Config
		ann     map[string]string
		check   func(*Config) bool // for success
		wantErr error
		inErr   string
	}{
		{
			name:  "nil annotations",
			cfg:   Default(),
			check: func(c *Config) bool { return reflect.DeepEqual(c, Default()) },
		},
		{
			name: "annotations without the prefix are ignored",
			cfg:  Default(),
			ann: map[string]string{"io.kubernetes.cri.sandbox-id": "x", "hypervisor.memory_mib": "1",
				"io.cocoon.confighypervisor.vcpus": "2"},
			check: func(c *Config) bool { return reflect.DeepEqual(c, Default()) },
		},
		{
			name:  "memory allowed",
			cfg:   withEnabled("hypervisor.memory_mib"),
			ann:   map[string]string{p + "hypervisor.memory_mib": "512"},
			check: func(c *Config) bool { return c.Hypervisor.MemoryMiB == 512 },
		},
		{
			name: "every overridable key",
			cfg: withEnabled("hypervisor.machine_type", "hypervisor.accelerator", "hypervisor.kernel_params",
				"hypervisor.vcpus", "hypervisor.memory_mib", "hypervisor.hotplug_slots", "hypervisor.debug",
				"agent.boot_timeout", "agent.debug"),
			ann: map[string]string{
				p + "hypervisor.machine_type":  "q35",
				p + "hypervisor.accelerator":   "tcg",
				p + "hypervisor.kernel_params": " a=1  b ",
				p + "hypervisor.vcpus":         "4",
				p + "hypervisor.memory_mib":    "2048",
				p + "hypervisor.hotplug_slots": "8",
				p + "hypervisor.debug":         "true",
				p + "agent.boot_timeout":       "2m",
				p + "agent.debug":              "1",
			},
			check: func(c *Config) bool {
				h := c.Hypervisor
				return h.MachineType == "q35" && h.Accelerator == "tcg" &&
					slices.Equal(h.KernelParams, []string{"a=1", "b"}) && h.VCPUs == 4 &&
					h.MemoryMiB == 2048 && h.HotplugSlots == 8 && h.Debug &&
					c.Agent.BootTimeout.Duration == 2*time.Minute && c.Agent.Debug
			},
		},
		{
			name: "kernel params are appended",
			cfg: func() *Config {
				c := withEnabled("hypervisor.kernel_params")
				c.Hypervisor.KernelParams = []string{"quiet"}
				return c
			}(),
			ann:   map[string]string{p + "hypervisor.kernel_params": "x=1 y=2"},
			check: func(c *Config) bool { return slices.Equal(c.Hypervisor.KernelParams, []string{"quiet", "x=1", "y=2"}) },
		},
		{
			name:    "not enabled",
			cfg:     withEnabled("hypervisor.vcpus"),
			ann:     map[string]string{p + "hypervisor.memory_mib": "512"},
			wantErr: ErrAnnotationNotAllowed,
			inErr:   p + "hypervisor.memory_mib",
		},
		{
			name:    "nothing enabled",
			cfg:     Default(),
			ann:     map[string]string{p + "agent.debug": "true"},
			wantErr: ErrAnnotationNotAllowed,
			inErr:   p + "agent.debug",
		},
		{
			name:    "not overridable and not enabled",
			cfg:     Default(),
			ann:     map[string]string{p + "agent.transport": "vsock"},
			wantErr: ErrAnnotationNotAllowed,
			inErr:   p + "agent.transport",
		},
		{
			name:    "unknown key",
			cfg:     withEnabled("hypervisor.memory_mib"),
			ann:     map[string]string{p + "hypervisor.memory": "512"},
			wantErr: ErrInvalid,
			inErr:   p + "hypervisor.memory",
		},
		{
			name:    "unknown section",
			cfg:     Default(),
			ann:     map[string]string{p + "network.mtu": "9000"},
			wantErr: ErrInvalid,
			inErr:   p + "network.mtu",
		},
		{
			name:    "prefix alone",
			cfg:     Default(),
			ann:     map[string]string{p: "x"},
			wantErr: ErrInvalid,
		},
		{
			name:    "bad number",
			cfg:     withEnabled("hypervisor.vcpus"),
			ann:     map[string]string{p + "hypervisor.vcpus": "two"},
			wantErr: ErrInvalid,
			inErr:   p + "hypervisor.vcpus",
		},
		{
			name:    "negative number",
			cfg:     withEnabled("hypervisor.memory_mib"),
			ann:     map[string]string{p + "hypervisor.memory_mib": "-512"},
			wantErr: ErrInvalid,
			inErr:   p + "hypervisor.memory_mib",
		},
		{
			name:    "bad bool",
			cfg:     withEnabled("hypervisor.debug"),
			ann:     map[string]string{p + "hypervisor.debug": "yes"},
			wantErr: ErrInvalid,
			inErr:   p + "hypervisor.debug",
		},
		{
			name:    "bad duration",
			cfg:     withEnabled("agent.boot_timeout"),
			ann:     map[string]string{p + "agent.boot_timeout": "30"},
			wantErr: ErrInvalid,
			inErr:   p + "agent.boot_timeout",
		},
		{
			name:    "value out of range",
			cfg:     withEnabled("hypervisor.vcpus"),
			ann:     map[string]string{p + "hypervisor.vcpus": "65"},
			wantErr: ErrInvalid,
			inErr:   p + "hypervisor.vcpus",
		},
		{
			name:    "memory too small",
			cfg:     withEnabled("hypervisor.memory_mib"),
			ann:     map[string]string{p + "hypervisor.memory_mib": "16"},
			wantErr: ErrInvalid,
			inErr:   "hypervisor.memory_mib",
		},
		{
			name:    "bad accelerator",
			cfg:     withEnabled("hypervisor.accelerator"),
			ann:     map[string]string{p + "hypervisor.accelerator": "hvf"},
			wantErr: ErrInvalid,
			inErr:   "hypervisor.accelerator",
		},
		{
			name:    "kernel params with white space only split on spaces",
			cfg:     withEnabled("hypervisor.kernel_params"),
			ann:     map[string]string{p + "hypervisor.kernel_params": "a=1\tb=2"},
			check:   func(c *Config) bool { return slices.Equal(c.Hypervisor.KernelParams, []string{"a=1", "b=2"}) },
			wantErr: nil,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.cfg.Validate(); err != nil {
				t.Fatalf("test config invalid: %v", err)
			}
			got, err := tt.cfg.WithAnnotations(tt.ann)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("WithAnnotations(%v) = %+v, %v; want an error wrapping %v", tt.ann, got, err, tt.wantErr)
				}
				other := ErrInvalid
				if tt.wantErr == ErrInvalid {
					other = ErrAnnotationNotAllowed
				}
				if errors.Is(err, other) {
					t.Fatalf("error %v also wraps %v", err, other)
				}
				if !strings.Contains(err.Error(), tt.inErr) {
					t.Fatalf("error %q does not contain %q", err, tt.inErr)
				}
				if got != nil {
					t.Fatal("WithAnnotations returned a config with an error")
				}
				return
			}
			if err != nil {
				t.Fatalf("WithAnnotations(%v): %v", tt.ann, err)
			}
			if !tt.check(got) {
				t.Fatalf("WithAnnotations(%v) = %+v", tt.ann, got)
			}
		})
	}
}

// TestAnnotationsRefusePathKeys checks that keys naming host binaries or
// paths, and runtime and factory keys, are refused even when a config
// (built in code, bypassing Validate) lists them.
func TestAnnotationsRefusePathKeys(t *testing.T) {
	keys := []string{"hypervisor.path", "hypervisor.kernel", "hypervisor.initrd", "hypervisor.virtiofsd",
		"runtime.state_dir", "runtime.data_dir", "runtime.log_level", "runtime.enable_annotations",
		"factory.enable_template", "factory.template_limit"}
	for _, k := range keys {
		t.Run(k, func(t *testing.T) {
			c := withEnabled(keys...)
			name := AnnotationPrefix + k
			_, err := c.WithAnnotations(map[string]string{name: "/tmp/evil"})
			if !errors.Is(err, ErrAnnotationNotAllowed) {
				t.Fatalf("annotation %s: error = %v, want ErrAnnotationNotAllowed", name, err)
			}
			if !strings.Contains(err.Error(), name) {
				t.Fatalf("error %q does not name %s", err, name)
			}
		})
	}
}

func TestOverridableKeys(t *testing.T) {
	want := []string{"hypervisor.machine_type", "hypervisor.accelerator", "hypervisor.kernel_params",
		"hypervisor.vcpus", "hypervisor.memory_mib", "hypervisor.fixed_size", "hypervisor.hotplug_slots", "hypervisor.debug",
		"agent.boot_timeout", "agent.debug"}
	var got []string
	for _, k := range fileKeys() {
		if overridable(k) {
			got = append(got, k)
		}
	}
	if !slices.Equal(got, want) {
		t.Fatalf("overridable file keys = %v, want %v", got, want)
	}
	for _, k := range want {
		if !isFileKey(k) {
			t.Errorf("overridable key %s is not a file key", k)
		}
	}
	if n := len(fileKeys()); n != 14+3+3+6 {
		t.Errorf("fileKeys() has %d keys, want 26: %v", n, fileKeys())
	}
}

func TestWithAnnotationsDoesNotModifyReceiver(t *testing.T) {
	c := withEnabled("hypervisor.kernel_params", "hypervisor.vcpus", "agent.boot_timeout")
	// Spare capacity: an append that aliased the receiver's array would
	// show up in a second result.
	c.Hypervisor.KernelParams = make([]string, 1, 10)
	c.Hypervisor.KernelParams[0] = "quiet"
	before := c.clone()

	a, err := c.WithAnnotations(map[string]string{
		AnnotationPrefix + "hypervisor.kernel_params": "a=1",
		AnnotationPrefix + "hypervisor.vcpus":         "2",
		AnnotationPrefix + "agent.boot_timeout":       "5s",
	})
	if err != nil {
		t.Fatal(err)
	}
	b, err := c.WithAnnotations(map[string]string{AnnotationPrefix + "hypervisor.kernel_params": "b=2"})
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(c, before) {
		t.Fatalf("receiver modified: %+v, was %+v", c, before)
	}
	if !slices.Equal(a.Hypervisor.KernelParams, []string{"quiet", "a=1"}) ||
		!slices.Equal(b.Hypervisor.KernelParams, []string{"quiet", "b=2"}) {
		t.Fatalf("results share kernel params: %v and %v", a.Hypervisor.KernelParams, b.Hypervisor.KernelParams)
	}
	a.Runtime.EnableAnnotations[0] = "changed"
	if c.Runtime.EnableAnnotations[0] != "hypervisor.kernel_params" {
		t.Fatal("result shares enable_annotations with the receiver")
	}
	if _, err := c.WithAnnotations(map[string]string{AnnotationPrefix + "hypervisor.vcpus": "100"}); err == nil {
		t.Fatal("vcpus=100 accepted")
	}
	if !reflect.DeepEqual(c, before) {
		t.Fatal("receiver modified by a failed WithAnnotations")
	}
}

func TestVMConfig(t *testing.T) {
	tests := []struct {
		name   string
		modify func(*Config)
		want   cocoon.VMConfig
	}{
		{
			name:   "defaults",
			modify: func(*Config) {},
			want: cocoon.VMConfig{VCPUs: 1, MemoryMiB: 256, Accelerator: hypervisor.AccelAuto,
				AgentTransport: hypervisor.TransportAuto},
		},
		{
			name: "every field",
			modify: func(c *Config) {
				c.Hypervisor = Hypervisor{Path: "/q", Kernel: "/k", Initrd: "/i", MachineType: "microvm",
					Accelerator: "kvm", KernelParams: []string{"x=1"}, VCPUs: 2, MemoryMiB: 512,
					HotplugSlots: 0, Virtiofsd: "/v", Debug: true}
				c.Agent.Transport = "vsock"
				c.Agent.Debug = true
				c.Runtime.StateDir = "/srv/state"
			},
			want: cocoon.VMConfig{Path: "/q", Kernel: "/k", Initrd: "/i", MachineType: "microvm",
				Accelerator: hypervisor.AccelKVM, KernelParams: []string{"x=1"}, VCPUs: 2, MemoryMiB: 512,
				AgentTransport: hypervisor.TransportVsock, Debug: true},
		},
		{
			name: "hotplug and serial",
			modify: func(c *Config) {
				c.Hypervisor.MachineType = "q35"
				c.Hypervisor.HotplugSlots = 4
				c.Hypervisor.Accelerator = "tcg"
				c.Agent.Transport = "virtio-serial"
			},
			want: cocoon.VMConfig{MachineType: "q35", HotplugSlots: 4, VCPUs: 1, MemoryMiB: 256,
				Accelerator: hypervisor.AccelTCG, AgentTransport: hypervisor.TransportSerial},
		},
		{
			name: "agent debug alone",
			modify: func(c *Config) {
				c.Hypervisor.KernelParams = []string{"x=1"}
				c.Agent.Debug = true
			},
			want: cocoon.VMConfig{KernelParams: []string{"x=1", "cocoon.debug=1"}, VCPUs: 1, MemoryMiB: 256,
				Accelerator: hypervisor.AccelAuto, AgentTransport: hypervisor.TransportAuto},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := Default()
			tt.modify(c)
			if err := c.Validate(); err != nil {
				t.Fatalf("test config invalid: %v", err)
			}
			got := c.VMConfig()
			if !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("VMConfig() = %+v\nwant %+v", got, tt.want)
			}
			if len(got.KernelParams) > 0 {
				got.KernelParams[0] = "changed"
				if c.Hypervisor.KernelParams[0] == "changed" {
					t.Fatal("VMConfig shares kernel params with the config")
				}
			}
		})
	}
}

func TestDuration(t *testing.T) {
	tests := []struct {
		text    string
		want    time.Duration
		wantErr bool
	}{
		{"30s", 30 * time.Second, false},
		{"1m30s", 90 * time.Second, false},
		{"250ms", 250 * time.Millisecond, false},
		{"2h", 2 * time.Hour, false},
		{"0", 0, false},
		{"", 0, true},
		{"30", 0, true},
		{"soon", 0, true},
		{"1d", 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.text, func(t *testing.T) {
			var d Duration
			err := d.UnmarshalText([]byte(tt.text))
			if tt.wantErr {
				if err == nil {
					t.Fatalf("UnmarshalText(%q) = %v, want an error", tt.text, d)
				}
				return
			}
			if err != nil {
				t.Fatalf("UnmarshalText(%q): %v", tt.text, err)
			}
			if d.Duration != tt.want {
				t.Fatalf("UnmarshalText(%q) = %v, want %v", tt.text, d.Duration, tt.want)
			}
			b, err := d.MarshalText()
			if err != nil {
				t.Fatal(err)
			}
			var back Duration
			if err := back.UnmarshalText(b); err != nil || back != d {
				t.Fatalf("round trip of %q through %q = %v, %v", tt.text, b, back, err)
			}
		})
	}
}

func TestMarshalRoundTrip(t *testing.T) {
	c := Default()
	c.Agent.BootTimeout = Duration{90 * time.Second}
	c.Hypervisor.KernelParams = []string{"x=1"}
	b, err := toml.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), "boot_timeout = '1m30s'") {
		t.Errorf("marshalled boot_timeout not a duration string:\n%s", b)
	}
	back, err := Parse(b)
	if err != nil {
		t.Fatalf("Parse(Marshal(c)): %v\n%s", err, b)
	}
	if !reflect.DeepEqual(back, c) {
		t.Fatalf("round trip = %+v, want %+v", back, c)
	}
}
