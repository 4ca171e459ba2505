// Package drivers is the one place that knows which hypervisor drivers
// exist: a table from a driver's name to its constructors. The core (vm,
// the factory, the root package) selects a driver by name through it and
// otherwise sees only hypervisor.Hypervisor.
package drivers

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"

	"github.com/cocoon-runtime/cocoon/hypervisor"
	"github.com/cocoon-runtime/cocoon/hypervisor/qemu"
)

// Default is the driver used when none is named.
const Default = "qemu"

// Options configure a driver.
type Options struct {
	// Log receives the driver's messages; nil discards them.
	Log *slog.Logger
	// CacheDir holds host-wide caches (QEMU's accelerator probe result).
	CacheDir string
}

// Driver is one hypervisor driver's entry in the table.
type Driver struct {
	// Name is the driver's name.
	Name string
	// Binary is the VMM binary looked up on PATH when the VM's config
	// names none.
	Binary string
	// New returns a driver value for one new VM (see
	// hypervisor.Hypervisor.CreateVM).
	New func(Options) hypervisor.Hypervisor
	// Open re-attaches to the VM whose runtime directory is dir, started
	// by this driver in this or another process.
	Open func(ctx context.Context, dir string, opts Options) (hypervisor.Hypervisor, error)
	// Remove stops and removes the VM whose runtime directory is dir
	// from what is on disk, however far its start got; a missing
	// directory is not an error.
	Remove func(ctx context.Context, dir string, opts Options) error
	// ResolveAccel picks the accelerator for want on this host: for auto,
	// KVM only where it really works.
	ResolveAccel func(ctx context.Context, want hypervisor.Accelerator, p hypervisor.AccelProbe) (hypervisor.AccelChoice, error)
}

// table lists the drivers. A second driver adds its entry here.
func table() []Driver {
	qopts := func(o Options) qemu.Options { return qemu.Options{Log: o.Log, CacheDir: o.CacheDir} }
	return []Driver{{
		Name:   "qemu",
		Binary: qemu.DefaultPath,
		New:    func(o Options) hypervisor.Hypervisor { return qemu.New(qopts(o)) },
		Open: func(ctx context.Context, dir string, o Options) (hypervisor.Hypervisor, error) {
			return qemu.Open(ctx, dir, qopts(o))
		},
		Remove:       func(ctx context.Context, dir string, o Options) error { return qemu.Remove(ctx, dir, qopts(o)) },
		ResolveAccel: qemu.ResolveAccel,
	}}
}

// Names lists the drivers' names.
func Names() []string {
	var names []string
	for _, d := range table() {
		names = append(names, d.Name)
	}
	slices.Sort(names)
	return names
}

// Lookup returns the driver called name; "" is Default. It fails with a
// hypervisor.ConfigError for a name no driver has.
func Lookup(name string) (Driver, error) {
	if name == "" {
		name = Default
	}
	for _, d := range table() {
		if d.Name == name {
			return d, nil
		}
	}
	return Driver{}, &hypervisor.ConfigError{Field: "driver",
		Err: fmt.Errorf("no hypervisor driver %q (there are: %s)", name, strings.Join(Names(), ", "))}
}
