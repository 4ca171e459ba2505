package container

import (
	"bytes"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// The init process of a PID namespace does not get a signal whose
// disposition is the default (neither caught, ignored nor blocked): the
// kernel drops it. A program that catches SIGTERM, say, does so once it
// has set up its handler. Under emulation that takes a good part of a
// second after Start returned, where on runc it takes a millisecond, so a
// stop that follows a start at once (the CRI's StopContainer right after
// StartContainer) would lose its SIGTERM and wait out the whole grace
// period. The same holds for the moment between Start and the execution of
// the program, while libcontainer's init helper (a Go program, which dies
// on SIGTERM with status 2) still runs.
//
// So a signal sent to a started container's init in that state is held
// back and sent once the program catches, ignores or blocks it, or once
// heldSignalTimeout has passed (then the kernel drops it, as it would have
// at once). A program that never catches the signal sees no difference; one
// that catches it gets it once, late, instead of never.

// heldSignalTimeout bounds how long a signal is held back.
const heldSignalTimeout = 5 * time.Second

// execWindow is how long after Start a signal is sent only once its
// target was seen ready twice in a row, even when the first look finds it
// ready: while the helper executes the program there is a moment when the
// process shows the program's arguments yet still has the helper's
// handlers, and a signal sent then is lost once the kernel resets them.
const execWindow = 10 * time.Second

// heldSignalPoll is how often a held-back signal's target is checked.
const heldSignalPoll = 5 * time.Millisecond

// signalInit sends sig to the init process p of a container started at
// started, or holds it back as explained above; it returns without
// waiting.
func signalInit(p *Process, sig syscall.Signal, started time.Time, log *slog.Logger) error {
	if !mayBeDropped(sig) || time.Since(started) > execWindow && !dropsSignal(p.Pid(), sig) {
		return p.Signal(sig)
	}
	if p.exited() {
		return p.Signal(sig) // reports ErrNotRunning
	}
	log.Debug("holding back a signal until the container's program handles it", "process", p.String(), "signal", sig)
	go func() {
		deadline := time.Now().Add(heldSignalTimeout)
		tick := time.NewTicker(heldSignalPoll)
		defer tick.Stop()
		// Twice in a row: while the helper executes the program, the
		// process has the program's arguments a moment before the kernel
		// resets the helper's handlers, and a signal sent then is lost.
		for ready := 0; ready < 2 && time.Now().Before(deadline); {
			select {
			case <-p.done:
				return
			case <-tick.C:
			}
			if dropsSignal(p.Pid(), sig) {
				ready = 0
			} else {
				ready++
			}
		}
		if err := p.Signal(sig); err != nil && !p.exited() {
			log.Warn("send held-back signal", "process", p.String(), "signal", sig, "err", err)
		}
	}()
	return nil
}

// mayBeDropped reports whether holding sig back can matter: SIGKILL and
// SIGSTOP always reach a namespace's init, and the signals whose default
// action is to do nothing do nothing either way.
func mayBeDropped(sig syscall.Signal) bool {
	switch sig {
	case unix.SIGKILL, unix.SIGSTOP, unix.SIGCONT, unix.SIGCHLD, unix.SIGURG, unix.SIGWINCH:
		return false
	}
	return true
}

// dropsSignal reports whether process pid, as it is now, would not get sig
// as intended: it is the init of its PID namespace and either does not
// catch, ignore nor block sig, or is still libcontainer's init helper (the
// agent's binary run as "init", whose Go runtime catches every signal). Any doubt (the process is gone, its
// status unreadable) reports false: the signal is then sent at once.
func dropsSignal(pid int, sig syscall.Signal) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return false
	}
	st := parseStatus(b)
	if !st.nsInit {
		return false
	}
	if isInitHelper(pid) {
		return true
	}
	bit := uint64(1) << (uint(sig) - 1)
	return (st.caught|st.ignored|st.blocked)&bit == 0
}

// procStatus is what dropsSignal reads from /proc/<pid>/status.
type procStatus struct {
	nsInit                   bool // pid 1 in its innermost PID namespace
	caught, ignored, blocked uint64
}

func parseStatus(b []byte) procStatus {
	var st procStatus
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		v = strings.TrimSpace(v)
		switch k {
		case "NSpid":
			f := strings.Fields(v)
			st.nsInit = len(f) > 1 && f[len(f)-1] == "1"
		case "SigCgt":
			st.caught, _ = strconv.ParseUint(v, 16, 64)
		case "SigIgn":
			st.ignored, _ = strconv.ParseUint(v, 16, 64)
		case "SigBlk":
			st.blocked, _ = strconv.ParseUint(v, 16, 64)
		}
	}
	return st
}

// isInitHelper reports whether process pid still runs libcontainer's init
// helper, which libcontainer starts as this binary with the arguments
// os.Args[0] and "init", or is executing the program (its arguments are
// not set up yet).
func isInitHelper(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return false
	}
	return len(b) == 0 || bytes.Equal(b, []byte(os.Args[0]+"\x00init\x00"))
}
