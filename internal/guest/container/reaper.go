package container

import (
	"sync"

	"github.com/cocoon-runtime/cocoon/internal/guest/reaper"
)

// Reaper delivers the exits of the guest's children, as reaped by PID 1.
// *reaper.Reaper implements it.
//
// The Manager is also given a sync.Locker that the reaping loop holds
// while it reaps (*reaper.Reaper is one): libcontainer waits for its own
// helper processes while it starts a container process, so the Manager
// holds the lock meanwhile, and subscribes before starting the process so
// that it learns the process's exit from the reaper.
type Reaper interface {
	// Subscribe returns a channel that receives every exit from now on.
	// It must not need the lock.
	Subscribe() chan reaper.Exit
	// Unsubscribe stops deliveries to a channel returned by Subscribe.
	Unsubscribe(chan reaper.Exit)
}

var (
	_ Reaper      = (*reaper.Reaper)(nil)
	_ sync.Locker = (*reaper.Reaper)(nil)
)
