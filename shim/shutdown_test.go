package shim

import (
	"context"
	"testing"
	"time"

	taskAPI "github.com/containerd/containerd/api/runtime/task/v2"
	"github.com/containerd/containerd/pkg/shutdown"
)

// containerd asks the shim to shut down after each task's Delete and
// after a failed Create; the shim exits only once it serves no task,
// creates none and removes none, at once or when the last of them ends.
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
		// The sandbox's task is gone from the list while its Delete still
		// removes the VM: exiting then loses the Delete's reply.
		{"removal under way", func(s *service) { s.removals++ }, func(s *service) { s.removals-- }},
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

// The end of a Delete or a Create must not end the shim before its reply
// is out: containerd, asked to shut down earlier (after another task's
// Delete), would get "ttrpc: closed" instead of the reply, and the CRI
// retries the pod's StopPodSandbox a second later. containerd's own
// Shutdown, which follows a Delete, still ends an idle shim at once.
func TestShutdownNotBeforeReply(t *testing.T) {
	ctx, sd := shutdown.WithShutdown(context.Background())
	s := &service{ctx: ctx, shutdown: sd, containers: map[string]*container{}, creating: map[string]bool{},
		shutdownAsked: true, replyGrace: time.Hour}
	s.shutdownAfterReply() // the last task was just deleted
	select {
	case <-sd.Done():
		t.Fatal("shut down before the request's reply could reach containerd")
	case <-time.After(200 * time.Millisecond):
	}
	if _, err := s.Shutdown(ctx, &taskAPI.ShutdownRequest{}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-sd.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("containerd's Shutdown did not end the idle shim")
	}
}
