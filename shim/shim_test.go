package shim

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cocoon-runtime/cocoon"
	"github.com/cocoon-runtime/cocoon/config"
	"github.com/containerd/containerd/errdefs"
	"github.com/containerd/fifo"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

func TestPodOf(t *testing.T) {
	cases := []struct {
		name string
		id   string
		ann  map[string]string
		want pod
	}{
		{"ctr run", "c1", nil, pod{sandboxID: "c1", createsVM: true}},
		{"CRI sandbox", "p1", map[string]string{annContainerType: "sandbox", annSandboxID: "p1"}, pod{sandboxID: "p1", createsVM: true, cri: true}},
		{"CRI container", "c2", map[string]string{annContainerType: "container", annSandboxID: "p1"}, pod{sandboxID: "p1", cri: true}},
		{"CRI-O container", "c3", map[string]string{annCRIOContainerType: "container", annCRIOSandboxID: "p2"}, pod{sandboxID: "p2", cri: true}},
		{"container naming itself", "c4", map[string]string{annContainerType: "container", annSandboxID: "c4"}, pod{sandboxID: "c4", createsVM: true, cri: true}},
		{"container without sandbox id", "c5", map[string]string{annContainerType: "container"}, pod{sandboxID: "c5", createsVM: true, cri: true}},
	}
	for _, c := range cases {
		if got := podOf(c.id, c.ann); got != c.want {
			t.Errorf("%s: podOf = %+v, want %+v", c.name, got, c.want)
		}
	}
}

func TestHostNamespaces(t *testing.T) {
	all := []specs.LinuxNamespace{{Type: specs.PIDNamespace}, {Type: specs.IPCNamespace, Path: "/proc/7/ns/ipc"}, {Type: specs.NetworkNamespace, Path: "/var/run/netns/cni-1"}}
	if err := hostNamespaces(&specs.Spec{Linux: &specs.Linux{Namespaces: all}}); err != nil {
		t.Errorf("pod namespaces refused: %v", err)
	}
	for i, want := range []string{"hostPID", "hostIPC", "hostNetwork"} {
		nss := slices.Delete(slices.Clone(all), i, i+1)
		err := hostNamespaces(&specs.Spec{Linux: &specs.Linux{Namespaces: nss}})
		if !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), want) {
			t.Errorf("without %s: %v, want an invalid-argument error naming %s", all[i].Type, err, want)
		}
	}
	if err := hostNamespaces(&specs.Spec{}); err == nil {
		t.Error("spec without linux section accepted")
	}
}

func TestProcessStates(t *testing.T) {
	p := newProcess("c", "", stdio{}, nil)
	if err := p.move(statePaused); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Errorf("created -> paused: %v, want a precondition error", err)
	}
	for _, to := range []procState{stateRunning, statePaused, stateRunning} {
		if err := p.move(to); err != nil {
			t.Fatalf("move to %s: %v", to, err)
		}
	}
	if err := p.move(stateDeleted); err == nil {
		t.Error("a running process was deleted")
	}
	if !p.setExited(cocoon.ExitStatus{Code: 3}) {
		t.Fatal("first exit not recorded")
	}
	if p.setExited(cocoon.ExitStatus{Code: 255}) {
		t.Error("a second exit was recorded")
	}
	select {
	case <-p.done:
	default:
		t.Error("done not closed on exit")
	}
	if st := p.exitStatus(); st.Code != 3 || st.ExitedAt.IsZero() {
		t.Errorf("exit status %+v, want code 3 with a time", st)
	}
	if err := p.move(stateRunning); err == nil {
		t.Error("a stopped process was restarted")
	}
	if err := p.move(stateDeleted); err != nil {
		t.Errorf("stopped -> deleted: %v", err)
	}
	if p.current().taskStatus().String() != "STOPPED" {
		t.Errorf("deleted process reports %v", p.current().taskStatus())
	}
}

func TestGRPCErrorKinds(t *testing.T) {
	cases := []struct {
		err  error
		want func(error) bool
	}{
		{fmt.Errorf("x: %w", cocoon.ErrNotFound), errdefs.IsNotFound},
		{fmt.Errorf("x: %w", cocoon.ErrExists), errdefs.IsAlreadyExists},
		{fmt.Errorf("x: %w", cocoon.ErrInvalidConfig), errdefs.IsInvalidArgument},
		{fmt.Errorf("x: %w", config.ErrAnnotationNotAllowed), errdefs.IsInvalidArgument},
		{fmt.Errorf("x: %w", cocoon.ErrState), errdefs.IsFailedPrecondition},
		{fmt.Errorf("x: %w", errdefs.ErrNotImplemented), errdefs.IsNotImplemented},
	}
	for _, c := range cases {
		got := errdefs.FromGRPC(grpcError(c.err))
		if !c.want(got) {
			t.Errorf("grpcError(%v) came back as %v", c.err, got)
		}
		if !strings.Contains(got.Error(), "x") {
			t.Errorf("grpcError(%v) lost the message: %v", c.err, got)
		}
	}
	if grpcError(nil) != nil {
		t.Error("grpcError(nil) is not nil")
	}
}

