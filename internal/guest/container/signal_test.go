package container

import (
	"fmt"
	"os"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

func TestParseStatus(t *testing.T) {
	st := parseStatus([]byte("Name:\ttop\nNSpid:\t57\t1\nSigBlk:\t0000000000000000\nSigIgn:\t0000000000000004\nSigCgt:\t0000000000004002\n"))
	want := procStatus{nsInit: true, caught: 0x4002, ignored: 0x4, blocked: 0}
	if st != want {
		t.Errorf("parseStatus = %+v, want %+v", st, want)
	}
	if st := parseStatus([]byte("NSpid:\t1\n")); st.nsInit {
		t.Errorf("the root namespace's init taken for a container's")
	}
}

// This test's process is no namespace's init: its signals are never held.
func TestDropsSignalOutsideNamespaceInit(t *testing.T) {
	if dropsSignal(os.Getpid(), syscall.SIGTERM) {
		t.Errorf("dropsSignal is true for a process that is not a PID namespace's init")
	}
	if dropsSignal(1<<30, syscall.SIGTERM) {
		t.Errorf("dropsSignal is true for a process that does not exist")
	}
}

// A SIGTERM sent right after Start, before the program set up its trap,
// still reaches the trap instead of being dropped by the kernel.
func TestKillRightAfterStart(t *testing.T) {
	h := newHarness(t)
	for i := range 3 {
		id := fmt.Sprintf("early%d", i)
		p := h.run(id, testSpec("sh", "-c", "trap 'exit 42' TERM; while true; do sleep 0.05; done"), ProcessIO{})
		if err := h.m.Kill(h.ctx, id, unix.SIGTERM, false); err != nil {
			t.Fatal(err)
		}
		if st := h.wait(p); st.Code != 42 {
			t.Errorf("SIGTERM right after Start: exit status = %+v, want 42 from the trap", st)
		}
	}
}
