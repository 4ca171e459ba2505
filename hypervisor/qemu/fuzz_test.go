package qemu

import (
	"context"
	"encoding/json"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/cocoon-runtime/cocoon/hypervisor"
)

// FuzzOpen writes arbitrary bytes as a VM's persisted state and re-attaches
// to it: Open must never panic and accept only a record naming this VM; the
// handle's agent sockets stay in the VM's directory, it is attached to no
// process (no process runs with this directory on its command line), a
// hotplug port it picks is a free slot, and Cleanup removes the directory.
func FuzzOpen(f *testing.F) {
	for _, s := range []state{
		{ID: "vm1", Accel: "tcg", Machine: MachineQ35, Config: hypervisor.Config{VCPUs: 1, MemoryMiB: 256, HotplugSlots: 4}, Ports: map[string]int{"d0": 0, "d1": 2}},
		{ID: "vm1", Pid: 1, PidStart: 1, Machine: MachineMicrovm, VsockCID: 77, TSCKHz: 1000000},
		{ID: "vm1", Machine: MachineQ35, Config: hypervisor.Config{HotplugSlots: 2}, Ports: map[string]int{"a": 0, "b": 1}},
		{ID: "other"},
		{ID: "../vm1"},
	} {
		b, err := json.Marshal(s)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte(`{"id": "vm1", "pid": -1, "config": {"HotplugSlots": -5}, "ports": {"x": -1}}`))
	f.Add([]byte(`{"id": "vm1", "machine": "q35", "config": {"HotplugSlots": 9000000000000000000}}`))
	f.Add([]byte(`{"id": "vm1"`))
	f.Fuzz(func(t *testing.T, b []byte) {
		dir := filepath.Join(t.TempDir(), "vm1")
		if err := os.Mkdir(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(vmFiles(dir).state, b, 0o600); err != nil {
			t.Fatal(err)
		}
		var s state
		ours := json.Unmarshal(b, &s) == nil && s.ID == "vm1"
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		q, err := Open(ctx, dir, Options{VsockAvailable: func() bool { return false }})
		if ours != (err == nil) {
			t.Fatalf("Open = %v; the record names this VM: %v", err, ours)
		}
		if err != nil {
			return
		}
		ep := q.AgentEndpoint()
		switch ep.Transport {
		case hypervisor.TransportVsock:
			if ep.CID != s.VsockCID {
				t.Fatalf("vsock CID %d, recorded %d", ep.CID, s.VsockCID)
			}
		case hypervisor.TransportSerial:
			for _, p := range ep.Sockets {
				if filepath.Dir(p) != dir {
					t.Fatalf("agent socket %s outside %s", p, dir)
				}
			}
		default:
			t.Fatalf("agent endpoint %+v", ep)
		}
		if pids := q.PIDs(); pids != nil {
			t.Fatalf("attached to %v", pids)
		}
		select {
		case <-q.Wait():
		default:
			t.Fatal("a VM without a process is running")
		}
		q.mu.Lock()
		port, err := q.freePortLocked()
		used := slices.Collect(maps.Values(q.ports))
		q.mu.Unlock()
		if err == nil && (port < 0 || port >= s.Config.HotplugSlots || slices.Contains(used, port)) {
			t.Fatalf("free port %d of %d slots, used %v", port, s.Config.HotplugSlots, used)
		}
		if err := q.Cleanup(ctx); err != nil {
			t.Fatalf("Cleanup: %v", err)
		}
		if _, err := os.Stat(dir); !os.IsNotExist(err) {
			t.Fatalf("%s left after Cleanup: %v", dir, err)
		}
	})
}
