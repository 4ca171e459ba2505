package shim

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/fifo"
	"github.com/containerd/log"
)

// stdio names where containerd wants a process's streams: FIFO paths, or
// for output a file:// or binary:// URI.
type stdio struct {
	stdin, stdout, stderr string
	terminal              bool
}

// outputDrain bounds how long an exit waits for the process's output to
// reach containerd after the process ended (a child may keep stdout open).
const outputDrain = 2 * time.Second

// copyBufferSize is the chunk of output copied at once.
const copyBufferSize = 128 << 10

// pipes joins a process's streams in the guest to containerd's stdio.
type pipes struct {
	stdin     io.WriteCloser // guest side; nil once closed
	stdinMu   sync.Mutex
	inFifo    io.Closer
	stdinDone chan struct{} // closed when the stdin copy has ended

	output  sync.WaitGroup // stdout and stderr copies
	closers []io.Closer    // the guest's streams, closed by close
	sinks   []io.Closer    // shared sinks (a log file), closed after the copies
	logger  *exec.Cmd      // binary:// log driver, if any
}

// connect starts copying between the process's guest streams and sio.
// Opening containerd's FIFOs happens in the background, so a reader that
// comes late does not block the caller.
func connect(ctx context.Context, ns, id string, sio stdio, in io.WriteCloser, out, errs io.ReadCloser) (*pipes, error) {
	p := &pipes{stdin: in, stdinDone: make(chan struct{})}
	outSink, errSink, err := p.openSinks(ctx, ns, id, sio)
	if err != nil {
		in.Close()
		out.Close()
		if errs != nil {
			errs.Close()
		}
		return nil, err
	}
	p.closers = append(p.closers, out)
	p.copyOut(out, outSink)
	if errs != nil {
		p.closers = append(p.closers, errs)
		p.copyOut(errs, errSink)
	}
	if sio.stdin == "" {
		p.closeStdin()
		close(p.stdinDone)
	} else {
		go p.copyIn(ctx, sio.stdin)
	}
	return p, nil
}

// sink opens an output destination lazily.
type sink func() (io.WriteCloser, error)

func (p *pipes) openSinks(ctx context.Context, ns, id string, sio stdio) (out, errs sink, err error) {
	u, perr := url.Parse(sio.stdout)
	if perr != nil || u.Scheme == "" || u.Scheme == "fifo" {
		return fifoSink(ctx, sio.stdout), fifoSink(ctx, sio.stderr), nil
	}
	switch u.Scheme {
	case "file":
		f, err := os.OpenFile(u.Path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o640)
		if err != nil {
			return nil, nil, fmt.Errorf("open log file: %w", err)
		}
		p.sinks = append(p.sinks, f)
		shared := func() (io.WriteCloser, error) { return nopCloser{f}, nil }
		return shared, shared, nil
	case "binary":
		o, e, err := p.startLogDriver(ns, id, u)
		if err != nil {
			return nil, nil, err
		}
		return func() (io.WriteCloser, error) { return o, nil }, func() (io.WriteCloser, error) { return e, nil }, nil
	}
	return nil, nil, fmt.Errorf("unsupported stdio scheme %q", u.Scheme)
}

// fifoSink opens containerd's FIFO for writing; an empty path discards.
func fifoSink(ctx context.Context, path string) sink {
	return func() (io.WriteCloser, error) {
		if path == "" {
			return nopCloser{io.Discard}, nil
		}
		return fifo.OpenFifo(ctx, path, syscall.O_WRONLY, 0)
	}
}

