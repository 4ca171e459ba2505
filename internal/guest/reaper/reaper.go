// Package reaper reaps the children of the guest's PID 1 and tells
// interested parties how they exited.
//
// PID 1 inherits every orphan in the VM, so it must wait for all of them.
// Code that starts a process subscribes before starting it and learns its
// exit status from the reaper instead of calling wait itself.
package reaper

import (
	"context"
	"os"
	"os/signal"
	"sync"

	"golang.org/x/sys/unix"
)

// Exit is a reaped process.
type Exit struct {
	Pid    int
	Status int // exit code, or 128+signal when killed by a signal
}

// Reaper waits for exited children. The zero value is not usable; use New.
//
// Reaper is also a sync.Locker: while it is locked, nothing is reaped.
// Code that starts a child and waits for it itself (as libcontainer does
// with its helper processes) holds the lock meanwhile, so the reaper cannot
// steal the child's exit status. Exits that happen meanwhile are reaped on
// Unlock's next SIGCHLD pass.
type Reaper struct {
	reapMu sync.Mutex // held while reaping, and by Lock

	mu   sync.Mutex // guards subs
	subs map[chan Exit]struct{}
}

// Lock stops reaping until Unlock. A reaping pass under way finishes first.
func (r *Reaper) Lock() { r.reapMu.Lock() }

// Unlock allows reaping again, and reaps what exited meanwhile.
func (r *Reaper) Unlock() {
	r.reapMu.Unlock()
	// A SIGCHLD that arrived while locked was consumed by a reap pass that
	// waited for the lock; run one more so no exit is left behind.
	go r.reap()
}

// New returns a Reaper. Call Run to start reaping.
func New() *Reaper { return &Reaper{subs: make(map[chan Exit]struct{})} }

// Subscribe returns a channel that receives every exit from now on. Call
// Unsubscribe when done with it.
func (r *Reaper) Subscribe() chan Exit {
	ch := make(chan Exit, 256)
	r.mu.Lock()
	r.subs[ch] = struct{}{}
	r.mu.Unlock()
	return ch
}

// Unsubscribe stops deliveries to ch.
func (r *Reaper) Unsubscribe(ch chan Exit) {
	r.mu.Lock()
	delete(r.subs, ch)
	r.mu.Unlock()
}

// Run reaps children until ctx is done.
func (r *Reaper) Run(ctx context.Context) {
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

func (r *Reaper) reap() {
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
		e := Exit{Pid: pid, Status: ExitStatus(ws)}
		r.mu.Lock()
		for ch := range r.subs {
			// A subscriber must keep up; the buffer absorbs bursts. Blocking
			// here would stall reaping for everyone, so never block.
			select {
			case ch <- e:
			default:
			}
		}
		r.mu.Unlock()
	}
}

// ExitStatus converts a wait status to a shell-style exit status.
func ExitStatus(ws unix.WaitStatus) int {
	if ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return ws.ExitStatus()
}
