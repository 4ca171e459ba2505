package agent

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"strings"
	"testing"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/cocoon-runtime/cocoon/agent/protocol"
	"google.golang.org/protobuf/proto"
)

// The guest may own its kernel: these targets feed the host what a hostile
// guest could send and check that the host's checks hold.

// printable reports whether s is within max bytes of printable text,
// what guesttext.Line promises.
func printable(s string, max int) bool {
	return len(s) <= max && utf8.ValidString(s) && !strings.ContainsFunc(s, func(r rune) bool { return !unicode.IsPrint(r) })
}

func addMessage(f *testing.F, m proto.Message) {
	f.Helper()
	b, err := proto.Marshal(m)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(b)
}

// FuzzValidateDetails unmarshals arbitrary bytes into the guest details
// reply and runs the host's validation: it must never panic, accept
// exactly the replies within the documented limits and return only
// bounded, printable strings.
func FuzzValidateDetails(f *testing.F) {
	addMessage(f, &protocol.GuestDetails{
		KernelRelease: "6.1.0", KernelVersion: "#1 SMP", Machine: "x86_64", Hostname: "cocoon",
		OnlineCpus: 2, MemTotalBytes: 256 << 20, MemFreeBytes: 100 << 20, UptimeNs: 1e9,
		Modules: []string{"virtio_blk", "overlay"}, BootToServeNs: 5e8, AgentVersion: "v1",
		MemBlockSizeBytes: 128 << 20, BlockDevices: []string{"vda"},
	})
	addMessage(f, &protocol.GuestDetails{KernelRelease: "6.1\x1b[31m\n" + strings.Repeat("A", 300), Hostname: "h\x00ost", MemTotalBytes: 10, MemFreeBytes: 11})
	addMessage(f, &protocol.GuestDetails{OnlineCpus: maxCPUs + 1, UptimeNs: 1<<64 - 1, BootToServeNs: 1 << 63})
	addMessage(f, &protocol.GuestDetails{Modules: make([]string, maxModules+1)})
	f.Add([]byte{0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f})
	f.Fuzz(func(t *testing.T, b []byte) {
		var r protocol.GuestDetails
		if proto.Unmarshal(b, &r) != nil {
			return
		}
		d, err := validateDetails(&r)
		inBounds := len(r.Modules) <= maxModules && len(r.BlockDevices) <= maxModules &&
			r.OnlineCpus <= maxCPUs && r.MemTotalBytes <= maxMemory && r.MemFreeBytes <= r.MemTotalBytes
		if inBounds != (err == nil) {
			t.Fatalf("validateDetails(%v) = %v", &r, err)
		}
		if err != nil {
			if !errors.Is(err, ErrProtocol) {
				t.Fatalf("error %v does not wrap ErrProtocol", err)
			}
			return
		}
		for _, s := range []struct {
			v   string
			max int
		}{
			{d.KernelRelease, maxFieldSize}, {d.KernelVersion, maxFieldSize}, {d.Machine, 32},
			{d.Hostname, 64}, {d.AgentVersion, maxVersion},
		} {
			if !printable(s.v, s.max) {
				t.Fatalf("field %q is not %d bytes of printable ASCII", s.v, s.max)
			}
		}
		if len(d.Modules) != len(r.Modules) || len(d.BlockDevices) != len(r.BlockDevices) {
			t.Fatalf("%d modules and %d devices from %d and %d", len(d.Modules), len(d.BlockDevices), len(r.Modules), len(r.BlockDevices))
		}
		for _, m := range d.Modules {
			if !printable(m, 64) {
				t.Fatalf("module %q", m)
			}
		}
		for _, m := range d.BlockDevices {
			if !printable(m, 32) {
				t.Fatalf("block device %q", m)
			}
		}
		if d.Uptime < 0 || d.BootToServe < 0 {
			t.Fatalf("negative durations: uptime %v, boot to serve %v", d.Uptime, d.BootToServe)
		}
		if d.OnlineCPUs != r.OnlineCpus || d.MemTotal != r.MemTotalBytes || d.MemFree != r.MemFreeBytes || d.MemBlockSize != r.MemBlockSizeBytes {
			t.Fatalf("numbers changed: %+v from %v", d, &r)
		}
	})
}

// FuzzValidateProcesses does the same for the process list.
func FuzzValidateProcesses(f *testing.F) {
	addMessage(f, &protocol.ProcessList{Processes: []*protocol.ProcessInfo{
		{Pid: 1, Ppid: 0, Command: "sleep 1000", State: "S"},
		{Pid: 7, Ppid: 1, Command: "sh -c \x1b[2J" + strings.Repeat("x", maxCommand), State: "R (running)"},
	}})
	addMessage(f, &protocol.ProcessList{Processes: []*protocol.ProcessInfo{{Pid: -1, Ppid: -2147483648}}})
	addMessage(f, &protocol.ProcessList{})
	f.Add([]byte{0x0a, 0x00, 0x0a, 0x00})
	f.Fuzz(func(t *testing.T, b []byte) {
		var r protocol.ProcessList
		if proto.Unmarshal(b, &r) != nil {
			return
		}
		ps, err := validateProcesses(&r)
		if (len(r.Processes) <= maxProcesses) != (err == nil) {
			t.Fatalf("%d processes: %v", len(r.Processes), err)
		}
		if err != nil {
			if !errors.Is(err, ErrProtocol) || ps != nil {
				t.Fatalf("refused with %v and %d processes", err, len(ps))
			}
			return
		}
		if len(ps) != len(r.Processes) {
			t.Fatalf("%d processes from %d", len(ps), len(r.Processes))
		}
		for i, p := range ps {
			if !printable(p.Command, maxCommand) || !printable(p.State, maxProcessState) {
				t.Fatalf("process %d: command %q state %q", i, p.Command, p.State)
			}
			if p.Pid != int(r.Processes[i].Pid) || p.PPid != int(r.Processes[i].Ppid) {
				t.Fatalf("process %d: pids %d %d from %v", i, p.Pid, p.PPid, r.Processes[i])
			}
		}
	})
}

