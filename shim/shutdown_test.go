package shim

import (
	"context"
	"testing"
	"time"

	taskAPI "github.com/containerd/containerd/api/runtime/task/v2"
	"github.com/containerd/containerd/pkg/shutdown"
)

// containerd asks the shim to shut down after each task's Delete and
// after a failed Create; the shim exits only once it serves no task and
// creates none, at once or when the last of them ends.
func TestShutdownOnlyWhenIdle(t *testing.T) {
	// Shutdown closes Done once its callbacks ran, in a goroutine.
	done := func(sd shutdown.Service) bool {
		select {
		case <-sd.Done():
			return true
		case <-time.After(time.Second):
			return false
		}
	}
	for _, tc := range []struct {
		name string
		busy func(s *service)
		idle func(s *service)
	}{
		{"task served", func(s *service) { s.containers["c"] = &container{id: "c"} }, func(s *service) { delete(s.containers, "c") }},
		{"create under way", func(s *service) { s.creating["c"] = true }, func(s *service) { delete(s.creating, "c") }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, sd := shutdown.WithShutdown(context.Background())
			s := &service{ctx: ctx, shutdown: sd, containers: map[string]*container{}, creating: map[string]bool{}}
			tc.busy(s)
			s.shutdownIfIdle()
			if done(sd) {
				t.Fatal("shut down though containerd did not ask")
			}
			if _, err := s.Shutdown(ctx, &taskAPI.ShutdownRequest{}); err != nil {
				t.Fatal(err)
			}
			if done(sd) {
				t.Fatal("shut down while busy")
			}
			tc.idle(s)
			s.shutdownIfIdle()
			if !done(sd) {
				t.Fatal("still running once idle after containerd asked to shut down")
			}
		})
	}
}
