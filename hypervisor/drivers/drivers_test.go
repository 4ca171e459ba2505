package drivers_test

import (
	"errors"
	"testing"

	"github.com/cocoon-runtime/cocoon/hypervisor"
	"github.com/cocoon-runtime/cocoon/hypervisor/drivers"
)

func TestLookup(t *testing.T) {
	for _, name := range []string{"", "qemu"} {
		d, err := drivers.Lookup(name)
		if err != nil || d.Name != "qemu" || d.New == nil || d.Open == nil || d.Remove == nil || d.Binary == "" {
			t.Errorf("Lookup(%q) = %+v, %v", name, d, err)
		}
	}
	var ce *hypervisor.ConfigError
	if _, err := drivers.Lookup("firecracker"); !errors.As(err, &ce) {
		t.Errorf("Lookup of an unknown driver: %v, want a ConfigError", err)
	}
}