// FuzzValidateReplies unmarshals the same bytes into the small replies (an
// exit status, a container state, a version) and checks each one's
// validation.
func FuzzValidateReplies(f *testing.F) {
	addMessage(f, &protocol.ExitStatus{Code: 3, Signal: 0, OomKilled: true, ExitedAtUnixNano: 1})
	addMessage(f, &protocol.ExitStatus{Code: -1, Signal: 65})
	addMessage(f, &protocol.ContainerState{Status: protocol.ContainerState_RUNNING, Pid: 1, CreatedUnixNano: 1 << 62})
	addMessage(f, &protocol.ContainerState{Status: protocol.ContainerState_UNKNOWN})
	addMessage(f, &protocol.ContainerState{Status: 99})
	addMessage(f, &protocol.VersionResponse{AgentVersion: "v1\n\x1b", ProtocolVersion: protocol.Version})
	addMessage(f, &protocol.VersionResponse{ProtocolVersion: protocol.Version + 1})
	f.Fuzz(func(t *testing.T, b []byte) {
		var ex protocol.ExitStatus
		if proto.Unmarshal(b, &ex) == nil {
			e, err := validateExit(&ex)
			ok := ex.Code >= 0 && ex.Code <= 255 && ex.Signal >= 0 && ex.Signal <= 64
			if ok != (err == nil) || err != nil && !errors.Is(err, ErrProtocol) {
				t.Fatalf("validateExit(%v) = %v", &ex, err)
			}
			if err == nil && (e.Code != int(ex.Code) || e.Signal != int(ex.Signal) || e.OOMKilled != ex.OomKilled || e.ExitedAt.UnixNano() != ex.ExitedAtUnixNano) {
				t.Fatalf("validateExit(%v) = %+v", &ex, e)
			}
		}
		var cs protocol.ContainerState
		if proto.Unmarshal(b, &cs) == nil {
			st, err := validateState(&cs)
			ok := cs.Status == ContainerCreated || cs.Status == ContainerRunning || cs.Status == ContainerPaused || cs.Status == ContainerStopped
			if ok != (err == nil) || err != nil && !errors.Is(err, ErrProtocol) {
				t.Fatalf("validateState(%v) = %v", &cs, err)
			}
			if err == nil && (st.Status != cs.Status || st.Pid != int(cs.Pid) || st.Created.UnixNano() != cs.CreatedUnixNano) {
				t.Fatalf("validateState(%v) = %+v", &cs, st)
			}
		}
		var vr protocol.VersionResponse
		if proto.Unmarshal(b, &vr) == nil {
			v, err := validateVersion(&vr)
			if (vr.ProtocolVersion == protocol.Version) != (err == nil) || err != nil && !errors.Is(err, ErrProtocol) {
				t.Fatalf("validateVersion(%v) = %v", &vr, err)
			}
			if !printable(v.Agent, maxVersion) || v.Protocol != vr.ProtocolVersion {
				t.Fatalf("validateVersion(%v) = %+v", &vr, v)
			}
		}
	})
}

// FuzzAwaitHello plays a guest that writes arbitrary bytes, in arbitrary
// pieces (sizes gives their lengths; a 0 is an empty write), on the serial
// port before its session: the host must take the greeting exactly when the
// bytes contain it, and leave what follows it unread for the session.
func FuzzAwaitHello(f *testing.F) {
	f.Add([]byte(protocol.SerialHello), []byte{})
	f.Add([]byte("stale yamux frames\x00\x01"+protocol.SerialHello+"\x00\x00\x00\x01"), []byte{3, 1, 40})
	f.Add([]byte(protocol.SerialHello[:10]), []byte{})
	f.Add([]byte("\x00cocoon-agent-hello-2\n"), []byte{})
	// An empty write reaches net.Pipe's reader as a read of no bytes; the
	// host once took the stale contents of its buffer for a byte read, and
	// so the greeting's leading NUL.
	f.Add([]byte(protocol.SerialHello[1:]), []byte{0})
	f.Fuzz(func(t *testing.T, in, sizes []byte) {
		host, guest := net.Pipe()
		defer host.Close()
		go func() {
			defer guest.Close()
			rest := in
			for _, s := range sizes {
				n := min(int(s), len(rest))
				if _, err := guest.Write(rest[:n]); err != nil {
					return
				}
				rest = rest[n:]
			}
			if len(rest) > 0 {
				guest.Write(rest)
			}
		}()
		// The guest closes its end after its bytes; the timeout only
		// turns a hang into a failure.
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		err := awaitHello(ctx, host)
		at := bytes.Index(in, []byte(protocol.SerialHello))
		if (at >= 0) != (err == nil) {
			t.Fatalf("awaitHello(%q in pieces %v) = %v", in, sizes, err)
		}
		if errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatal("awaitHello hung")
		}
		if err != nil {
			return
		}
		rest, err := io.ReadAll(host)
		if err != nil {
			t.Fatal(err)
		}
		if want := in[at+len(protocol.SerialHello):]; !bytes.Equal(rest, want) {
			t.Fatalf("after the greeting: %q, want %q", rest, want)
		}
	})
}
