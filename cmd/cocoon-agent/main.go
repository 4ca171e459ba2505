// Command cocoon-agent is the init process (PID 1) of every Cocoon sandbox
// VM. It prepares the guest, then serves the host's ttrpc API over
// virtio-serial or vsock until the host destroys the sandbox.
package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/cocoon-runtime/cocoon/agent/protocol"
	"github.com/cocoon-runtime/cocoon/internal/guest/agent"
	"github.com/cocoon-runtime/cocoon/internal/guest/boot"
	"github.com/cocoon-runtime/cocoon/internal/guest/channel"
	"github.com/cocoon-runtime/cocoon/internal/guest/container"
	"github.com/cocoon-runtime/cocoon/internal/guest/modprobe"
	"github.com/cocoon-runtime/cocoon/internal/guest/network"
	"github.com/cocoon-runtime/cocoon/internal/guest/reaper"
	"github.com/containerd/ttrpc"
	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"
)

func main() {
	// libcontainer starts container processes by re-executing this binary.
	if len(os.Args) > 1 && os.Args[1] == "init" {
		container.Init() // never returns
	}
	// The kernel runs it to load a module (see internal/guest/modprobe).
	if modprobe.IsHelper(os.Args) {
		os.Exit(modprobe.Main(os.Args, moduleTree(), kernelLog()))
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	if err := run(log); err != nil {
		log.Error("agent failed", "err", err)
	}
	// PID 1 must never exit: that panics the kernel. Power off instead.
	if os.Getpid() == 1 {
		boot.PowerOff()
	}
	os.Exit(1)
}

func run(log *slog.Logger) error {
	ctx := context.Background()
	if os.Getpid() != 1 {
		return fmt.Errorf("cocoon-agent must run as PID 1 inside a Cocoon VM")
	}
	if err := boot.LeaveRootfs(); err != nil {
		return err
	}
	if err := boot.MountAll(); err != nil {
		return err
	}
	cmdline, _ := os.ReadFile("/proc/cmdline")
	params := boot.ParseCmdline(string(cmdline))
	if params.Debug {
		log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
		// libcontainer and ttrpc log through logrus.
		logrus.SetLevel(logrus.DebugLevel)
		logrus.SetFormatter(&logrus.TextFormatter{FullTimestamp: true, TimestampFormat: "15:04:05.000"})
	}
	r := reaper.New()
	go r.Run(ctx)
	containers, err := container.NewManager("/run/cocoon/containers", r, r, log)
	if err != nil {
		log.Warn("containers unavailable", "err", err)
	}

	// Modules load in the background: the agent serves as soon as its own
	// channel is up, and calls that need the other drivers wait for them.
	if err := boot.AutoOnlineMemory(); err != nil {
		log.Warn("memory hotplug unavailable", "err", err)
	}
	mods := newModuleLoader(log)
	if err := boot.SetHostname(params.Hostname); err != nil {
		return err
	}
	if err := network.LoopbackUp(); err != nil {
		log.Warn("no localhost in the pod", "err", err)
	}

	l, err := listen(ctx, params, log)
	if err != nil {
		return err
	}
	srv, err := ttrpc.NewServer()
	if err != nil {
		return fmt.Errorf("new ttrpc server: %w", err)
	}
	a := agent.New(agent.Config{
		Log:         log,
		Modules:     mods.wait,
		BootToServe: boot.SinceBoot(),
		PowerOff:    func() { boot.PowerOff() },
		Containers:  containers,
		SharedMount: sharedMount,
		SharedMounted: func(string) {
			var uts unix.Utsname
			unix.Uname(&uts)
			ok, err := modprobe.Enable(moduleTree(), unix.ByteSliceToString(uts.Release[:]), "/dev", "/proc/sys/kernel/modprobe")
			if err != nil {
				log.Warn("on-demand kernel modules unavailable", "err", err)
			} else if ok {
				log.Debug("on-demand kernel modules enabled")
			}
		},
	})
	a.Register(srv)
	log.Info("agent serving", "transport", params.Transport, "since_boot", boot.SinceBoot())
	return srv.Serve(ctx, channel.Demux(l, channel.Handlers{Stream: a.AttachStream, Port: a.ForwardPort}))
}

// sharedMount is where the agent mounts the host's shared directory.
const sharedMount = "/run/cocoon/shared"

// moduleTree is the on-demand module tree the host shares.
func moduleTree() modprobe.Tree {
	return modprobe.Tree{Dir: filepath.Join(sharedMount, protocol.ModulesTree), SysModule: "/sys/module"}
}

// kernelLog is where the module helper reports: the kernel log (the VM's
// console), or standard error when that cannot be opened.
func kernelLog() io.Writer {
	if f, err := os.OpenFile("/dev/kmsg", os.O_WRONLY, 0); err == nil {
		return f
	}
	return os.Stderr
}

func listen(ctx context.Context, params boot.Params, log *slog.Logger) (net.Listener, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if params.Transport == protocol.TransportVsock {
		for {
			l, err := channel.ListenVsock()
			if err == nil {
				return l, nil
			}
			select {
			case <-ctx.Done():
				return nil, err
			case <-time.After(5 * time.Millisecond):
			}
		}
	}
	paths, err := channel.WaitSerialPorts(ctx, "/sys", "/dev", protocol.SerialPortPrefix, params.AgentPorts, 2*time.Second)
	if err != nil {
		return nil, err
	}
	var ls []net.Listener
	for _, p := range paths {
		l, err := channel.ListenSerial(p, log)
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
	}
	return channel.Merge(ls...), nil
}

// moduleLoader loads the image's kernel modules in the background.
type moduleLoader struct {
	done    chan struct{}
	modules []string
	err     error
}

func newModuleLoader(log *slog.Logger) *moduleLoader {
	m := &moduleLoader{done: make(chan struct{})}
	go func() {
		defer close(m.done)
		start := time.Now()
		m.modules, m.err = boot.LoadModules(boot.ModulesList, log)
		if m.err != nil {
			log.Error("loading modules failed", "err", m.err)
			return
		}
		log.Debug("modules loaded", "count", len(m.modules), "took", time.Since(start))
	}()
	return m
}

// wait returns the loaded modules once loading finished.
func (m *moduleLoader) wait(ctx context.Context) ([]string, error) {
	select {
	case <-m.done:
		return m.modules, m.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}
