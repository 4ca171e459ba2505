package qmp

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
)

// Status is the reply of query-status.
type Status struct {
	Running bool   `json:"running"`
	Status  string `json:"status"` // "running", "paused", "shutdown", ...
}

// QueryStatus reports the VM's run state.
func (c *Client) QueryStatus(ctx context.Context) (Status, error) {
	var s Status
	err := c.Execute(ctx, "query-status", nil, &s)
	return s, err
}

// Stop pauses the guest's vCPUs.
func (c *Client) Stop(ctx context.Context) error { return c.Execute(ctx, "stop", nil, nil) }

// Cont resumes the guest's vCPUs.
func (c *Client) Cont(ctx context.Context) error { return c.Execute(ctx, "cont", nil, nil) }

// Quit makes QEMU exit at once. The connection closes as QEMU goes away, so
// a closed connection counts as success.
func (c *Client) Quit(ctx context.Context) error {
	err := c.Execute(ctx, "quit", nil, nil)
	if errors.Is(err, ErrClosed) {
		return nil
	}
	return err
}

// SystemPowerdown asks the guest to power off through ACPI.
func (c *Client) SystemPowerdown(ctx context.Context) error {
	return c.Execute(ctx, "system_powerdown", nil, nil)
}

// DeviceAdd hot-plugs a device. args must hold "driver" and "id" and the
// driver's properties.
func (c *Client) DeviceAdd(ctx context.Context, args map[string]any) error {
	return c.Execute(ctx, "device_add", args, nil)
}

// DeviceDel asks the guest to release device id and waits until QEMU
// reports DEVICE_DELETED for it or ctx is done.
//
// Only one caller may consume Events at a time; DeviceDel reads events while
// it waits and discards the ones it does not need.
func (c *Client) DeviceDel(ctx context.Context, id string) error {
	if err := c.Execute(ctx, "device_del", map[string]any{"id": id}, nil); err != nil {
		return err
	}
	for {
		select {
		case ev, ok := <-c.events:
			if !ok {
				return fmt.Errorf("qmp device_del %s: %w", id, ErrClosed)
			}
			if ev.Name != "DEVICE_DELETED" {
				continue
			}
			var d struct {
				Device string `json:"device"`
			}
			if json.Unmarshal(ev.Data, &d) == nil && d.Device == id {
				return nil
			}
		case <-ctx.Done():
			return fmt.Errorf("qmp device_del %s: waiting for DEVICE_DELETED: %w", id, ctx.Err())
		}
	}
}

// BlockdevAdd adds a block backend node.
func (c *Client) BlockdevAdd(ctx context.Context, args map[string]any) error {
	return c.Execute(ctx, "blockdev-add", args, nil)
}

// BlockdevDel removes a block backend node.
func (c *Client) BlockdevDel(ctx context.Context, nodeName string) error {
	return c.Execute(ctx, "blockdev-del", map[string]any{"node-name": nodeName}, nil)
}

// CPU is one entry of query-cpus-fast.
type CPU struct {
	Index    int    `json:"cpu-index"`
	ThreadID int    `json:"thread-id"`
	QOMPath  string `json:"qom-path"`
	Target   string `json:"target"`
}

// QueryCPUs lists the vCPUs and their host threads.
func (c *Client) QueryCPUs(ctx context.Context) ([]CPU, error) {
	var cpus []CPU
	err := c.Execute(ctx, "query-cpus-fast", nil, &cpus)
	return cpus, err
}

// MigrateSetCapabilities enables or disables migration capabilities.
func (c *Client) MigrateSetCapabilities(ctx context.Context, caps map[string]bool) error {
	list := make([]map[string]any, 0, len(caps))
	for k, v := range caps {
		list = append(list, map[string]any{"capability": k, "state": v})
	}
	return c.Execute(ctx, "migrate-set-capabilities", map[string]any{"capabilities": list}, nil)
}

// Migrate starts an outgoing migration to uri.
func (c *Client) Migrate(ctx context.Context, uri string) error {
	return c.Execute(ctx, "migrate", map[string]any{"uri": uri}, nil)
}

// MigrateIncoming starts an incoming migration from uri (QEMU must run
// with -incoming defer).
func (c *Client) MigrateIncoming(ctx context.Context, uri string) error {
	return c.Execute(ctx, "migrate-incoming", map[string]any{"uri": uri}, nil)
}

// MigrationInfo is the reply of query-migrate.
type MigrationInfo struct {
	Status    string `json:"status"` // "active", "completed", "failed", ...
	ErrorDesc string `json:"error-desc"`
}

// QueryMigrate reports the state of the current migration.
func (c *Client) QueryMigrate(ctx context.Context) (MigrationInfo, error) {
	var m MigrationInfo
	err := c.Execute(ctx, "query-migrate", nil, &m)
	return m, err
}
