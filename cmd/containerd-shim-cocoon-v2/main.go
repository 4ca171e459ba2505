// Command containerd-shim-cocoon-v2 is Cocoon's containerd runtime v2 shim
// (runtime type io.containerd.cocoon.v2): containerd starts it, and it runs
// the tasks of one pod inside the pod's sandbox VM.
package main

import (
	"context"

	"github.com/cocoon-runtime/cocoon/shim"
)

func main() {
	shim.Run(context.Background(), shim.RuntimeName)
}