// startLogDriver runs a binary:// logging driver the way containerd's
// shims do: it reads stdout on fd 3 and stderr on fd 4 and closes fd 5
// when it is ready.
func (p *pipes) startLogDriver(ns, id string, u *url.URL) (stdout, stderr io.WriteCloser, err error) {
	var args []string
	for k, vs := range u.Query() {
		args = append(args, k)
		if len(vs) > 0 {
			args = append(args, vs[0])
		}
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		return nil, nil, err
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		outR.Close()
		outW.Close()
		return nil, nil, err
	}
	readyR, readyW, err := os.Pipe()
	if err != nil {
		outR.Close()
		outW.Close()
		errR.Close()
		errW.Close()
		return nil, nil, err
	}
	cmd := exec.Command(u.Path, args...)
	cmd.Env = append(os.Environ(), "CONTAINER_ID="+id, "CONTAINER_NAMESPACE="+ns)
	cmd.ExtraFiles = []*os.File{outR, errR, readyW}
	err = cmd.Start()
	outR.Close()
	errR.Close()
	readyW.Close()
	if err != nil {
		readyR.Close()
		outW.Close()
		errW.Close()
		return nil, nil, fmt.Errorf("start log driver %s: %w", u.Path, err)
	}
	// The driver closes its end of the ready pipe once it reads.
	readyR.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, rerr := readyR.Read(make([]byte, 1))
	readyR.Close()
	if rerr != nil && !errors.Is(rerr, io.EOF) {
		cmd.Process.Kill()
		cmd.Wait()
		outW.Close()
		errW.Close()
		return nil, nil, fmt.Errorf("log driver %s not ready: %w", u.Path, rerr)
	}
	p.logger = cmd
	return outW, errW, nil
}

// copyOut copies a guest output stream to its sink until the guest ends
// it. If containerd's reader goes away the output is still drained, so the
// process in the guest never blocks on a full pipe.
func (p *pipes) copyOut(src io.Reader, open sink) {
	p.output.Add(1)
	go func() {
		defer p.output.Done()
		dst, err := open()
		if err != nil {
			dst = nopCloser{io.Discard}
		}
		defer dst.Close()
		buf := make([]byte, copyBufferSize)
		w := &tolerantWriter{w: dst}
		io.CopyBuffer(w, src, buf)
	}()
}

// copyIn copies containerd's stdin FIFO to the process until EOF, then
// closes the process's stdin.
func (p *pipes) copyIn(ctx context.Context, path string) {
	defer close(p.stdinDone)
	f, err := fifo.OpenFifo(ctx, path, syscall.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		log.G(ctx).WithError(err).Warn("open stdin fifo")
		p.closeStdin()
		return
	}
	p.stdinMu.Lock()
	p.inFifo = f
	w := p.stdin
	p.stdinMu.Unlock()
	if w != nil {
		io.CopyBuffer(w, f, make([]byte, 32<<10))
	}
	f.Close()
	p.closeStdin()
}

// stdinCloseGrace bounds how long a close of stdin (CloseIO) waits for the
// stdin copy to reach the end of what the client wrote.
const stdinCloseGrace = 500 * time.Millisecond

// closeStdinSoon closes the process's stdin for CloseIO, without losing
// what the client already wrote: ctr asks for the close as soon as its
// last write returned, before it closes the FIFO, so the bytes may still
// be in the FIFO. The copy delivers them and closes stdin itself at the
// FIFO's end; a client that keeps the FIFO open gets the close after
// stdinCloseGrace.
func (p *pipes) closeStdinSoon() {
	go func() {
		select {
		case <-p.stdinDone:
		case <-time.After(stdinCloseGrace):
		}
		p.closeStdin()
	}()
}

// closeStdin closes the process's stdin (CloseIO, or stdin's EOF).
func (p *pipes) closeStdin() {
	p.stdinMu.Lock()
	defer p.stdinMu.Unlock()
	if p.stdin != nil {
		p.stdin.Close()
		p.stdin = nil
	}
	if p.inFifo != nil {
		p.inFifo.Close()
		p.inFifo = nil
	}
}

// drain waits until the output was delivered or d passed.
func (p *pipes) drain(d time.Duration) {
	done := make(chan struct{})
	go func() { p.output.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(d):
	}
}

// close ends every copy and releases the streams.
func (p *pipes) close() {
	p.closeStdin()
	for _, c := range p.closers {
		c.Close()
	}
	// A copy may still hold a chunk it read: sinks close after it wrote.
	p.drain(outputDrain)
	for _, c := range p.sinks {
		c.Close()
	}
	if p.logger != nil {
		done := make(chan struct{})
		go func() { p.logger.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(outputDrain):
			p.logger.Process.Kill()
			<-done
		}
	}
}

// tolerantWriter passes writes on until the first error, then discards:
// output keeps being drained after its reader left.
type tolerantWriter struct {
	w      io.Writer
	failed bool
}

func (t *tolerantWriter) Write(b []byte) (int, error) {
	if !t.failed {
		if _, err := t.w.Write(b); err != nil {
			t.failed = true
		}
	}
	return len(b), nil
}

type nopCloser struct{ io.Writer }

func (nopCloser) Close() error { return nil }
