package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"sync"
	"syscall"

	"github.com/cocoon-runtime/cocoon"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// signalCatcher holds the signals `run` and `exec` catch from the moment
// they start: before the process runs, a terminating one aborts the
// command; afterwards every one is passed on to the process.
type signalCatcher struct {
	c    chan os.Signal
	pipe chan os.Signal
}

func catchSignals() *signalCatcher {
	s := &signalCatcher{c: make(chan os.Signal, 64), pipe: make(chan os.Signal, 1)}
	signal.Notify(s.c, append(forwardedSignals(), unix.SIGWINCH)...)
	// With SIGPIPE caught (and dropped), writing to a closed standard
	// output fails with EPIPE instead of killing cocoon, so the sandbox is
	// still cleaned up. (Unlike ignoring it, this is not inherited by the
	// VM's processes.)
	signal.Notify(s.pipe, unix.SIGPIPE)
	return s
}

func (s *signalCatcher) stop() {
	signal.Stop(s.c)
	signal.Stop(s.pipe)
}

// guard returns a context cancelled by the first terminating signal, and
// the function that stops watching and reports that signal (nil if none
// came). Other signals that arrive meanwhile are dropped.
func (s *signalCatcher) guard(ctx context.Context) (context.Context, context.CancelFunc, func() os.Signal) {
	ctx, cancel := context.WithCancel(ctx)
	done, exited := make(chan struct{}), make(chan struct{})
	var got os.Signal
	go func() {
		defer close(exited)
		for {
			select {
			case sig := <-s.c:
				if terminating(sig) {
					got = sig
					cancel()
					return
				}
			case <-done:
				return
			}
		}
	}()
	end := func() os.Signal {
		close(done)
		<-exited
		return got
	}
	return ctx, cancel, end
}

// errInterrupted wraps the error of an operation a signal aborted.
func errInterrupted(sig os.Signal, err error) error {
	name := sig.String()
	if s, ok := sig.(syscall.Signal); ok && unix.SignalName(s) != "" {
		name = unix.SignalName(s)
	}
	return fmt.Errorf("interrupted by %s: %w", name, err)
}

// attachment is cocoon's end of a process in a container: its stdio
// streams, and the signals and terminal resizes passed on to it.
type attachment struct {
	sb         *cocoon.Sandbox
	id, execID string
	tty        bool
	// size is the terminal size to set once the process started; nil
	// leaves it to the terminal cocoon runs on.
	size *specs.Box
	log  *slog.Logger

	stdin          io.WriteCloser
	stdout, stderr io.ReadCloser
}

// attach opens the stdio streams of process execID ("" for the init
// process) of container id.
func attach(ctx context.Context, sb *cocoon.Sandbox, id, execID string, tty bool, log *slog.Logger) (*attachment, error) {
	in, out, errOut, err := sb.IOStream(ctx, id, execID)
	if err != nil {
		return nil, fmt.Errorf("attach to %s: %w", processName(id, execID), err)
	}
	return &attachment{sb: sb, id: id, execID: execID, tty: tty, log: log, stdin: in, stdout: out, stderr: errOut}, nil
}

func processName(id, execID string) string {
	if execID == "" {
		return "container " + id
	}
	return fmt.Sprintf("process %s in container %s", execID, id)
}

// close closes the streams.
func (a *attachment) close() {
	a.stdin.Close()
	a.stdout.Close()
	if a.stderr != nil {
		a.stderr.Close()
	}
}

