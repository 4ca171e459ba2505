package agent

import (
	"context"
	"errors"
	"math"
	"testing"

	"github.com/cocoon-runtime/cocoon/agent/protocol"
	"google.golang.org/protobuf/proto"
)

func plausibleStats() *protocol.ContainerStats {
	return &protocol.ContainerStats{
		CpuUsageNs: 5e9, CpuUserNs: 3e9, CpuSystemNs: 2e9,
		MemoryUsageBytes: 100 << 20, MemoryLimitBytes: 256 << 20, MemoryMaxUsageBytes: 120 << 20,
		MemoryAnonBytes: 60 << 20, MemoryFileBytes: 30 << 20,
		PidsCurrent: 12, PidsLimit: 1024,
		IoReadBytes: 1 << 30, IoReadOps: 1000,
	}
}

func statsReply(t *testing.T, s *protocol.ContainerStats) *Client {
	b, err := proto.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	return hostileClient(t, func(string) []byte { return withPayload(b) })
}

func TestStatsRejectsImpossibleValues(t *testing.T) {
	cases := map[string]func(s *protocol.ContainerStats){
		"negative-like cpu":       func(s *protocol.ContainerStats) { s.CpuUsageNs = math.MaxUint64 - 5 },
		"negative-like io":        func(s *protocol.ContainerStats) { s.IoWriteBytes = 1 << 63 },
		"user above usage":        func(s *protocol.ContainerStats) { s.CpuUserNs = s.CpuUsageNs + 1 },
		"system above usage":      func(s *protocol.ContainerStats) { s.CpuSystemNs = s.CpuUsageNs + 1 },
		"usage far above limit":   func(s *protocol.ContainerStats) { s.MemoryUsageBytes = 4 * s.MemoryLimitBytes },
		"usage beyond any memory": func(s *protocol.ContainerStats) { s.MemoryLimitBytes, s.MemoryUsageBytes = 0, maxMemory+1 },
		"anon beyond any memory":  func(s *protocol.ContainerStats) { s.MemoryAnonBytes = maxMemory + 1 },
		"pids beyond pid_max":     func(s *protocol.ContainerStats) { s.PidsCurrent = maxPids + 1 },
	}
	for name, mutate := range cases {
		s := plausibleStats()
		mutate(s)
		_, err := statsReply(t, s).StatsContainer(context.Background(), "c1")
		if !errors.Is(err, ErrProtocol) {
			t.Errorf("%s: err = %v, want ErrProtocol", name, err)
		}
	}
}

func TestStatsAcceptsPlausibleValues(t *testing.T) {
	cases := map[string]func(s *protocol.ContainerStats){
		"as is":    func(*protocol.ContainerStats) {},
		"no limit": func(s *protocol.ContainerStats) { s.MemoryLimitBytes, s.PidsLimit = 0, 0 },
		// memory.max lowered below usage, or a charge the kernel may not
		// fail; pids.max lowered below the count: both happen.
		"usage just above limit": func(s *protocol.ContainerStats) { s.MemoryUsageBytes = s.MemoryLimitBytes + 1<<20 },
		"pids above limit":       func(s *protocol.ContainerStats) { s.PidsCurrent = s.PidsLimit + 5 },
		"huge limit":             func(s *protocol.ContainerStats) { s.MemoryLimitBytes = 1 << 62 },
		"empty":                  func(s *protocol.ContainerStats) { *s = protocol.ContainerStats{} },
	}
	for name, mutate := range cases {
		s := plausibleStats()
		mutate(s)
		got, err := statsReply(t, s).StatsContainer(context.Background(), "c1")
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if !proto.Equal(got, s) {
			t.Errorf("%s: got %v, want %v", name, got, s)
		}
	}
}
