package testutil

import (
	"testing"
)

// In -short mode BootsVM stops a VM test before its first line: with the
// trap `make unit` sets where QEMU is looked up (scripts/unit.sh), the
// proof that -short boots no VM.
func TestBootsVMSkipsInShortMode(t *testing.T) {
	reached := false
	t.Run("vm test", func(t *testing.T) {
		BootsVM(t)
		reached = true
	})
	if testing.Short() && reached {
		t.Fatal("a VM test went past BootsVM in -short mode")
	}
	if !testing.Short() && !reached {
		t.Fatal("BootsVM skipped a VM test without -short")
	}
}
