package main

import "testing"

func TestParseDevice(t *testing.T) {
	dev, rule, err := parseDevice("/dev/null:/dev/mynull:rw")
	if err != nil {
		t.Fatal(err)
	}
	if dev.Path != "/dev/mynull" || dev.Type != "c" || dev.Major != 1 || dev.Minor != 3 || rule.Access != "rw" || *rule.Major != 1 || *rule.Minor != 3 || !rule.Allow {
		t.Errorf("parseDevice: %+v, %+v", dev, rule)
	}
	if dev, _, err := parseDevice("/dev/null"); err != nil || dev.Path != "/dev/null" {
		t.Errorf("host path only: %+v, %v", dev, err)
	}
	for _, bad := range []string{"/etc/passwd", "dev/null", "/dev/null:/etc/x", "/dev/null:/dev/x:rwx", "/dev/null:/dev/../etc/x", "/dev/null:/dev/x:rw:extra", "/no/such/dev", "/dev/null:/dev/x:"} {
		if _, _, err := parseDevice(bad); err == nil {
			t.Errorf("parseDevice(%q) succeeded", bad)
		}
	}
}
