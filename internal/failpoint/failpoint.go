// Package failpoint lets tests SIGKILL a Cocoon process at an exact point
// of its work, to prove that whatever it leaves behind is cleaned up.
//
// A process whose environment has COCOON_TEST_KILL_AT set to a point's
// name kills itself with SIGKILL when it reaches that point; nothing
// happens otherwise. The kill is real: no deferred cleanup runs.
package failpoint

import (
	"os"

	"golang.org/x/sys/unix"
)

// Env names the point at which a process kills itself.
const Env = "COCOON_TEST_KILL_AT"

// Point names a moment in a sandbox's life.
type Point string

// The points.
const (
	// CreateBeforeBoot: the sandbox record and shared directory exist, the
	// file server and VM do not yet.
	CreateBeforeBoot Point = "create-before-boot"
	// CreateAfterBoot: the VM and file server run, the record still says
	// creating.
	CreateAfterBoot Point = "create-after-boot"
	// TemplateMake: a template VM booted and is not saved yet.
	TemplateMake Point = "template-make"
	// ContainerCreate: a container's mounts are shared and the guest
	// created it, the sandbox record does not list it yet.
	ContainerCreate Point = "container-create"
	// Exec: a process was started in a container.
	Exec Point = "exec"
	// Delete: the sandbox was stopped and is being removed.
	Delete Point = "delete"
)

// Hit kills the process if the environment names p.
func Hit(p Point) {
	if os.Getenv(Env) == string(p) {
		unix.Kill(os.Getpid(), unix.SIGKILL)
		select {} // the signal is on its way
	}
}
