package protocol

import (
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

func TestAllowsAllDevices(t *testing.T) {
	i := func(v int64) *int64 { return &v }
	for _, tc := range []struct {
		rules []specs.LinuxDeviceCgroup
		want  bool
	}{
		{nil, false},
		{[]specs.LinuxDeviceCgroup{{Allow: true, Access: "rwm"}}, true},
		{[]specs.LinuxDeviceCgroup{{Allow: false, Access: "rwm"}, {Allow: true, Type: "a", Access: "rwm"}}, true},
		{[]specs.LinuxDeviceCgroup{{Allow: true, Access: "rwm"}, {Allow: false, Type: "c", Major: i(10), Access: "rwm"}}, false},
		{[]specs.LinuxDeviceCgroup{{Allow: true, Access: "rw"}}, false},
		{[]specs.LinuxDeviceCgroup{{Allow: true, Type: "c", Access: "rwm"}}, false},
		{[]specs.LinuxDeviceCgroup{{Allow: true, Major: i(1), Access: "rwm"}}, false},
	} {
		if got := AllowsAllDevices(&specs.LinuxResources{Devices: tc.rules}); got != tc.want {
			t.Errorf("AllowsAllDevices(%+v) = %v", tc.rules, got)
		}
	}
}
