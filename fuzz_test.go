package cocoon

import (
	"context"
	"encoding/json"
	"errors"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// FuzzLoadSpec writes arbitrary bytes as a bundle's config.json: LoadSpec
// and checkSpec must never panic, refuse with ErrInvalidConfig, and what
// checkSpec accepts must have what the runtime relies on.
func FuzzLoadSpec(f *testing.F) {
	for _, s := range []*specs.Spec{
		{Version: specs.Version, Process: &specs.Process{Args: []string{"sh"}, Cwd: "/"}, Root: &specs.Root{Path: "rootfs"}},
		{Process: &specs.Process{Args: []string{}, Cwd: "relative"}, Root: &specs.Root{}},
		{Process: &specs.Process{Args: []string{"sh"}, Cwd: "/", Env: []string{"A=1"}, Terminal: true},
			Root:   &specs.Root{Path: "/abs/rootfs", Readonly: true},
			Mounts: []specs.Mount{{Destination: "/data", Type: "bind", Source: "/src", Options: []string{"rbind"}}},
			Linux:  &specs.Linux{Namespaces: []specs.LinuxNamespace{{Type: specs.NetworkNamespace, Path: "/proc/1/ns/net"}}}},
	} {
		b, err := json.Marshal(s)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte(`{"process": null, "root": {"path": ""}}`))
	f.Add([]byte(`{"process": {"args": ["a"], "cwd": "/", "user": {"uid": -1}}}`))
	f.Add([]byte(`[]`))
	f.Fuzz(func(t *testing.T, b []byte) {
		bundle := t.TempDir()
		if err := os.WriteFile(filepath.Join(bundle, "config.json"), b, 0o600); err != nil {
			t.Fatal(err)
		}
		spec, err := LoadSpec(bundle)
		if err != nil {
			if !errors.Is(err, ErrInvalidConfig) {
				t.Fatalf("LoadSpec error %v does not wrap ErrInvalidConfig", err)
			}
			return
		}
		if err := checkSpec(spec); err != nil {
			if !errors.Is(err, ErrInvalidConfig) {
				t.Fatalf("checkSpec error %v does not wrap ErrInvalidConfig", err)
			}
			return
		}
		if spec.Process == nil || len(spec.Process.Args) == 0 || spec.Root == nil || spec.Root.Path == "" || !filepath.IsAbs(spec.Process.Cwd) {
			t.Fatalf("checkSpec accepted %+v", spec)
		}
		rootfs := containerRootfs(&ContainerConfig{Bundle: bundle, Spec: spec})
		if !filepath.IsAbs(rootfs) {
			t.Fatalf("rootfs %q of bundle %s is not absolute", rootfs, bundle)
		}
	})
}

// FuzzSandboxState writes arbitrary bytes as a sandbox's persisted record
// and has the runtime fetch the sandbox, report its status and stop it:
// none of it may panic, and the record it saves back keeps the containers.
// No VM state exists, so the sandbox has no VM.
func FuzzSandboxState(f *testing.F) {
	created := time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC)
	for _, st := range []*sandboxState{
		{ID: "sb", State: StateStopped, Created: created, Containers: map[string]*containerState{
			"c1": {ID: "c1", Bundle: "/b", Rootfs: "/b/rootfs", Created: created, Env: []string{"PATH=/bin"}, Execs: []string{"e1"}},
		}},
		{ID: "sb", State: StateRunning, Annotations: map[string]string{"a": "b"}},
		{ID: "other", State: "bogus"},
	} {
		b, err := json.Marshal(st)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	// A container entry that is null.
	f.Add([]byte(`{"id": "sb", "state": "stopped", "containers": {"c1": null}}`))
	f.Add([]byte(`{"id": "sb", "state": "running", "containers": {"../x": {"id": "y"}}}`))
	f.Add([]byte(`{"containers": []}`))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, b []byte) {
		dir := t.TempDir()
		rt, err := New(Options{StateDir: dir, DataDir: dir})
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "state", "sb.json"), b, 0o600); err != nil {
			t.Fatal(err)
		}
		var want sandboxState
		wantOK := json.Unmarshal(b, &want) == nil

		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		s, err := rt.FetchSandbox(ctx, "sb")
		if wantOK != (err == nil) {
			t.Fatalf("FetchSandbox = %v; the record parses: %v", err, wantOK)
		}
		if err != nil {
			return
		}
		defer s.Release()
		st := s.Status(ctx)
		if st.ID != "sb" || st.State != StateStopped {
			t.Fatalf("status of a sandbox without a VM: %+v", st)
		}
		ids := slices.Sorted(maps.Keys(want.Containers))
		if len(st.Containers) != len(ids) {
			t.Fatalf("%d containers reported, %d recorded", len(st.Containers), len(ids))
		}
		for i, cs := range st.Containers {
			if cs.ID != ids[i] || cs.State != StateStopped {
				t.Fatalf("container %d: %+v, want %s stopped", i, cs, ids[i])
			}
		}
		if err := s.Stop(ctx, true); err != nil {
			t.Fatalf("Stop: %v", err)
		}
		var saved sandboxState
		if err := rt.store.Load("sb", &saved); err != nil {
			t.Fatal(err)
		}
		if saved.State != StateStopped || !slices.Equal(slices.Sorted(maps.Keys(saved.Containers)), ids) {
			t.Fatalf("saved after Stop: %+v, want containers %q", saved, ids)
		}
	})
}
