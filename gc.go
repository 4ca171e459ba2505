package cocoon

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/cocoon-runtime/cocoon/internal/persist"
	"github.com/cocoon-runtime/cocoon/internal/storage"
)

// GCReport lists what GC removed.
type GCReport struct {
	// Sandboxes whose creation never finished: their creator was killed.
	Sandboxes []string
	// Templates that were never finished: their maker was killed.
	Templates []string
	// Leftovers are sandbox and VM directories and lock files that no
	// sandbox record names, each as "sandbox ID", "vm ID" or "lock ID".
	Leftovers []string
}

// GC removes what processes killed in the middle of their work left
// behind: sandboxes whose creation never finished (their record says
// creating and nobody holds their lock), and VMs, file servers, mounts,
// directories and lock files that no sandbox record names, and VM
// templates whose making never finished. A sandbox that
// some process holds (being created or changed) is left alone, and so is
// every sandbox that finished being created, running or not: Delete
// removes those. GC is safe to run at any time, also concurrently.
func (r *Runtime) GC(ctx context.Context) (GCReport, error) {
	var rep GCReport
	var errs []error
	ids, err := r.store.List()
	if err != nil {
		return rep, err
	}
	for _, id := range ids {
		removed, err := r.gcSandbox(ctx, id, func(st *sandboxState) bool { return st.State == StateCreating })
		if removed {
			rep.Sandboxes = append(rep.Sandboxes, id)
		}
		errs = append(errs, err)
	}
	// Directories and locks without a record.
	for _, kind := range []struct{ name, dir string }{{"sandbox", r.sandboxDir("")}, {"vm", r.vmStateDir()}} {
		entries, err := os.ReadDir(kind.dir)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
		for _, e := range entries {
			if validateID(kind.name, e.Name()) != nil {
				continue
			}
			removed, err := r.gcSandbox(ctx, e.Name(), nil)
			if removed {
				rep.Leftovers = append(rep.Leftovers, kind.name+" "+e.Name())
			}
			errs = append(errs, err)
		}
	}
	tmpl, err := r.factory(r.vmOptions(0)).GC(ctx, r.vmStateDir())
	rep.Templates = tmpl
	errs = append(errs, err)
	locks, err := r.store.Orphans()
	errs = append(errs, err)
	for _, id := range locks {
		removed, err := r.gcSandbox(ctx, id, nil)
		if removed {
			rep.Leftovers = append(rep.Leftovers, "lock "+id)
		}
		errs = append(errs, err)
	}
	return rep, errors.Join(errs...)
}

// gcSandbox removes everything of sandbox id if nobody holds its lock and
// either it has no record, or its record satisfies orphan. It reports
// whether it removed anything.
func (r *Runtime) gcSandbox(ctx context.Context, id string, orphan func(*sandboxState) bool) (bool, error) {
	unlock, err := r.store.TryLock(id)
	if errors.Is(err, persist.ErrLocked) {
		return false, nil // in use
	}
	if err != nil {
		return false, err
	}
	defer unlock()
	var st sandboxState
	switch err := r.store.Load(id, &st); {
	case err == nil:
		if orphan == nil || !orphan(&st) {
			return false, nil
		}
	case errors.Is(err, persist.ErrNotFound):
		st = sandboxState{ID: id}
	default:
		return false, err
	}
	s := &Sandbox{rt: r, id: id, dir: r.sandboxDir(id), state: &st}
	s.shared = &storage.Shared{Dir: s.sharedDir()}
	if err := s.teardown(ctx); err != nil {
		return true, fmt.Errorf("gc sandbox %s: %w", id, err)
	}
	r.log.Info("removed leftovers of a sandbox", "sandbox", id, "state", st.State)
	return true, r.store.Delete(id)
}
