package cocoon

import (
	"context"
	"fmt"
	"os"
	"regexp"
	"slices"

	"github.com/cocoon-runtime/cocoon/hypervisor"
)

// DeviceConfig is a block device to hot-plug into a running sandbox.
type DeviceConfig struct {
	// ID names the device in the sandbox, and is the serial the guest
	// sees it with (/sys/block/<dev>/serial): 1 to 20 of [A-Za-z0-9_-],
	// starting with a letter or digit.
	ID string
	// Path is the host's block device or image file. The host opens it
	// and hands QEMU the descriptor.
	Path string
	// ReadOnly attaches it read-only.
	ReadOnly bool
}

// Device is a block device hot-plugged with AddDevice.
type Device struct {
	ID       string `json:"id"`
	Path     string `json:"path"`
	ReadOnly bool   `json:"read_only,omitempty"`
}

var validDeviceName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_-]{0,19}$`)

// AddDevice hot-plugs a block device into the running VM (a free PCIe
// root port is needed: see VMConfig.HotplugSlots). The device is recorded
// with the sandbox before it is plugged, so another process can list and
// remove it, and a crash leaves nothing the sandbox's removal misses.
func (s *Sandbox) AddDevice(ctx context.Context, cfg DeviceConfig) (Device, error) {
	if !validDeviceName.MatchString(cfg.ID) {
		return Device{}, fmt.Errorf("sandbox %s: add device: %w: id %q: want 1 to 20 of [A-Za-z0-9_-], starting with a letter or digit", s.id, ErrInvalidConfig, cfg.ID)
	}
	st, err := os.Stat(cfg.Path)
	if err != nil {
		return Device{}, fmt.Errorf("sandbox %s: add device %s: %w: %w", s.id, cfg.ID, ErrInvalidConfig, err)
	}
	if !imageOrBlockDevice(st.Mode()) {
		return Device{}, fmt.Errorf("sandbox %s: add device %s: %w: %s is neither a block device nor an image file", s.id, cfg.ID, ErrInvalidConfig, cfg.Path)
	}
	unlock, err := s.rt.store.Lock(ctx, s.id)
	if err != nil {
		return Device{}, err
	}
	defer unlock()
	d := Device{ID: cfg.ID, Path: cfg.Path, ReadOnly: cfg.ReadOnly}
	if err := s.updateLocked(func(st *sandboxState) error {
		if slices.ContainsFunc(st.Devices, func(o Device) bool { return o.ID == d.ID }) {
			return fmt.Errorf("sandbox %s: add device %s: %w", s.id, d.ID, ErrExists)
		}
		st.Devices = append(st.Devices, d)
		return nil
	}); err != nil {
		return Device{}, err
	}
	s.mu.Lock()
	v := s.vm
	s.mu.Unlock()
	err = fmt.Errorf("%w: its VM is not running", ErrState)
	if v != nil {
		err = v.AddDevice(ctx, hypervisor.Device{Kind: hypervisor.DeviceBlock, ID: d.ID, Path: d.Path, ReadOnly: d.ReadOnly, Serial: d.ID})
	}
	if err != nil {
		s.updateLocked(func(st *sandboxState) error {
			st.Devices = slices.DeleteFunc(st.Devices, func(o Device) bool { return o.ID == d.ID })
			return nil
		})
		return Device{}, fmt.Errorf("sandbox %s: add device %s: %w", s.id, d.ID, err)
	}
	return d, nil
}

// RemoveDevice hot-unplugs a device added with AddDevice, waiting until
// the guest released it.
func (s *Sandbox) RemoveDevice(ctx context.Context, id string) error {
	unlock, err := s.rt.store.Lock(ctx, s.id)
	if err != nil {
		return err
	}
	defer unlock()
	st, err := s.loadLocked()
	if err != nil {
		return err
	}
	if !slices.ContainsFunc(st.Devices, func(o Device) bool { return o.ID == id }) {
		return fmt.Errorf("sandbox %s: remove device %s: %w", s.id, id, ErrNotFound)
	}
	s.mu.Lock()
	v := s.vm
	s.mu.Unlock()
	if v != nil {
		if err := v.RemoveDevice(ctx, hypervisor.Device{Kind: hypervisor.DeviceBlock, ID: id}); err != nil {
			return fmt.Errorf("sandbox %s: remove device %s: %w", s.id, id, err)
		}
	}
	return s.updateLocked(func(st *sandboxState) error {
		st.Devices = slices.DeleteFunc(st.Devices, func(o Device) bool { return o.ID == id })
		return nil
	})
}

// ListDevices lists the devices added with AddDevice, as recorded with
// the sandbox.
func (s *Sandbox) ListDevices(ctx context.Context) ([]Device, error) {
	unlock, err := s.rt.store.Lock(ctx, s.id)
	if err != nil {
		return nil, err
	}
	defer unlock()
	st, err := s.loadLocked()
	if err != nil {
		return nil, err
	}
	return slices.Clone(st.Devices), nil
}