// streams fakes a process's guest streams with socket pairs: the test
// holds the guest's ends.
type streams struct {
	in, out, errs          net.Conn // shim side
	guestIn, guestOut, gEr net.Conn
}

func newStreams(t *testing.T) *streams {
	s := &streams{}
	s.in, s.guestIn = net.Pipe()
	s.out, s.guestOut = net.Pipe()
	s.errs, s.gEr = net.Pipe()
	return s
}

func TestStdioFifos(t *testing.T) {
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	paths := map[string]string{}
	for _, n := range []string{"in", "out", "err"} {
		paths[n] = filepath.Join(dir, n)
		if err := syscall.Mkfifo(paths[n], 0o600); err != nil {
			t.Fatal(err)
		}
	}
	// containerd's side of the FIFOs.
	stdinW, err := fifo.OpenFifo(ctx, paths["in"], syscall.O_WRONLY|syscall.O_NONBLOCK|syscall.O_CREAT, 0)
	if err != nil {
		t.Fatal(err)
	}
	stdoutR, err := fifo.OpenFifo(ctx, paths["out"], syscall.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	stderrR, err := fifo.OpenFifo(ctx, paths["err"], syscall.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	s := newStreams(t)
	p, err := connect(ctx, "ns", "c1", stdio{stdin: paths["in"], stdout: paths["out"], stderr: paths["err"]}, s.in, s.out, s.errs)
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		stdinW.Write([]byte("to the process"))
		stdinW.Close()
	}()
	got, _ := io.ReadAll(s.guestIn)
	if string(got) != "to the process" {
		t.Errorf("guest stdin got %q", got)
	}
	go func() {
		s.guestOut.Write([]byte("standard output"))
		s.guestOut.Close()
		s.gEr.Write([]byte("standard error"))
		s.gEr.Close()
	}()
	out, _ := io.ReadAll(stdoutR)
	errs, _ := io.ReadAll(stderrR)
	if string(out) != "standard output" || string(errs) != "standard error" {
		t.Errorf("containerd read stdout %q stderr %q", out, errs)
	}
	p.close()
}

// A reader that leaves does not stop the output being drained.
func TestStdioReaderGone(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	path := filepath.Join(dir, "out")
	if err := syscall.Mkfifo(path, 0o600); err != nil {
		t.Fatal(err)
	}
	r, err := fifo.OpenFifo(ctx, path, syscall.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	s := newStreams(t)
	p, err := connect(ctx, "ns", "c1", stdio{stdout: path}, s.in, s.out, nil)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 5)
	s.guestOut.Write([]byte("hello"))
	if _, err := io.ReadFull(r, buf); err != nil || string(buf) != "hello" {
		t.Fatalf("read %q, %v", buf, err)
	}
	r.Close()
	done := make(chan error, 1)
	go func() {
		chunk := make([]byte, 64<<10)
		for range 64 { // 4 MiB: far more than a pipe holds
			if _, err := s.guestOut.Write(chunk); err != nil {
				done <- err
				return
			}
		}
		done <- s.guestOut.Close()
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("output blocked after its reader left")
	}
	p.close()
}

func TestStdioFileURI(t *testing.T) {
	log := filepath.Join(t.TempDir(), "c.log")
	s := newStreams(t)
	p, err := connect(context.Background(), "ns", "c1", stdio{stdout: "file://" + log, stderr: "file://" + log}, s.in, s.out, s.errs)
	if err != nil {
		t.Fatal(err)
	}
	s.guestOut.Write([]byte("out\n"))
	s.guestOut.Close()
	p.drain(time.Second) // stderr still open: only stdout has ended
	s.gEr.Write([]byte("err\n"))
	s.gEr.Close()
	p.close()
	b, _ := os.ReadFile(log)
	if string(b) != "out\nerr\n" {
		t.Errorf("log file has %q", b)
	}
}

// A binary:// logging driver gets stdout on fd 3, stderr on fd 4, and
// signals readiness by closing fd 5, as containerd's drivers do.
func TestStdioBinaryURI(t *testing.T) {
	dir := t.TempDir()
	driver := filepath.Join(dir, "driver")
	script := "#!/bin/sh\nexec 5>&-\ncat <&3 > \"$1.out\" & cat <&4 > \"$1.err\"; wait\necho \"$CONTAINER_ID $CONTAINER_NAMESPACE\" > \"$1.env\"\n"
	if err := os.WriteFile(driver, []byte(script), 0o700); err != nil {
		t.Fatal(err)
	}
	base := filepath.Join(dir, "log")
	uri := "binary://" + driver + "?" + base
	s := newStreams(t)
	p, err := connect(context.Background(), "ns1", "c9", stdio{stdout: uri, stderr: uri}, s.in, s.out, s.errs)
	if err != nil {
		t.Fatal(err)
	}
	s.guestOut.Write([]byte("to stdout"))
	s.guestOut.Close()
	s.gEr.Write([]byte("to stderr"))
	s.gEr.Close()
	p.close()
	for suffix, want := range map[string]string{".out": "to stdout", ".err": "to stderr", ".env": "c9 ns1\n"} {
		b, _ := os.ReadFile(base + suffix)
		if string(b) != want {
			t.Errorf("driver wrote %q to %s, want %q", b, suffix, want)
		}
	}
}

func TestStdioBadScheme(t *testing.T) {
	s := newStreams(t)
	if _, err := connect(context.Background(), "ns", "c1", stdio{stdout: "http://x/y"}, s.in, s.out, s.errs); err == nil {
		t.Fatal("an http:// stdout was accepted")
	}
	// The streams were closed: the guest sees its ends fail.
	if _, err := s.guestOut.Write([]byte("x")); err == nil {
		t.Error("stdout stream left open after a failed connect")
	}
}

func TestBundleRecord(t *testing.T) {
	dir := t.TempDir()
	if _, err := readBundleRecord(dir); !os.IsNotExist(err) {
		t.Errorf("no record: %v, want not-exist", err)
	}
	rec := bundleRecord{SandboxID: "p1", StateDir: "/run/x", DataDir: "/var/lib/x"}
	if err := writeBundleRecord(dir, rec); err != nil {
		t.Fatal(err)
	}
	st, _ := os.Stat(filepath.Join(dir, bundleRecordFile))
	if st.Mode().Perm() != 0o600 {
		t.Errorf("record mode %v, want 0600", st.Mode().Perm())
	}
	if got, err := readBundleRecord(dir); err != nil || got != rec {
		t.Errorf("read back %+v, %v", got, err)
	}
	os.WriteFile(filepath.Join(dir, bundleRecordFile), []byte("{"), 0o600)
	if _, err := readBundleRecord(dir); err == nil {
		t.Error("a corrupt record was accepted")
	}
}

// stdinFIFO connects a process's stdin to a FIFO that the test writes as
// the client: it returns the client's writer, the pipes, and what the
// process will have read once its stdin closed.
func stdinFIFO(t *testing.T, ctx context.Context) (io.WriteCloser, *pipes, <-chan string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "in")
	if err := syscall.Mkfifo(path, 0o600); err != nil {
		t.Fatal(err)
	}
	w, err := fifo.OpenFifo(ctx, path, syscall.O_WRONLY|syscall.O_NONBLOCK|syscall.O_CREAT, 0)
	if err != nil {
		t.Fatal(err)
	}
	s := newStreams(t)
	got := make(chan string, 1)
	go func() { b, _ := io.ReadAll(s.guestIn); got <- string(b) }()
	p, err := connect(ctx, "ns", "c1", stdio{stdin: path}, s.in, s.out, s.errs)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		w.Close()
		s.guestOut.Close()
		s.gEr.Close()
		p.close()
	})
	return w, p, got
}