// wait connects cocoon's stdio to the started process until the process
// closed its outputs (everything it wrote has then been copied), passing
// signals from sigs on to it meanwhile, and returns how it exited.
func (a *attachment) wait(ctx context.Context, sigs *signalCatcher) (cocoon.ExitStatus, error) {
	defer a.close()
	if a.tty && isTerminal(os.Stdin) {
		restore, err := makeRaw(os.Stdin)
		if err != nil {
			return cocoon.ExitStatus{}, err
		}
		defer restore()
	}
	done := make(chan struct{})
	defer close(done)
	if a.tty {
		size := a.size
		if size == nil {
			size, _ = terminalSize(os.Stdin, os.Stdout)
		}
		if size != nil {
			a.resize(ctx, size)
		}
	}
	go a.forward(ctx, sigs, done)

	go func() {
		// The copy ends at end of input, or never when input is a terminal
		// in raw mode; closing tells the process it reached end of file.
		if _, err := io.Copy(a.stdin, os.Stdin); err != nil {
			a.log.Debug("copy stdin", "container", a.id, "exec", a.execID, "err", err)
		}
		a.stdin.Close()
	}()
	var wg sync.WaitGroup
	errs := make([]error, 2)
	copyOut := func(i int, w *os.File, r io.Reader) {
		defer wg.Done()
		errs[i] = copyOutput(w, r)
	}
	wg.Add(1)
	go copyOut(0, os.Stdout, a.stdout)
	if a.stderr != nil {
		wg.Add(1)
		go copyOut(1, os.Stderr, a.stderr)
	}
	wg.Wait()

	st, err := a.sb.WaitProcess(ctx, a.id, a.execID)
	if err != nil {
		if cocoon.IsGuestDied(err) {
			return st, fmt.Errorf("wait for %s: the sandbox VM exited: %w", processName(a.id, a.execID), err)
		}
		return st, fmt.Errorf("wait for %s: %w", processName(a.id, a.execID), err)
	}
	if a.execID != "" {
		// Its status is collected: the guest can forget the process.
		if err := a.sb.DeleteProcess(ctx, a.id, a.execID); err != nil {
			a.log.Debug("delete exec", "container", a.id, "exec", a.execID, "err", err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return st, fmt.Errorf("copy output of %s: %w", processName(a.id, a.execID), err)
	}
	return st, nil
}

// copyOutput copies a process's output stream to w until end of file. If w
// is closed (a pipe whose reader went away), the rest is discarded, so the
// process never blocks on output nobody reads.
func copyOutput(w *os.File, r io.Reader) error {
	buf := make([]byte, 128<<10)
	_, err := io.CopyBuffer(w, r, buf)
	if errors.Is(err, syscall.EPIPE) {
		_, err = io.CopyBuffer(io.Discard, r, buf)
	}
	return err
}

// forward passes the signals cocoon receives on to the process until done
// is closed: SIGWINCH as a resize of its terminal, the others as they are.
func (a *attachment) forward(ctx context.Context, sigs *signalCatcher, done <-chan struct{}) {
	for {
		select {
		case <-done:
			return
		case sig := <-sigs.c:
			if sig == unix.SIGWINCH {
				if a.tty && a.size == nil {
					if size, ok := terminalSize(os.Stdin, os.Stdout); ok {
						a.resize(ctx, size)
					}
				}
				continue
			}
			s, ok := sig.(syscall.Signal)
			if !ok {
				continue
			}
			if err := a.sb.SignalProcess(ctx, a.id, a.execID, s, false); err != nil {
				a.log.Debug("forward signal", "container", a.id, "exec", a.execID, "signal", s, "err", err)
			}
		}
	}
}

func (a *attachment) resize(ctx context.Context, size *specs.Box) {
	if err := a.sb.WinsizeProcess(ctx, a.id, a.execID, uint32(size.Height), uint32(size.Width)); err != nil {
		a.log.Debug("resize terminal", "container", a.id, "exec", a.execID, "err", err)
	}
}

// exitStatusCode is the status cocoon exits with for a process's end:
// its exit code, or 128+n when signal n killed it.
func exitStatusCode(st cocoon.ExitStatus) exitCode {
	if st.Signal != 0 && st.Code < 128 {
		return exitCode(128 + st.Signal)
	}
	return exitCode(st.Code)
}

// ttySetting decides whether a process gets a terminal: the --tty flag
// when given, else what the spec says. It returns the console size to
// create the terminal with.
func ttySetting(p *specs.Process, flagSet, flagValue bool, consoleSize string) (*specs.Box, error) {
	if flagSet {
		p.Terminal = flagValue
	}
	if consoleSize != "" {
		if !p.Terminal {
			return nil, errors.New("--console-size needs a terminal (--tty)")
		}
		size, err := parseConsoleSize(consoleSize)
		if err != nil {
			return nil, err
		}
		p.ConsoleSize = size
		return size, nil
	}
	if p.Terminal {
		if size, ok := terminalSize(os.Stdin, os.Stdout); ok {
			p.ConsoleSize = size
		}
	}
	return nil, nil
}
