package drivers_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/cocoon-runtime/cocoon/hypervisor"
	"github.com/cocoon-runtime/cocoon/hypervisor/drivers"
)

func TestLookup(t *testing.T) {
	for _, name := range []string{"", "qemu"} {
		d, err := drivers.Lookup(name)
		if err != nil || d.Name != "qemu" || d.New == nil || d.Open == nil || d.Remove == nil || d.ResolveAccel == nil || d.Binary == "" {
			t.Errorf("Lookup(%q) = %+v, %v", name, d, err)
		}
	}
	var ce *hypervisor.ConfigError
	if _, err := drivers.Lookup("firecracker"); !errors.As(err, &ce) {
		t.Errorf("Lookup of an unknown driver: %v, want a ConfigError", err)
	}
}

// The QEMU driver's accelerator choice as the table hands it out: forced
// TCG is taken as is, and auto without a guest kernel picks TCG without
// probing, saying so.
func TestResolveAccel(t *testing.T) {
	d, _ := drivers.Lookup("qemu")
	ctx := context.Background()
	c, err := d.ResolveAccel(ctx, hypervisor.AccelTCG, hypervisor.AccelProbe{})
	if err != nil || c.Accelerator != hypervisor.AccelTCG || c.NoKernel {
		t.Errorf("forced tcg: %+v, %v", c, err)
	}
	c, err = d.ResolveAccel(ctx, hypervisor.AccelAuto, hypervisor.AccelProbe{Kernel: filepath.Join(t.TempDir(), "missing")})
	if err != nil || c.Accelerator != hypervisor.AccelTCG || c.Reason == "" {
		t.Errorf("auto without a kernel: %+v, %v", c, err)
	}
	if _, kvm := os.Stat("/dev/kvm"); kvm == nil && !c.NoKernel {
		t.Errorf("auto without a kernel on a host with /dev/kvm: %+v, want NoKernel", c)
	}
}
