package ctrtest

import (
	"context"
	"os"
	"os/exec"
	"testing"

	"github.com/cocoon-runtime/cocoon/internal/testutil"
)

// Need skips t in -short mode (see testutil.BootsVM) and unless it runs as
// root with containerd and ctr installed (or opts.Containerd and opts.Ctr
// exist). With COCOON_REQUIRE_VM=1 it fails t instead, so CI cannot pass
// by skipping.
func Need(t testing.TB, opts Options) {
	t.Helper()
	testutil.BootsVM(t)
	skip := func(format string, args ...any) {
		t.Helper()
		testutil.Unavailable(t, "containerd", format, args...)
	}
	if os.Geteuid() != 0 {
		skip("not root")
	}
	containerd := opts.Containerd
	if containerd == "" {
		containerd = "containerd"
	}
	path, err := exec.LookPath(containerd)
	if err != nil {
		skip("%v (apt-get install containerd)", err)
	}
	if _, err := findCtr(opts.Ctr, path); err != nil {
		skip("%v", err)
	}
}

// ForTest calls Need, then starts a containerd in a new directory under
// the temporary directory, stopped when t ends; if t failed by then, the
// tail of containerd's log is logged first. A failure of Stop fails t.
func ForTest(t testing.TB, opts Options) *Containerd {
	t.Helper()
	Need(t, opts)
	dir, err := os.MkdirTemp("", "ctrtest-")
	if err != nil {
		t.Fatal(err)
	}
	c, err := Start(context.Background(), dir, opts)
	if err != nil {
		os.RemoveAll(dir)
		t.Fatal(err)
	}
	t.Logf("containerd in %s: serving after %v, images imported in %v", dir, c.StartDuration.Round(1e6), c.ImportDuration.Round(1e6))
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("containerd log (%s), last lines:\n%s", c.LogFile, c.LogTail(60))
		}
		if err := c.Stop(context.Background()); err != nil {
			t.Error(err)
		}
	})
	return c
}
