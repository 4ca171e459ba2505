package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// forwardsSignals is the annotation of a command that handles SIGINT and
// SIGTERM itself (it forwards them to a process in a container) rather than
// having them cancel its context.
const forwardsSignals = "cocoon.io/forwards-signals"

// interruptible returns ctx cancelled by the first SIGINT or SIGTERM. The
// handler is removed once ctx ends, so a second signal kills the process.
func interruptible(ctx context.Context) context.Context {
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	context.AfterFunc(ctx, stop)
	return ctx
}

// sigRTMin and sigRTMax bound the real-time signals a process can be sent
// (glibc keeps 32 and 33 for itself).
const (
	sigRTMin = 34
	sigRTMax = 64
)

// forwardedSignals are the signals `run` and `exec` pass on to the process
// they attached to: every catchable one except those that concern the
// cocoon process itself (SIGCHLD, SIGPIPE, SIGURG) and SIGWINCH, which
// becomes a terminal resize.
func forwardedSignals() []os.Signal {
	var out []os.Signal
	for n := 1; n <= sigRTMax; n++ {
		switch s := syscall.Signal(n); {
		case s == unix.SIGKILL, s == unix.SIGSTOP, s == unix.SIGCHLD, s == unix.SIGPIPE,
			s == unix.SIGURG, s == unix.SIGWINCH, n == 32, n == 33:
		default:
			out = append(out, s)
		}
	}
	return out
}

// terminating reports whether sig asks a program to end; before the
// process started, such a signal aborts `run` or `exec`.
func terminating(sig os.Signal) bool {
	switch sig {
	case unix.SIGINT, unix.SIGTERM, unix.SIGHUP, unix.SIGQUIT:
		return true
	}
	return false
}

// parseSignal accepts a signal number (9), a name with or without the SIG
// prefix in any case (KILL, sigkill), or a real-time signal as RTMIN+n or
// RTMAX-n.
func parseSignal(s string) (syscall.Signal, error) {
	if n, err := strconv.Atoi(s); err == nil {
		if n < 1 || n > sigRTMax {
			return 0, fmt.Errorf("parse signal %q: out of range 1-%d", s, sigRTMax)
		}
		return syscall.Signal(n), nil
	}
	name := strings.ToUpper(s)
	name = strings.TrimPrefix(name, "SIG")
	switch {
	case name == "RTMIN":
		return sigRTMin, nil
	case name == "RTMAX":
		return sigRTMax, nil
	case strings.HasPrefix(name, "RTMIN+"), strings.HasPrefix(name, "RTMAX-"):
		n, err := strconv.Atoi(name[6:])
		if err != nil || n < 0 || n > sigRTMax-sigRTMin {
			return 0, fmt.Errorf("parse signal %q: bad real-time signal offset", s)
		}
		if strings.HasPrefix(name, "RTMIN") {
			return syscall.Signal(sigRTMin + n), nil
		}
		return syscall.Signal(sigRTMax - n), nil
	}
	if sig := unix.SignalNum("SIG" + name); sig != 0 {
		return sig, nil
	}
	return 0, fmt.Errorf("parse signal %q: unknown signal", s)
}
