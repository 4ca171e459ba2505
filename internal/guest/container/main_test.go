package container

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/cocoon-runtime/cocoon/internal/guest/reaper"
)

// nsEnv marks the re-executed test process that runs the tests in a mount
// namespace of its own.
const nsEnv = "COCOON_CONTAINER_TEST_MNTNS"

// TestMain makes the test binary work like the agent: it serves
// libcontainer's "init" re-execution, and runs the tests as a child
// subreaper with a reaper.Reaper, wired as main.go wires it.
//
// As root, the tests run in a re-executed copy of the test binary inside a
// new mount namespace with cgroup v2 mounted on /sys/fs/cgroup, as in the
// guest: hosts with hybrid cgroups have it elsewhere, or not at all.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == "init" {
		Init()
	}
	os.Exit(runTests(m))
}

func runTests(m *testing.M) int {
	if os.Getpid() == 1 && os.Getenv(vmEnv) != "" {
		guestMain(m) // never returns
	}
	if os.Geteuid() != 0 {
		return m.Run() // the tests skip themselves
	}
	if os.Getenv(nsEnv) == "" {
		cmd := exec.Command("/proc/self/exe", os.Args[1:]...)
		cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
		cmd.Env = append(os.Environ(), nsEnv+"=1")
		// Unsharing the mount namespace makes Go mount / recursively private
		// in the child.
		cmd.SysProcAttr = &syscall.SysProcAttr{Unshareflags: unix.CLONE_NEWNS, Pdeathsig: unix.SIGKILL}
		err := cmd.Run()
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return ee.ExitCode()
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "re-executing the tests in a mount namespace:", err)
			return 1
		}
		return 0
	}
	if err := mountCgroup2(); err != nil {
		fmt.Fprintln(os.Stderr, "mounting cgroup v2:", err)
		return 1
	}
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		fmt.Fprintln(os.Stderr, "becoming a child subreaper:", err)
		return 1
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go testReaper().Run(ctx)
	code := m.Run()
	os.Remove(cgroupRoot + cgroupParent) // only if no test left a cgroup
	return code
}

// mountCgroup2 mounts cgroup v2 on /sys/fs/cgroup unless it is there.
func mountCgroup2() error {
	var st unix.Statfs_t
	if err := unix.Statfs(cgroupRoot, &st); err != nil {
		return err
	}
	if st.Type == unix.CGROUP2_SUPER_MAGIC {
		return nil
	}
	// No options: the superblock is the host's, whose options would change.
	return unix.Mount("cgroup2", cgroupRoot, "cgroup2", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "")
}

// testReaper is the test process's only reaper, as PID 1 has in the guest.
var testReaper = sync.OnceValue(reaper.New)
