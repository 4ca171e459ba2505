package container

import (
	"context"
	"os"
	"os/signal"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/cocoon-runtime/cocoon/guest/reaper"
)

// Reaper delivers the exits of the guest's children, as reaped by PID 1.
// *reaper.Reaper and *LockedReaper implement it.
type Reaper interface {
	// Subscribe returns a channel that receives every exit from now on.
	Subscribe() chan reaper.Exit
	// Unsubscribe stops deliveries to a channel returned by Subscribe.
	Unsubscribe(chan reaper.Exit)
}

// subscriberBuffer is the capacity of a LockedReaper subscription. A
// subscriber that falls further behind loses exits.
const subscriberBuffer = 256

// LockedReaper reaps every child of the calling process, like
// reaper.Reaper, but only while it holds its own lock.
//
// libcontainer starts a container process through short-lived helper
// children and waits for those itself; a reaper calling wait4(-1) at the
// same moment could steal their exit statuses and make the start fail. The
// Manager therefore holds the LockedReaper's lock (it implements
// sync.Locker) while libcontainer starts a process, so that no reaping
// happens then. Exits are broadcast to subscribers as soon as they are
// reaped; exits of children that end while the lock is held are reaped
// when it is released.
//
// Any other code in the process that waits for children of its own must
// also hold the lock while it starts and waits for them.
//
// The zero value is not usable; use NewLockedReaper.
type LockedReaper struct {
	reapMu sync.Mutex // held while reaping, and by Lock

	mu   sync.Mutex // guards subs
	subs map[chan reaper.Exit]struct{}
}

var (
	_ Reaper      = (*LockedReaper)(nil)
	_ Reaper      = (*reaper.Reaper)(nil)
	_ sync.Locker = (*LockedReaper)(nil)
)

// NewLockedReaper returns a LockedReaper. Call Run to start reaping.
func NewLockedReaper() *LockedReaper {
	return &LockedReaper{subs: make(map[chan reaper.Exit]struct{})}
}

// Lock stops reaping until Unlock is called. A reaping pass already under
// way finishes first.
func (r *LockedReaper) Lock() { r.reapMu.Lock() }

// Unlock allows reaping again.
func (r *LockedReaper) Unlock() { r.reapMu.Unlock() }

// Subscribe returns a channel that receives every exit from now on. Call
// Unsubscribe when done with it. Subscribe may be called while the lock is
// held.
func (r *LockedReaper) Subscribe() chan reaper.Exit {
	ch := make(chan reaper.Exit, subscriberBuffer)
	r.mu.Lock()
	r.subs[ch] = struct{}{}
	r.mu.Unlock()
	return ch
}

// Unsubscribe stops deliveries to ch.
func (r *LockedReaper) Unsubscribe(ch chan reaper.Exit) {
	r.mu.Lock()
	delete(r.subs, ch)
	r.mu.Unlock()
}

// Run reaps children until ctx is done.
func (r *LockedReaper) Run(ctx context.Context) {
	sigs := make(chan os.Signal, 16)
	signal.Notify(sigs, unix.SIGCHLD)
	defer signal.Stop(sigs)
	r.reap() // children that exited before we listened
	for {
		select {
		case <-ctx.Done():
			return
		case <-sigs:
			r.reap()
		}
	}
}

// reap waits for every exited child and broadcasts the exits.
func (r *LockedReaper) reap() {
	r.reapMu.Lock()
	defer r.reapMu.Unlock()
	for {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
		if err == unix.EINTR {
			continue
		}
		if pid <= 0 || err != nil {
			return
		}
		e := reaper.Exit{Pid: pid, Status: reaper.ExitStatus(ws)}
		r.mu.Lock()
		for ch := range r.subs {
			// Never block: that would stall reaping for everyone.
			select {
			case ch <- e:
			default:
			}
		}
		r.mu.Unlock()
	}
}
