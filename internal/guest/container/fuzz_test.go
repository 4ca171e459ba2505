package container

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/opencontainers/runc/libcontainer/seccomp"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// FuzzPrepareSpec unmarshals arbitrary bytes into the spec the host sends
// and prepares it as the agent does: it must never panic nor change its
// input, and what it accepts must have a process with arguments and an
// absolute cwd, its root at the rootfs, absolute mount destinations and
// bind sources, no hooks, the required namespaces and a clean cgroup
// path under the root.
func FuzzPrepareSpec(f *testing.F) {
	for _, s := range []*specs.Spec{
		testSpec("sh", "-c", "true"),
		{Process: &specs.Process{Args: []string{"sh"}}, Root: &specs.Root{Path: "elsewhere", Readonly: true},
			Hooks:  &specs.Hooks{Prestart: []specs.Hook{{Path: "/host/bin"}}},
			Mounts: []specs.Mount{{Destination: "/data", Source: "/shared/x", Options: []string{"rbind", "ro"}}, {Destination: "/proc", Type: "proc", Source: "proc"}},
			Linux: &specs.Linux{CgroupsPath: "/pods/../x", Namespaces: []specs.LinuxNamespace{{Type: specs.NetworkNamespace}, {Type: specs.PIDNamespace, Path: "/proc/self/ns/pid"}},
				Sysctl: map[string]string{"net.ipv4.ip_forward": "1"}, MountLabel: "label"}},
		{Process: &specs.Process{Args: []string{""}, Cwd: "relative"}},
		{Process: &specs.Process{Args: []string{"a"}}, Mounts: []specs.Mount{{Destination: "relative"}}},
		{Process: &specs.Process{Args: []string{"a"}}, Mounts: []specs.Mount{{Destination: "/m", Type: "bind", Source: "rel"}}},
		{Process: &specs.Process{Args: []string{"a"}}, Linux: &specs.Linux{CgroupsPath: "//"}},
		{Process: &specs.Process{Args: []string{"a"}}, Linux: &specs.Linux{Seccomp: &specs.LinuxSeccomp{DefaultAction: specs.ActAllow}}},
	} {
		b, err := json.Marshal(s)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b, "c1", false)
	}
	f.Add([]byte(`{"process": null}`), "c1", true)
	f.Add([]byte(`{"process": {"args": ["x"]}, "linux": {"namespaces": [{"type": "mount", "path": "/nonexistent"}]}}`), "..", false)
	rootfs := filepath.Join(f.TempDir(), "rootfs")
	if err := os.Mkdir(rootfs, 0o755); err != nil {
		f.Fatal(err)
	}
	log := slog.New(slog.DiscardHandler)
	f.Fuzz(func(t *testing.T, b []byte, id string, terminal bool) {
		var spec specs.Spec
		if json.Unmarshal(b, &spec) != nil {
			return
		}
		if validateID(id) != nil {
			return // Manager.Create checks the ID first
		}
		before, err := json.Marshal(&spec)
		if err != nil {
			return
		}
		s, err := prepareSpec(id, &spec, rootfs, terminal, log)
		if after, _ := json.Marshal(&spec); !bytes.Equal(before, after) {
			t.Fatalf("prepareSpec changed its input:\n%s\nto\n%s", before, after)
		}
		if err != nil {
			return
		}
		p := s.Process
		if p == nil || len(p.Args) == 0 || p.Args[0] == "" || !path.IsAbs(p.Cwd) || p.Terminal != terminal {
			t.Fatalf("prepared process %+v", p)
		}
		if s.Root == nil || s.Root.Path != rootfs {
			t.Fatalf("prepared root %+v, want %s", s.Root, rootfs)
		}
		for _, m := range s.Mounts {
			if !path.IsAbs(m.Destination) || isBind(m) && !filepath.IsAbs(m.Source) {
				t.Fatalf("prepared mount %+v", m)
			}
		}
		if s.Hooks != nil {
			t.Fatal("hooks kept")
		}
		l := s.Linux
		if l == nil {
			t.Fatal("no linux section")
		}
		for _, want := range []specs.LinuxNamespaceType{specs.PIDNamespace, specs.MountNamespace, specs.IPCNamespace, specs.UTSNamespace} {
			if !slices.ContainsFunc(l.Namespaces, func(ns specs.LinuxNamespace) bool { return ns.Type == want }) {
				t.Fatalf("no %s namespace in %+v", want, l.Namespaces)
			}
		}
		cp := l.CgroupsPath
		if cp == "/" || !path.IsAbs(cp) || path.Clean(cp) != cp || strings.Contains(cp, "..") {
			t.Fatalf("cgroups path %q", cp)
		}
		if l.Seccomp != nil && !seccomp.Enabled {
			t.Fatal("a seccomp profile kept without seccomp support")
		}
	})
}

