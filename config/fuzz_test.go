package config

import (
	"errors"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/pelletier/go-toml/v2"
)

// FuzzParse feeds arbitrary bytes to Parse, as a configuration file: it
// must never panic, refuse with an error wrapping ErrInvalid, and what it
// accepts must be valid and survive a marshal and parse unchanged.
func FuzzParse(f *testing.F) {
	f.Add(Example())
	f.Add([]byte("[hypervisor]\nvcpus = 2\nmemory_mib = 512\nkernel_params = ['a=1', 'b']\n[agent]\nboot_timeout = '1m30s'\n[runtime]\nenable_annotations = ['hypervisor.vcpus']\n"))
	f.Add([]byte("[hypervisor]\nvcpus = 0\nmemory_mib = -1\nhotplug_slots = 99\nmachine_type = 'microvm'\n"))
	f.Add([]byte("[agent]\nboot_timeout = 'soon'\n[factory]\nvm_cache_number = 1\n"))
	f.Add([]byte("[nosuch]\nkey = 1\n[hypervisor]\nnosuch = 2\n"))
	f.Add([]byte("[runtime]\nstate_dir = 'relative'\nenable_annotations = ['hypervisor.path', 'io.cocoon.config.agent.debug']\n"))
	f.Add([]byte("hypervisor = 3\n[[agent]]\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse(data)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("Parse error %v does not wrap ErrInvalid", err)
			}
			return
		}
		if err := c.Validate(); err != nil {
			t.Fatalf("Parse accepted an invalid configuration: %v", err)
		}
		b, err := toml.Marshal(c)
		if err != nil {
			t.Fatalf("marshal %+v: %v", c, err)
		}
		back, err := Parse(b)
		if err != nil {
			t.Fatalf("Parse(Marshal(c)): %v\n%s", err, b)
		}
		if !reflect.DeepEqual(back, c) {
			t.Fatalf("round trip:\n%+v\nbecame\n%+v", c, back)
		}
	})
}

// overridableKeys lists the keys WithAnnotations may set.
func overridableKeys() []string {
	var keys []string
	for _, k := range fileKeys() {
		if overridable(k) {
			keys = append(keys, k)
		}
	}
	return keys
}

// FuzzWithAnnotations applies two arbitrary pod annotations to a
// configuration that enables some keys: the result is valid, the receiver
// untouched, only the enabled keys that were annotated change (and, with
// other kernel parameters, templates are turned off), and every
// refusal wraps ErrInvalid or ErrAnnotationNotAllowed.
func FuzzWithAnnotations(f *testing.F) {
	f.Add("io.cocoon.config.hypervisor.vcpus", "4", "io.cocoon.config.hypervisor.kernel_params", "quiet  x=1\t", uint16(0xffff))
	f.Add("io.cocoon.config.hypervisor.memory_mib", "63", "io.cocoon.config.agent.boot_timeout", "-1s", uint16(0xffff))
	f.Add("io.cocoon.config.hypervisor.path", "/bin/sh", "io.cocoon.config.runtime.state_dir", "/tmp", uint16(0xffff))
	f.Add("io.cocoon.config.hypervisor.debug", "true", "other.annotation", "x", uint16(1))
	f.Add("io.cocoon.config.hypervisor.hotplug_slots", "8", "io.cocoon.config.hypervisor.machine_type", "microvm", uint16(0xffff))
	f.Add("io.cocoon.config.nosuch.key", "1", "io.cocoon.config.", "", uint16(0))
	f.Fuzz(func(t *testing.T, k1, v1, k2, v2 string, enabled uint16) {
		c := Default()
		keys := overridableKeys()
		for i, k := range keys {
			if enabled&(1<<i) != 0 {
				c.Runtime.EnableAnnotations = append(c.Runtime.EnableAnnotations, k)
			}
		}
		before := c.clone()
		ann := map[string]string{k1: v1, k2: v2}
		n, err := c.WithAnnotations(ann)
		if !reflect.DeepEqual(c, before) {
			t.Fatalf("WithAnnotations modified its receiver: %+v, was %+v", c, before)
		}
		if err != nil {
			if !errors.Is(err, ErrInvalid) && !errors.Is(err, ErrAnnotationNotAllowed) {
				t.Fatalf("error %v wraps neither ErrInvalid nor ErrAnnotationNotAllowed", err)
			}
			return
		}
		if err := n.Validate(); err != nil {
			t.Fatalf("WithAnnotations(%q) gave an invalid configuration: %v", ann, err)
		}
		// Put back every key that was annotated and enabled: what is left
		// must be the receiver.
		restored := n.clone()
		for name := range ann {
			key, ok := strings.CutPrefix(name, AnnotationPrefix)
			if !ok {
				continue
			}
			if !slices.Contains(c.Runtime.EnableAnnotations, key) {
				t.Fatalf("annotation %s for a key not enabled was accepted", name)
			}
			restore(restored, c, key)
		}
		if !reflect.DeepEqual(restored, c) {
			t.Fatalf("WithAnnotations(%q) changed keys it was not given:\n%+v\nfrom\n%+v", ann, n, c)
		}
	})
}

// restore sets key of dst, an overridable key, back to its value in src.
func restore(dst, src *Config, key string) {
	switch key {
	case "hypervisor.machine_type":
		dst.Hypervisor.MachineType = src.Hypervisor.MachineType
	case "hypervisor.accelerator":
		dst.Hypervisor.Accelerator = src.Hypervisor.Accelerator
	case "hypervisor.kernel_params":
		// Free-form kernel parameters other than the file's turn templates
		// off for the pod (one template per value would be unbounded).
		if !slices.Equal(dst.Hypervisor.KernelParams, src.Hypervisor.KernelParams) {
			dst.Factory.EnableTemplate = src.Factory.EnableTemplate
		}
		dst.Hypervisor.KernelParams = cloneStrings(src.Hypervisor.KernelParams)
	case "hypervisor.vcpus":
		dst.Hypervisor.VCPUs = src.Hypervisor.VCPUs
	case "hypervisor.memory_mib":
		dst.Hypervisor.MemoryMiB = src.Hypervisor.MemoryMiB
	case "hypervisor.hotplug_slots":
		dst.Hypervisor.HotplugSlots = src.Hypervisor.HotplugSlots
	case "hypervisor.debug":
		dst.Hypervisor.Debug = src.Hypervisor.Debug
	case "agent.boot_timeout":
		dst.Agent.BootTimeout = src.Agent.BootTimeout
	case "agent.debug":
		dst.Agent.Debug = src.Agent.Debug
	}
}
