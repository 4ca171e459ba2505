package cocoon_test

import (
	"errors"
	"fmt"
	"testing"

	"github.com/cocoon-runtime/cocoon"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

func TestStateOCI(t *testing.T) {
	for s, want := range map[cocoon.State]specs.ContainerState{
		cocoon.StateCreating: specs.StateCreating,
		cocoon.StateReady:    specs.StateCreated,
		cocoon.StateRunning:  specs.StateRunning,
		cocoon.StatePaused:   "paused",
		cocoon.StateStopped:  specs.StateStopped,
		cocoon.StateUnknown:  specs.StateStopped,
	} {
		if got := s.OCI(); got != want {
			t.Errorf("%s.OCI() = %q, want %q", s, got, want)
		}
	}
}

func TestErrGuestDied(t *testing.T) {
	err := fmt.Errorf("start container c: %w", cocoon.ErrGuestDied)
	if !errors.Is(err, cocoon.ErrGuestDied) || !cocoon.IsGuestDied(err) {
		t.Errorf("%v does not read as ErrGuestDied", err)
	}
	if cocoon.IsGuestDied(cocoon.ErrNotFound) {
		t.Error("ErrNotFound reads as ErrGuestDied")
	}
}
