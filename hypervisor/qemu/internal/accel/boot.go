package accel

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"syscall"
	"time"
)

// ProbeNamePrefix starts the -name of every probe VM, so a stray probe can be
// told apart from a sandbox in the process list.
const ProbeNamePrefix = "cocoon-accel-probe-"

// Markers the probe looks for in QEMU's output (serial console and stderr).
const (
	markerPanic         = "Kernel panic - not syncing"
	markerInternalError = "KVM internal error"
)

// bootParams is what one boot probe needs.
type bootParams struct {
	QEMU, Kernel string
	Timeout      time.Duration
	OnStart      func(pid int, name string)
}

// bootOutcome is the verdict of one boot probe.
type bootOutcome struct {
	Usable  bool
	Reason  string
	Elapsed time.Duration
}

// probeArgs builds the QEMU command line of a probe VM: the kernel boots
// under KVM with no initrd and no disk, so it panics on "VFS: Unable to
// mount root fs"; panic=-1 turns the panic into a reboot and -no-reboot
// turns the reboot into QEMU exiting.
func probeArgs(name, kernel string) []string {
	return []string{
		"-name", name,
		"-accel", "kvm",
		"-machine", "q35",
		"-cpu", "host",
		"-smp", "1",
		"-m", "128",
		"-nodefaults",
		"-no-user-config",
		"-display", "none",
		"-serial", "stdio",
		"-no-reboot",
		"-kernel", kernel,
		"-append", "console=ttyS0 panic=-1 quiet loglevel=1 mitigations=off",
	}
}

func seconds(d time.Duration) string {
	return fmt.Sprintf("%.2fs", d.Seconds())
}

// bootProbe runs one probe VM and reports whether KVM ran the guest kernel to
// its panic, cleanly and in time. The QEMU process runs in its own process
// group, which is killed on timeout, on a fatal marker and on ctx's end; the
// process is always reaped before bootProbe returns. An error is returned
// only when the probe could not run or ctx ended; a KVM that misbehaves is a
// verdict, not an error.
func bootProbe(ctx context.Context, p bootParams) (bootOutcome, error) {
	var rnd [6]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		return bootOutcome{}, fmt.Errorf("name probe vm: %w", err)
	}
	name := ProbeNamePrefix + hex.EncodeToString(rnd[:])

	r, w, err := os.Pipe()
	if err != nil {
		return bootOutcome{}, fmt.Errorf("start probe vm %s: %w", name, err)
	}
	// Pdeathsig fires when the thread that forked QEMU exits. Go ends a
	// thread only when a goroutine locked to it returns without unlocking,
	// so holding this thread until QEMU is reaped keeps anyone else from
	// locking (and ending) it under the probe.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()

	cmd := exec.Command(p.QEMU, probeArgs(name, p.Kernel)...)
	cmd.Stdin = nil // /dev/null: QEMU's stdio chardev must not touch a terminal
	cmd.Stdout = w
	cmd.Stderr = w
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}

	start := time.Now()
	if err := cmd.Start(); err != nil {
		r.Close()
		w.Close()
		return bootOutcome{}, fmt.Errorf("start probe vm %s: %w", name, err)
	}
	w.Close() // the child holds its own copy; EOF comes when it exits
	pid := cmd.Process.Pid
	if p.OnStart != nil {
		p.OnStart(pid, name)
	}

	waitc := make(chan error, 1)
	go func() { waitc <- cmd.Wait() }()

	events := make(chan string, 2)
	tail := &lineTail{max: 8}
	readDone := make(chan struct{})
	go func() {
		defer close(readDone)
		watchOutput(r, tail, events)
	}()
	defer r.Close()

	timer := time.NewTimer(p.Timeout)
	defer timer.Stop()

	exited := false
	var waitErr error
	// finish kills the process group (QEMU itself if it still runs, and
	// anything left in its group, which would otherwise hold the output
	// pipe open), reaps QEMU and waits for the reader to see EOF.
	finish := func() {
		_ = syscall.Kill(-pid, syscall.SIGKILL)
		if !exited {
			waitErr = <-waitc
			exited = true
		}
		select {
		case <-readDone:
		case <-time.After(time.Second):
			// Something that left the group still holds the pipe's
			// write end: stop reading rather than wait for it.
			r.Close()
			<-readDone
		}
	}

	var panicked bool
	var panicAt time.Duration
	for !exited {
		select {
		case ev := <-events:
			switch ev {
			case markerPanic:
				if !panicked {
					panicked, panicAt = true, time.Since(start)
				}
			case markerInternalError:
				at := time.Since(start)
				finish()
				return bootOutcome{
					Reason:  fmt.Sprintf("KVM is emulated: guest hit '%s' after %s", markerInternalError, seconds(at)),
					Elapsed: at,
				}, nil
			}
		case waitErr = <-waitc:
			exited = true
		case <-timer.C:
			finish()
			if panicked {
				return bootOutcome{
					Reason:  fmt.Sprintf("KVM too slow: kernel panicked after %s but QEMU did not exit within %s", seconds(panicAt), seconds(p.Timeout)),
					Elapsed: p.Timeout,
				}, nil
			}
			return bootOutcome{
				Reason:  fmt.Sprintf("KVM too slow: kernel did not reach panic within %s", seconds(p.Timeout)),
				Elapsed: p.Timeout,
			}, nil
		case <-ctx.Done():
			finish()
			return bootOutcome{}, fmt.Errorf("probe vm %s: %w", name, ctx.Err())
		}
	}
	elapsed := time.Since(start)
	finish()
	// The reader may have seen more output after the exit: drain its events.
	for more := true; more; {
		select {
		case ev := <-events:
			switch ev {
			case markerPanic:
				panicked = true
			case markerInternalError:
				return bootOutcome{
					Reason:  fmt.Sprintf("KVM is emulated: guest hit '%s' after %s", markerInternalError, seconds(elapsed)),
					Elapsed: elapsed,
				}, nil
			}
		default:
			more = false
		}
	}

	if waitErr != nil {
		detail := tail.last()
		if detail == "" {
			detail = waitErr.Error()
		}
		var ee *exec.ExitError
		if !errors.As(waitErr, &ee) {
			return bootOutcome{}, fmt.Errorf("wait for probe vm %s: %w", name, waitErr)
		}
		return bootOutcome{
			Reason:  fmt.Sprintf("QEMU could not run the guest under KVM (%s after %s): %s", ee.ProcessState, seconds(elapsed), detail),
			Elapsed: elapsed,
		}, nil
	}
	if !panicked {
		return bootOutcome{
			Reason:  fmt.Sprintf("KVM is unreliable: QEMU exited after %s before the guest kernel reached its panic (guest reset or triple fault)", seconds(elapsed)),
			Elapsed: elapsed,
		}, nil
	}
	return bootOutcome{
		Usable:  true,
		Reason:  fmt.Sprintf("KVM works: guest kernel reached panic in %s", seconds(elapsed)),
		Elapsed: elapsed,
	}, nil
}

