package qemu_test

import (
	"context"
	"testing"

	"github.com/cocoon-runtime/cocoon/hypervisor"
	"github.com/cocoon-runtime/cocoon/hypervisor/hvtest"
	"github.com/cocoon-runtime/cocoon/hypervisor/qemu"
	"github.com/cocoon-runtime/cocoon/internal/testutil"
)

// The QEMU driver passes the drivers' conformance suite.
func TestConformance(t *testing.T) {
	opts := qemu.Options{CacheDir: testutil.NeedVM(t).CacheDir}
	hvtest.Run(t, hvtest.Harness{
		New: func() hypervisor.Hypervisor { return qemu.New(opts) },
		Open: func(ctx context.Context, dir string) (hypervisor.Hypervisor, error) {
			return qemu.Open(ctx, dir, opts)
		},
		// A state directory of each test's own.
		Config: func(t *testing.T) hypervisor.Config { return testutil.NeedVM(t).Config() },
	})
}
