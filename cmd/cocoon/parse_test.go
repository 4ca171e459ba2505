package main

import (
	"os"
	"slices"
	"syscall"
	"testing"

	"github.com/cocoon-runtime/cocoon"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

func TestParseSignal(t *testing.T) {
	for in, want := range map[string]syscall.Signal{
		"9": syscall.SIGKILL, "KILL": syscall.SIGKILL, "SIGKILL": syscall.SIGKILL, "sigterm": syscall.SIGTERM,
		"TERM": syscall.SIGTERM, "hup": syscall.SIGHUP, "USR1": syscall.SIGUSR1, "RTMIN": 34, "RTMIN+2": 36,
		"SIGRTMAX-1": 63, "64": 64,
	} {
		got, err := parseSignal(in)
		if err != nil || got != want {
			t.Errorf("parseSignal(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"", "0", "65", "-1", "NOPE", "SIG", "RTMIN+31", "RTMAX-x"} {
		if got, err := parseSignal(in); err == nil {
			t.Errorf("parseSignal(%q) = %v, want an error", in, got)
		}
	}
}

func TestForwardedSignals(t *testing.T) {
	sigs := forwardedSignals()
	has := func(s syscall.Signal) bool { return slices.Contains(sigs, os.Signal(s)) }
	for _, s := range []syscall.Signal{syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT, syscall.SIGUSR1, syscall.SIGTSTP, 34, 64} {
		if !has(s) {
			t.Errorf("%v is not forwarded", s)
		}
	}
	for _, s := range []syscall.Signal{syscall.SIGKILL, syscall.SIGSTOP, syscall.SIGCHLD, syscall.SIGWINCH, syscall.SIGURG, syscall.SIGPIPE, 32, 33} {
		if has(s) {
			t.Errorf("%v is forwarded", s)
		}
	}
}

func TestParseBytes(t *testing.T) {
	for in, want := range map[string]int64{"0": 0, "4096": 4096, "64m": 64 << 20, "64M": 64 << 20, "1g": 1 << 30, "2kb": 2048, "-1": -1} {
		if got, err := parseBytes(in); err != nil || got != want {
			t.Errorf("parseBytes(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "m", "-2", "1.5g", "12x", "99999999999t"} {
		if got, err := parseBytes(in); err == nil {
			t.Errorf("parseBytes(%q) = %d, want an error", in, got)
		}
	}
}

func TestParseConsoleSize(t *testing.T) {
	got, err := parseConsoleSize("100x40")
	if err != nil || *got != (specs.Box{Width: 100, Height: 40}) {
		t.Errorf("parseConsoleSize(100x40) = %v, %v", got, err)
	}
	for _, in := range []string{"", "100", "x40", "0x10", "100x", "70000x10", "axb"} {
		if _, err := parseConsoleSize(in); err == nil {
			t.Errorf("parseConsoleSize(%q): want an error", in)
		}
	}
}

func TestParseUser(t *testing.T) {
	if u, err := parseUser("1000"); err != nil || u.UID != 1000 || u.GID != 0 {
		t.Errorf("parseUser(1000) = %v, %v", u, err)
	}
	if u, err := parseUser("1000:100"); err != nil || u.UID != 1000 || u.GID != 100 {
		t.Errorf("parseUser(1000:100) = %v, %v", u, err)
	}
	for _, in := range []string{"", "root", "1000:", ":1", "-1"} {
		if _, err := parseUser(in); err == nil {
			t.Errorf("parseUser(%q): want an error", in)
		}
	}
}

func TestMergeEnv(t *testing.T) {
	got := mergeEnv([]string{"PATH=/bin", "TERM=xterm"}, []string{"TERM=dumb", "FOO=bar"})
	want := []string{"PATH=/bin", "TERM=dumb", "FOO=bar"}
	if !slices.Equal(got, want) {
		t.Errorf("mergeEnv = %q, want %q", got, want)
	}
}

func TestNetFlags(t *testing.T) {
	withNS := &specs.Spec{Linux: &specs.Linux{Namespaces: []specs.LinuxNamespace{{Type: specs.NetworkNamespace, Path: "/run/netns/from-spec"}}}}
	for _, tc := range []struct {
		net       string
		spec      *specs.Spec
		netns     string
		cni       string
		wantError bool
	}{
		{net: "", spec: withNS, netns: "/run/netns/from-spec"},
		{net: "", spec: &specs.Spec{}},
		{net: "none", spec: withNS},
		{net: "netns:/run/netns/x", spec: withNS, netns: "/run/netns/x"},
		{net: "cni:bridge-net", spec: withNS, cni: "bridge-net"},
		{net: "netns:relative", wantError: true},
		{net: "netns:", wantError: true},
		{net: "cni:", wantError: true},
		{net: "host", wantError: true},
	} {
		f := netFlags{net: tc.net, confDir: "/etc/cni/net.d"}
		var cfg cocoon.SandboxConfig
		err := f.apply(&cfg, tc.spec)
		if tc.wantError {
			if err == nil {
				t.Errorf("--net %q: no error", tc.net)
			}
			continue
		}
		if err != nil {
			t.Errorf("--net %q: %v", tc.net, err)
			continue
		}
		cni := ""
		if cfg.Network != nil {
			cni = cfg.Network.CNI
			if cfg.Network.CNIConfDir != "/etc/cni/net.d" {
				t.Errorf("--net %q: conf dir %q", tc.net, cfg.Network.CNIConfDir)
			}
		}
		if cfg.NetNS != tc.netns || cni != tc.cni {
			t.Errorf("--net %q: netns %q, cni %q; want %q, %q", tc.net, cfg.NetNS, cni, tc.netns, tc.cni)
		}
	}
}