// CloseIO right after the client's last write, before it closes the FIFO
// (what ctr does), still delivers what was written.
func TestStdioCloseIOKeepsWrittenInput(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	w, p, got := stdinFIFO(t, ctx)
	if _, err := w.Write([]byte("last words")); err != nil {
		t.Fatal(err)
	}
	p.closeStdinSoon() // CloseIO
	time.Sleep(50 * time.Millisecond)
	w.Close()
	select {
	case b := <-got:
		if b != "last words" {
			t.Errorf("the process read %q, want the bytes written before CloseIO", b)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("stdin was never closed")
	}
}

// A client that keeps its FIFO open still gets stdin closed by CloseIO.
func TestStdioCloseIOWithFIFOOpen(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	w, p, got := stdinFIFO(t, ctx)
	if _, err := w.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	p.closeStdinSoon()
	select {
	case b := <-got:
		if b != "x" {
			t.Errorf("the process read %q, want x", b)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("CloseIO did not close stdin while the client kept the FIFO open")
	}
}

// The pod's interface counters reach containerd's metrics, one entry each.
func TestMetricsNetwork(t *testing.T) {
	st := &cocoon.ContainerStats{Network: []cocoon.InterfaceStats{
		{Name: "eth0", NetStats: cocoon.NetStats{RxBytes: 10, RxPackets: 2, TxBytes: 30, TxPackets: 4, RxDropped: 1, TxErrors: 5}},
		{Name: "net1", NetStats: cocoon.NetStats{TxBytes: 7}},
	}}
	m := metrics(st)
	if len(m.Network) != 2 {
		t.Fatalf("network metrics: %v", m.Network)
	}
	e := m.Network[0]
	if e.Name != "eth0" || e.RxBytes != 10 || e.RxPackets != 2 || e.TxBytes != 30 || e.TxPackets != 4 || e.RxDropped != 1 || e.TxErrors != 5 {
		t.Errorf("eth0 metrics: %v", e)
	}
	if m.Network[1].Name != "net1" || m.Network[1].TxBytes != 7 {
		t.Errorf("net1 metrics: %v", m.Network[1])
	}
}
