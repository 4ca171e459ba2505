package config

import (
	"fmt"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"
)

// AnnotationPrefix starts every pod annotation that overrides a
// configuration key: io.cocoon.config.<section>.<key>, with the key's name
// in the file, such as io.cocoon.config.hypervisor.memory_mib.
const AnnotationPrefix = "io.cocoon.config."

// WithAnnotations returns a copy of c with the overrides in ann applied,
// validated; c itself is not modified. Annotations without AnnotationPrefix
// are ignored.
//
// A pod may override only the keys listed in runtime.enable_annotations,
// and only among hypervisor.machine_type, accelerator, kernel_params,
// vcpus, memory_mib, hotplug_slots and debug, and agent.boot_timeout and
// debug. Keys that name host binaries or paths, the runtime keys and the
// factory keys are never overridable, whatever the list says. A
// hypervisor.kernel_params annotation is a space-separated list appended to
// the configured parameters.
//
// An annotation for a key that is not overridable or not enabled gives an
// error wrapping ErrAnnotationNotAllowed; an unknown key or a bad value, one
// wrapping ErrInvalid. Either error names the annotation. Annotations are
// applied in the order of their names and the first error is returned.
//
// Kernel parameters set by an annotation turn templates off for the pod
// (factory.enable_template): they take any value, and each would be a
// template of its own. Keys of few values, such as memory_mib and vcpus,
// keep templates, within factory.template_limit.
func (c *Config) WithAnnotations(ann map[string]string) (*Config, error) {
	n := c.clone()
	names := make([]string, 0, len(ann))
	for name := range ann {
		if strings.HasPrefix(name, AnnotationPrefix) {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	for _, name := range names {
		key := strings.TrimPrefix(name, AnnotationPrefix)
		switch {
		case !isFileKey(key):
			return nil, fmt.Errorf("%w: annotation %s: %q is not a configuration key", ErrInvalid, name, key)
		case !overridable(key):
			return nil, fmt.Errorf("%w: annotation %s: %s cannot be set by an annotation", ErrAnnotationNotAllowed, name, key)
		case !slices.Contains(c.Runtime.EnableAnnotations, key):
			return nil, fmt.Errorf("%w: annotation %s: %s is not listed in runtime.enable_annotations", ErrAnnotationNotAllowed, name, key)
		}
		if err := n.set(key, ann[name]); err != nil {
			return nil, fmt.Errorf("%w: annotation %s=%q: %w", ErrInvalid, name, ann[name], err)
		}
	}
	if !slices.Equal(n.Hypervisor.KernelParams, c.Hypervisor.KernelParams) {
		n.Factory.EnableTemplate = false
	}
	if err := n.Validate(); err != nil {
		applied := make([]string, len(names))
		for i, name := range names {
			applied[i] = fmt.Sprintf("%s=%q", name, ann[name])
		}
		return nil, fmt.Errorf("with annotations %s: %w", strings.Join(applied, ", "), err)
	}
	return n, nil
}

// overridable reports whether key ("<section>.<key>") may ever be set by
// a pod annotation. Keys naming host binaries or paths never may.
func overridable(key string) bool {
	switch key {
	case "hypervisor.machine_type", "hypervisor.accelerator", "hypervisor.kernel_params",
		"hypervisor.vcpus", "hypervisor.memory_mib", "hypervisor.fixed_size", "hypervisor.hotplug_slots", "hypervisor.debug",
		"agent.boot_timeout", "agent.debug":
		return true
	}
	return false
}

// set applies the annotation value v to the overridable key.
func (c *Config) set(key, v string) error {
	var err error
	switch key {
	case "hypervisor.machine_type":
		c.Hypervisor.MachineType = v
	case "hypervisor.accelerator":
		c.Hypervisor.Accelerator = v
	case "hypervisor.kernel_params":
		c.Hypervisor.KernelParams = append(c.Hypervisor.KernelParams, strings.Fields(v)...)
	case "hypervisor.vcpus":
		c.Hypervisor.VCPUs, err = parseUint32(v)
	case "hypervisor.memory_mib":
		c.Hypervisor.MemoryMiB, err = parseUint32(v)
	case "hypervisor.hotplug_slots":
		c.Hypervisor.HotplugSlots, err = strconv.Atoi(v)
	case "hypervisor.debug":
		c.Hypervisor.Debug, err = strconv.ParseBool(v)
	case "agent.boot_timeout":
		c.Agent.BootTimeout.Duration, err = time.ParseDuration(v)
	case "agent.debug":
		c.Agent.Debug, err = strconv.ParseBool(v)
	default:
		// overridable and set disagree: a bug in this package.
		panic("config: no setter for overridable key " + key)
	}
	return err
}

func parseUint32(v string) (uint32, error) {
	n, err := strconv.ParseUint(v, 10, 32)
	return uint32(n), err
}

// isFileKey reports whether key ("<section>.<key>") names a key of the
// configuration file.
func isFileKey(key string) bool {
	return slices.Contains(fileKeys(), key)
}

// fileKeys lists every key of the configuration file as "<section>.<key>",
// from the toml tags of Config.
func fileKeys() []string {
	var keys []string
	t := reflect.TypeFor[Config]()
	for i := range t.NumField() {
		sf := t.Field(i)
		section := tomlName(sf)
		st := sf.Type
		for j := range st.NumField() {
			keys = append(keys, section+"."+tomlName(st.Field(j)))
		}
	}
	return keys
}

func tomlName(f reflect.StructField) string {
	name, _, _ := strings.Cut(f.Tag.Get("toml"), ",")
	return name
}