// FuzzZygoteRequest checks the zygote's C request parser against
// zygoteRequest, which encodes the agent's requests: the parser takes
// exactly the requests it could have made, and gets their arguments back.
func FuzzZygoteRequest(f *testing.F) {
	f.Add([]byte("sh\x00-c\x00echo hi\x00"))
	f.Add([]byte("\x00"))
	f.Add([]byte("\x00\x00\x00"))
	f.Add([]byte("no terminator"))
	f.Add([]byte{})
	f.Add(bytes.Repeat([]byte("a\x00"), zygoteMaxArgs))
	f.Add(bytes.Repeat([]byte("\x00"), zygoteMaxArgs+1))
	f.Fuzz(func(t *testing.T, req []byte) {
		if len(req) > zygoteMaxRequest {
			return // the zygote's recvmsg truncates it and the zygote exits
		}
		args, ok := zygoteParse(req)
		var want []string
		if len(req) > 0 && req[len(req)-1] == 0 {
			want = strings.Split(string(req[:len(req)-1]), "\x00")
		}
		wantOK := len(want) > 0 && len(want) <= zygoteMaxArgs
		if ok != wantOK || ok && !slices.Equal(args, want) {
			t.Fatalf("zygote parser(%q) = %q, %v; want %q, %v", req, args, ok, want, wantOK)
		}
		if !ok {
			return
		}
		enc, err := zygoteRequest(args)
		if err != nil || !bytes.Equal(enc, req) {
			t.Fatalf("zygoteRequest(%q) = %q, %v; want %q", args, enc, err, req)
		}
	})
}

// FuzzZygoteReplies plays a zygote taken over by the container, which
// answers a request with arbitrary messages: each is a length byte and that
// many bytes, sent as one packet from this process. start must never
// panic nor return a pid (no message comes from a child of the agent), and
// reports a failure that leaves the zygote usable only for the status
// message of an errno from the zygote itself.
func FuzzZygoteReplies(f *testing.F) {
	status := func(errno uint32) []byte {
		return binary.NativeEndian.AppendUint32([]byte{5, 's'}, errno)
	}
	f.Add(append([]byte{1, 'p'}, status(0)...), true)
	f.Add(status(2), true)
	f.Add(status(2), false)
	f.Add(append([]byte{1, 'p'}, status(0)...), false)
	f.Add([]byte{4, 's', 0, 0, 0}, true)
	f.Add([]byte{0}, true)
	f.Add(append([]byte{17}, bytes.Repeat([]byte{'s'}, 17)...), true)
	f.Add([]byte{}, true)
	stdio := make([]*os.File, 3)
	for i := range stdio {
		null, err := os.Open(os.DevNull)
		if err != nil {
			f.Fatal(err)
		}
		stdio[i] = null
		defer null.Close()
	}
	f.Fuzz(func(t *testing.T, in []byte, fromZygote bool) {
		fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		if err := unix.SetsockoptInt(fds[0], unix.SOL_SOCKET, unix.SO_PASSCRED, 1); err != nil {
			t.Fatal(err)
		}
		ours := os.NewFile(uintptr(fds[0]), "zygote")
		conn, err := net.FileConn(ours)
		ours.Close()
		if err != nil {
			t.Fatal(err)
		}
		// The zygote's pid is this process's, the sender of every message,
		// or one that sends none.
		z := &zygote{pid: os.Getpid(), pidfd: -1, conn: conn.(*net.UnixConn)}
		if !fromZygote {
			z.pid = os.Getpid() + 1 // any pid but ours (in the guest VM test, ours is 1)
		}
		defer z.close()

		done := make(chan struct{})
		go func() {
			defer close(done)
			defer unix.Close(fds[1])
			buf, oob := make([]byte, zygoteMaxRequest), make([]byte, unix.CmsgSpace(3*4))
			_, oobn, _, _, err := unix.Recvmsg(fds[1], buf, oob, 0)
			if err != nil {
				t.Errorf("zygote: receive request: %v", err)
				return
			}
			cmsgs, _ := unix.ParseSocketControlMessage(oob[:oobn])
			for _, c := range cmsgs {
				rights, _ := unix.ParseUnixRights(&c)
				for _, fd := range rights {
					unix.Close(fd)
				}
			}
			for len(in) > 0 {
				n := min(int(in[0]), len(in)-1)
				msg := in[1 : 1+n]
				in = in[1+n:]
				// A zygote that floods its socket fills it and no more:
				// never block on a full socket the agent stopped reading.
				if err := unix.Sendmsg(fds[1], msg, nil, nil, unix.MSG_DONTWAIT); err != nil {
					return
				}
			}
		}()
		first := firstMessage(in)
		pid, err := z.start([]string{"true"}, stdio)
		<-done
		if err == nil || pid != 0 {
			t.Fatalf("start = %d, %v", pid, err)
		}
		wantFailed := fromZygote && len(first) == 5 && first[0] == 's' && binary.NativeEndian.Uint32(first[1:]) != 0
		if errors.Is(err, errExecFailed) != wantFailed {
			t.Fatalf("start after %q: %v", first, err)
		}
	})
}

// firstMessage returns the first message FuzzZygoteReplies sends for in.
func firstMessage(in []byte) []byte {
	if len(in) == 0 {
		return nil
	}
	return in[1 : 1+min(int(in[0]), len(in)-1)]
}
