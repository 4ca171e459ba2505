package agent

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// fakeCPUs makes a sysfs cpu directory: cpu0 without an online file (the
// boot CPU), then one cpuN per state ("1" online, "0" offline).
func fakeCPUs(t *testing.T, states ...string) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "cpu0"), 0o755); err != nil {
		t.Fatal(err)
	}
	for i, st := range states {
		d := filepath.Join(dir, "cpu"+string(rune('1'+i)))
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(d, "online"), []byte(st+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, other := range []string{"cpufreq", "cpuidle", "online"} {
		os.WriteFile(filepath.Join(dir, other), nil, 0o644)
	}
	return dir
}

func cpuStates(t *testing.T, dir string, n int) string {
	t.Helper()
	var s []string
	for i := 1; i <= n; i++ {
		b, err := os.ReadFile(filepath.Join(dir, "cpu"+string(rune('0'+i)), "online"))
		if err != nil {
			t.Fatal(err)
		}
		s = append(s, strings.TrimSpace(string(b)))
	}
	return strings.Join(s, "")
}

// setOnlineCPUs brings the count to what the host asks, onlining the
// lowest offline vCPUs and offlining the highest online ones, never the
// boot CPU.
func TestSetOnlineCPUs(t *testing.T) {
	for _, tc := range []struct {
		name   string
		states []string
		want   int
		online int
		after  string
	}{
		{"online two hot-plugged", []string{"0", "0", "0"}, 3, 3, "110"},
		{"offline the highest", []string{"1", "1", "1"}, 2, 2, "100"},
		{"down to the boot CPU", []string{"1", "0", "1"}, 1, 1, "000"},
		{"not yet seen: all there is", []string{"0"}, 4, 2, "1"},
		{"never the boot CPU", []string{"1"}, 0, 1, "0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := fakeCPUs(t, tc.states...)
			n, err := setOnlineCPUs(dir, tc.want)
			if err != nil {
				t.Fatal(err)
			}
			if got := cpuStates(t, dir, len(tc.states)); n != tc.online || got != tc.after {
				t.Errorf("online %d, states %s; want %d, %s", n, got, tc.online, tc.after)
			}
		})
	}
}

// Offline memory blocks go online; others are left alone.
func TestOnlineMemory(t *testing.T) {
	dir := t.TempDir()
	for name, st := range map[string]string{"memory0": "online", "memory1": "offline", "memory7": "offline"} {
		os.MkdirAll(filepath.Join(dir, name), 0o755)
		os.WriteFile(filepath.Join(dir, name, "state"), []byte(st+"\n"), 0o644)
	}
	os.MkdirAll(filepath.Join(dir, "power"), 0o755)
	if err := onlineMemory(dir); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"memory0", "memory1", "memory7"} {
		if b, _ := os.ReadFile(filepath.Join(dir, name, "state")); strings.TrimSpace(string(b)) != "online" {
			t.Errorf("%s is %q", name, b)
		}
	}
}