// watchOutput scans QEMU's combined output, reports each marker once on
// events and keeps the last lines in tail. It reads until EOF.
func watchOutput(r io.Reader, tail *lineTail, events chan<- string) {
	sent := map[string]bool{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 4096), 64*1024)
	for sc.Scan() {
		line := strings.TrimRight(sc.Text(), "\r")
		tail.add(line)
		for _, m := range []string{markerInternalError, markerPanic} {
			if !sent[m] && strings.Contains(line, m) {
				sent[m] = true
				events <- m // buffered for both markers
			}
		}
	}
	// A line too long for the scanner: keep the pipe drained until EOF.
	_, _ = io.Copy(io.Discard, r)
}

// lineTail keeps the last few non-empty lines of output. It is written by
// the reader goroutine and read only after that goroutine finished.
type lineTail struct {
	max   int
	lines []string
}

func (t *lineTail) add(line string) {
	line = strings.TrimSpace(printable(line))
	if line == "" {
		return
	}
	t.lines = append(t.lines, line)
	if len(t.lines) > t.max {
		t.lines = t.lines[len(t.lines)-t.max:]
	}
}

// last returns the most telling recent line: the last one QEMU itself wrote
// ("qemu-system-x86_64: ..."), else the last line.
func (t *lineTail) last() string {
	for i := len(t.lines) - 1; i >= 0; i-- {
		if strings.HasPrefix(t.lines[i], "qemu-system-") || strings.HasPrefix(t.lines[i], "qemu:") {
			return t.lines[i]
		}
	}
	if len(t.lines) == 0 {
		return ""
	}
	return t.lines[len(t.lines)-1]
}

// printable drops terminal escape sequences and control characters, which
// the firmware writes to the serial console.
func printable(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == 0x1b: // ESC: skip a CSI sequence, or the one byte after ESC
			if i+1 < len(s) && s[i+1] == '[' {
				i += 2
				for i < len(s) && (s[i] < 0x40 || s[i] > 0x7e) {
					i++
				}
			} else {
				i++
			}
		case c == '\t':
			b.WriteByte(' ')
		case c < 0x20 || c == 0x7f:
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}
