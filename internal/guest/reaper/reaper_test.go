package reaper

import (
	"testing"

	"golang.org/x/sys/unix"
)

func TestExitStatus(t *testing.T) {
	// Wait statuses as the kernel encodes them.
	cases := []struct {
		ws   unix.WaitStatus
		want int
	}{
		{0, 0},
		{7 << 8, 7},
		{unix.WaitStatus(unix.SIGKILL), 137},
		{unix.WaitStatus(unix.SIGTERM), 143},
	}
	for _, c := range cases {
		if got := ExitStatus(c.ws); got != c.want {
			t.Errorf("ExitStatus(%#x) = %d, want %d", uint32(c.ws), got, c.want)
		}
	}
}
