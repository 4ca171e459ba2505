package hypervisor_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/cocoon-runtime/cocoon/hypervisor"
)

func TestValidateID(t *testing.T) {
	for _, ok := range []string{"a", "pod-1", "A.b_c", strings.Repeat("x", 64)} {
		if err := hypervisor.ValidateID(ok); err != nil {
			t.Errorf("ValidateID(%q) = %v", ok, err)
		}
	}
	for _, bad := range []string{"", "../x", "a/b", ".a", "-a", "a..b", strings.Repeat("x", 65), "a b", "a\x00"} {
		if err := hypervisor.ValidateID(bad); !errors.Is(err, hypervisor.ErrInvalidID) {
			t.Errorf("ValidateID(%q) accepted", bad)
		}
	}
}
