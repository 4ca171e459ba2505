package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/cocoon-runtime/cocoon"
	"github.com/spf13/cobra"
)

func newEventsCommand(g *globalOptions) *cobra.Command {
	var (
		interval time.Duration
		once     bool
	)
	cmd := &cobra.Command{
		Use:   "events [--interval D] [--stats] ID",
		Short: "Print a container's statistics and events as JSON lines",
		Long: `Print one JSON object per line about a container: its statistics every
interval ("type": "stats"), an "oom" event when the kernel's OOM killer
struck in it, and an "exit" event, with the exit status, when its process
ended; cocoon then exits. With --stats, print the statistics once and exit.`,
		Example: `  cocoon events --interval 1s demo
  cocoon events --stats demo`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id := args[0]
			if interval <= 0 {
				return fmt.Errorf("events of %s: --interval must be positive", id)
			}
			return withContainer(cmd, g, id, func(sb *cocoon.Sandbox) error {
				w := &eventWriter{enc: json.NewEncoder(cmd.OutOrStdout()), id: id}
				if once {
					s, err := sb.StatsContainer(cmd.Context(), id)
					if err != nil {
						return fmt.Errorf("events of %s: %w", id, err)
					}
					return w.write("stats", s)
				}
				err := watchContainer(cmd.Context(), sb, id, interval, w)
				if errors.Is(err, context.Canceled) {
					return nil // interrupted
				}
				return err
			})
		},
	}
	cmd.Flags().DurationVar(&interval, "interval", 5*time.Second, "time between statistics")
	cmd.Flags().BoolVar(&once, "stats", false, "print the statistics once and exit")
	return cmd
}

// event is one line of `cocoon events`.
type event struct {
	Type string    `json:"type"`
	ID   string    `json:"id"`
	Time time.Time `json:"time"`
	Data any       `json:"data,omitempty"`
}

// exitJSON is the data of an exit event.
type exitJSON struct {
	// ExitCode is -1 when it could not be learnt.
	ExitCode  int       `json:"exit_code"`
	Signal    int       `json:"signal,omitempty"`
	OOMKilled bool      `json:"oom_killed,omitempty"`
	ExitedAt  time.Time `json:"exited_at,omitzero"`
	// VMExited reports that the sandbox VM itself went away, so the
	// status of the process is unknown.
	VMExited bool `json:"vm_exited,omitempty"`
}

type eventWriter struct {
	enc *json.Encoder
	id  string
}

func (w *eventWriter) write(typ string, data any) error {
	if err := w.enc.Encode(event{Type: typ, ID: w.id, Time: time.Now().UTC(), Data: data}); err != nil {
		return fmt.Errorf("write %s event of %s: %w", typ, w.id, err)
	}
	return nil
}

type waitResult struct {
	st  cocoon.ExitStatus
	err error
}

// watchContainer prints stats every interval and oom events until the
// container's process exits, then prints its exit event.
func watchContainer(ctx context.Context, sb *cocoon.Sandbox, id string, interval time.Duration, w *eventWriter) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	exited := make(chan waitResult, 1)
	go func() {
		st, err := sb.WaitProcess(ctx, id, "")
		exited <- waitResult{st, err}
	}()
	var oomKills uint64
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for first := true; ; first = false {
		if !first {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case r := <-exited:
				return exitEvent(ctx, w, r)
			case <-tick.C:
			}
		}
		st, err := sb.StatusContainer(ctx, id)
		if err != nil && !cocoon.IsGuestDied(err) {
			return fmt.Errorf("events of %s: %w", id, err)
		}
		if err != nil || st.State == cocoon.StateStopped {
			// The waiter reports how it ended, or that the VM is gone.
			select {
			case r := <-exited:
				return exitEvent(ctx, w, r)
			case <-time.After(10 * time.Second):
				return w.write("exit", exitJSON{ExitCode: -1, VMExited: err != nil})
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		s, err := sb.StatsContainer(ctx, id)
		if err != nil {
			continue // it may just have exited: the next round tells
		}
		stats := s
		if n := stats.Memory.OOMKillEvents; n > oomKills {
			if !first {
				if err := w.write("oom", nil); err != nil {
					return err
				}
			}
			oomKills = n
		}
		if err := w.write("stats", stats); err != nil {
			return err
		}
	}
}

func exitEvent(ctx context.Context, w *eventWriter, r waitResult) error {
	if r.err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if cocoon.IsGuestDied(r.err) {
			return w.write("exit", exitJSON{ExitCode: -1, VMExited: true})
		}
		return fmt.Errorf("events of %s: wait: %w", w.id, r.err)
	}
	if r.st.OOMKilled {
		if err := w.write("oom", nil); err != nil {
			return err
		}
	}
	return w.write("exit", exitJSON{ExitCode: r.st.Code, Signal: r.st.Signal, OOMKilled: r.st.OOMKilled, ExitedAt: r.st.ExitedAt})
}
