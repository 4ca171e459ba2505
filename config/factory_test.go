package config

import (
	"errors"
	"strings"
	"testing"
)

// hypervisor.memory_mib has a maximum: a larger value (in the file or an
// annotation) is refused with an error naming the key and the limit.
func TestMemoryCapped(t *testing.T) {
	_, err := Parse([]byte("[hypervisor]\nmemory_mib = 1000000\n"))
	if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "hypervisor.memory_mib") || !strings.Contains(err.Error(), "maximum") {
		t.Fatalf("Parse(memory_mib = 1000000) error = %v, want one naming hypervisor.memory_mib and its maximum", err)
	}
	c := withEnabled("hypervisor.memory_mib")
	if _, err := c.WithAnnotations(map[string]string{AnnotationPrefix + "hypervisor.memory_mib": "1000000"}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("annotation memory_mib=1000000: error = %v, want ErrInvalid", err)
	}
}

// The factory's template limit and RAM tmpfs size are keys of the file.
func TestFactoryLimitsParse(t *testing.T) {
	c, err := Parse([]byte("[factory]\ntemplate_limit = 2\nmemory_mib = 2048\n"))
	if err != nil {
		t.Fatal(err)
	}
	if c.Factory.TemplateLimit != 2 || c.Factory.MemoryMiB != 2048 {
		t.Fatalf("template_limit, memory_mib = %d, %d, want 2, 2048", c.Factory.TemplateLimit, c.Factory.MemoryMiB)
	}
	for doc, inErr := range map[string]string{
		"[factory]\ntemplate_limit = 0\n":                                 "factory.template_limit",
		"[factory]\ntemplate_limit = 1000\n":                              "factory.template_limit",
		"[factory]\nmemory_mib = 16\n":                                    "factory.memory_mib",
		"[hypervisor]\nmemory_mib = 4096\n[factory]\nmemory_mib = 2048\n": "factory.memory_mib",
	} {
		_, err := Parse([]byte(doc))
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), inErr) {
			t.Errorf("Parse(%q) error = %v, want one naming %s", doc, err, inErr)
		}
	}
	// Without templates the tmpfs is not used: its size does not bound
	// the VM's memory.
	if _, err := Parse([]byte("[hypervisor]\nmemory_mib = 4096\n[factory]\nenable_template = false\nmemory_mib = 2048\n")); err != nil {
		t.Errorf("memory over the factory's tmpfs without templates: %v", err)
	}
}

// A pod whose kernel parameters come from an annotation boots without a
// template: every distinct value would be a template of its own. Keys of
// few values (memory, vCPUs) keep templates.
func TestKernelParamsAnnotationDisablesTemplates(t *testing.T) {
	c := withEnabled("hypervisor.kernel_params", "hypervisor.memory_mib")
	n, err := c.WithAnnotations(map[string]string{AnnotationPrefix + "hypervisor.kernel_params": "a=1"})
	if err != nil {
		t.Fatal(err)
	}
	if n.Factory.EnableTemplate {
		t.Error("a pod with annotated kernel parameters still uses templates")
	}
	if !c.Factory.EnableTemplate {
		t.Error("WithAnnotations changed the receiver")
	}
	n, err = c.WithAnnotations(map[string]string{AnnotationPrefix + "hypervisor.memory_mib": "512", AnnotationPrefix + "hypervisor.kernel_params": ""})
	if err != nil {
		t.Fatal(err)
	}
	if !n.Factory.EnableTemplate {
		t.Error("a pod with annotated memory (and no kernel parameters) lost templates")
	}
}
