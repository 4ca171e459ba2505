package container

import (
	"github.com/opencontainers/runc/libcontainer"

	// nsenter's C constructor joins and creates namespaces in "init"
	// re-executions before the Go runtime starts. It needs cgo.
	_ "github.com/opencontainers/runc/libcontainer/nsenter"
)

// Init runs the container init helper and never returns.
//
// libcontainer starts every container process by re-executing the running
// binary as "<binary> init"; that helper sets up the container and then
// executes the container's program. A program using Manager must therefore
// call Init as the very first thing in main when it was started that way:
//
//	func main() {
//		if len(os.Args) > 1 && os.Args[1] == "init" {
//			container.Init()
//		}
//		...
//	}
//
// The program must be built with cgo (see the package documentation).
func Init() {
	libcontainer.Init()
}
